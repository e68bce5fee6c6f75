package membership_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

func identitySubject(id string) string { return "svc.node." + id + ".identity" }

// watchChecked starts a watcher that trusts a member once it answers its
// identity probe.
func watchChecked(t *testing.T, nc *nats.Conn, interval time.Duration) *membership.Watcher {
	t.Helper()
	w, err := membership.NewWatcher(nc, membership.WatcherConfig{Service: "svc", Interval: interval, IdentitySubject: identitySubject})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	return w
}

func announceChecked(t *testing.T, nc *nats.Conn, id string, interval time.Duration) *membership.Announcer {
	t.Helper()
	a, err := membership.NewAnnouncer(nc, membership.AnnouncerConfig{Service: "svc", ID: id, Interval: interval, IdentitySubject: identitySubject(id)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop(context.Background()) })
	return a
}

// forge publishes a heartbeat as a client with no announcer would.
func forge(t *testing.T, nc *nats.Conn, hb membership.Heartbeat) {
	t.Helper()
	b, _ := json.Marshal(hb)
	if err := nc.Publish(membership.Subject("svc", hb.ID), b); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// Heartbeats whose weight or interval is out of bounds are ignored: the
// issue's weight 3e38 (which would take nearly every key) and intervals
// outside [100 ms, 60 s] (one of hours would keep a member for hours).
func TestHeartbeatBounds(t *testing.T) {
	s := bustest.RunServer(t)
	nc := s.Connect()
	w := watch(t, s.Connect())
	now := bus.Time{Time: time.Now()}
	for _, hb := range []membership.Heartbeat{
		{ID: "evil", Weight: 3e38, Version: "0.1.0", Started: now, IntervalMs: 20000},
		{ID: "heavy", Weight: membership.MaxWeight + 1, Started: now, IntervalMs: 1000},
		{ID: "fast", Weight: 1, Started: now, IntervalMs: 99},
		{ID: "slow", Weight: 1, Started: now, IntervalMs: 60_001},
		{ID: "hours", Weight: 1, Started: now, IntervalMs: 3_600_000},
	} {
		forge(t, nc, hb)
	}
	// In bounds: the largest weight and interval allowed.
	forge(t, nc, membership.Heartbeat{ID: "big", Weight: membership.MaxWeight, Started: now, IntervalMs: membership.MaxInterval.Milliseconds()})
	await(t, w, 20*h, size(1))
	if got := ids(w); got[0] != "big" {
		t.Fatalf("members = %v", got)
	}
	for _, c := range []membership.AnnouncerConfig{
		{Service: "svc", ID: "x", Weight: membership.MaxWeight + 1},
		{Service: "svc", ID: "x", Interval: 50 * time.Millisecond},
		{Service: "svc", ID: "x", Interval: time.Hour},
	} {
		if _, err := membership.NewAnnouncer(nc, c); err == nil {
			t.Errorf("announcer config %+v accepted", c)
		}
	}
}

// A member joins a checking watcher's ring only once it answers its identity
// probe with its own id and start time: a heartbeat without a responder, or
// with one that answers anything else, never joins.
func TestIdentityProbe(t *testing.T) {
	s := bustest.RunServer(t)
	w := watchChecked(t, s.Connect(), h)
	attacker := s.Connect()
	started := bus.Time{Time: time.Now()}
	// "mute": a heartbeat, no responder. "liar": a responder that answers
	// every request on its node subjects with something else.
	if _, err := attacker.Subscribe("svc.node.liar.>", func(m *nats.Msg) {
		b, _ := json.Marshal(membership.Heartbeat{ID: "liar", Weight: 1, Started: bus.Time{Time: started.Add(time.Hour)}})
		_ = m.Respond(b)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := attacker.Subscribe("svc.node.garbage.>", func(m *nats.Msg) { _ = m.Respond([]byte("POISONED")) }); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"mute", "liar", "garbage"} {
		forge(t, attacker, membership.Heartbeat{ID: id, Weight: 1, Started: started, IntervalMs: h.Milliseconds()})
	}
	announceChecked(t, s.Connect(), "real", h)
	await(t, w, 50*h, size(1))
	// Their probes have had time to fail (the watcher's probe waits at most
	// 500 ms), and they kept beating meanwhile.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(h) {
		for _, id := range []string{"mute", "liar", "garbage"} {
			forge(t, attacker, membership.Heartbeat{ID: id, Weight: 1, Started: started, IntervalMs: h.Milliseconds()})
		}
	}
	if got := ids(w); len(got) != 1 || got[0] != "real" {
		t.Fatalf("members = %v, want only real", got)
	}
	if m := w.Members(); len(m) != 1 || m[0].ID != "real" {
		t.Fatalf("Members() = %+v", m)
	}
}

// Another incarnation of a live member (a forger with the same id and a
// responder of its own) neither takes the id, nor changes its weight, nor
// makes it leave.
func TestLiveIDNotTakenOver(t *testing.T) {
	s := bustest.RunServer(t)
	w := watchChecked(t, s.Connect(), h)
	announceChecked(t, s.Connect(), "m1", h)
	await(t, w, 50*h, size(1))
	live := w.Members()[0]
	changed := w.Changed()
	attacker := s.Connect()
	forged := membership.Heartbeat{ID: "m1", Weight: 50, Started: bus.Time{Time: time.Now().Add(time.Minute)}, IntervalMs: h.Milliseconds()}
	if _, err := attacker.Subscribe(identitySubject("m1"), func(m *nats.Msg) {
		b, _ := json.Marshal(forged)
		_ = m.Respond(b)
	}); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(h) {
		forge(t, attacker, forged)
		// The weight of the live incarnation, claimed with its start time.
		forge(t, attacker, membership.Heartbeat{ID: "m1", Weight: 50, Started: live.Started, IntervalMs: h.Milliseconds()})
	}
	leave := forged
	leave.Leave = true
	forge(t, attacker, leave)
	time.Sleep(3 * h) // past the debounce a change would take
	select {
	case <-changed:
		t.Fatalf("the ring changed: %v", w.Ring().Members())
	default:
	}
	m := w.Members()
	if len(m) != 1 || !m[0].Started.Equal(live.Started.Time) || m[0].Weight != live.Weight {
		t.Fatalf("members = %+v, want the live m1 (started %v, weight %v)", m, live.Started, live.Weight)
	}
}

// A member that crashes and restarts at once under the same id: the new
// incarnation answers its identity probe and the old one does not, so the
// new one takes the id before the old one expires, without a ring change.
func TestCrashRestartTakesOver(t *testing.T) {
	const hb = time.Second // takeover waits one probe (≤ H) < k·H
	s := bustest.RunServer(t)
	w := watchChecked(t, s.Connect(), hb)
	old := s.Connect()
	announceChecked(t, old, "m1", hb)
	await(t, w, 5*hb, size(1))
	first := w.Members()[0].Started
	changed := w.Changed()
	old.Close() // a crash: no leave
	announceChecked(t, s.Connect(), "m1", hb)
	deadline := time.Now().Add(time.Duration(k) * hb)
	for w.Members()[0].Started.Equal(first.Time) {
		if time.Now().After(deadline) {
			t.Fatal("the new incarnation did not take over before the old one would expire")
		}
		time.Sleep(50 * time.Millisecond) // the member table has no change signal
	}
	select {
	case <-changed:
		t.Fatalf("the ring changed during a crash-restart: %v", w.Ring().Members())
	default:
	}
}
