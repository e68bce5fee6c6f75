package membership_test

import (
	"context"
	"encoding/json"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

func identitySubject(id string) string { return "svc.node." + id + ".identity" }

// watchChecked starts a watcher that trusts a member once it answers its
// identity probe.
func watchChecked(t *testing.T, nc *nats.Conn, interval time.Duration, log zerolog.Logger) *membership.Watcher {
	t.Helper()
	return watchWith(t, nc, membership.WatcherConfig{Interval: interval, IdentitySubject: identitySubject, Logger: log})
}

// probeFailures counts, per member, the identity probes a watcher logged as
// unanswered: the event a test waits for before it checks that such a
// member stays out of the ring.
type probeFailures struct {
	mu     sync.Mutex
	failed map[string]int
}

func (p *probeFailures) Write(b []byte) (int, error) {
	var e struct{ Message, Member string }
	if json.Unmarshal(b, &e) == nil && e.Message == "member does not answer its identity probe; not in the ring" {
		p.mu.Lock()
		if p.failed == nil {
			p.failed = map[string]int{}
		}
		p.failed[e.Member]++
		p.mu.Unlock()
	}
	return len(b), nil
}

// all reports whether the probes of every member of ids failed at least
// once, and those that did.
func (p *probeFailures) all(ids ...string) (bool, map[string]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ok := true
	for _, id := range ids {
		ok = ok && p.failed[id] > 0
	}
	return ok, maps.Clone(p.failed)
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
	await(t, w, patience, size(1))
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
	var failures probeFailures
	w := watchChecked(t, s.Connect(), h, zerolog.New(&failures))
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
	forged := []string{"mute", "liar", "garbage"}
	beat := func() {
		for _, id := range forged {
			forge(t, attacker, membership.Heartbeat{ID: id, Weight: 1, Started: started, IntervalMs: h.Milliseconds()})
		}
	}
	beat()
	announceChecked(t, s.Connect(), "real", h)
	await(t, w, patience, exactly("real"))
	// They keep beating until the watcher has found that each one's probe
	// went unanswered (it logs so), then once more.
	deadline := time.Now().Add(patience)
	for {
		ok, failed := failures.all(forged...)
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("identity probes logged as failed within %v: %v, want each of %v", patience, failed, forged)
		}
		time.Sleep(h) // their heartbeat interval
		beat()
	}
	beat()
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
	// The live member must answer the probe of a takeover within half a
	// probe's wait (max(interval, 500 ms)/2), or the watcher rightly takes
	// it for gone: an interval of 1 s, scaled, gives it 500 ms.
	iv := bustest.Scale(time.Second)
	s := bustest.RunServer(t)
	w := watchChecked(t, s.Connect(), iv, zerolog.Nop())
	announceChecked(t, s.Connect(), "m1", iv)
	await(t, w, patience, exactly("m1"))
	live := w.Members()[0]
	changed := w.Changed()
	attacker := s.Connect()
	forged := membership.Heartbeat{ID: "m1", Weight: 50, Started: bus.Time{Time: time.Now().Add(time.Minute)}, IntervalMs: iv.Milliseconds()}
	var probes atomic.Int32 // takeover probes: the live m1 was checked before this subscription
	if _, err := attacker.Subscribe(identitySubject("m1"), func(m *nats.Msg) {
		probes.Add(1)
		b, _ := json.Marshal(forged)
		_ = m.Respond(b)
	}); err != nil {
		t.Fatal(err)
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	// Forge until the watcher has twice probed whether the forger may take
	// the id over (at most once an interval).
	deadline := time.Now().Add(patience)
	for probes.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d takeover probes within %v, want 2", probes.Load(), patience)
		}
		forge(t, attacker, forged)
		// The weight of the live incarnation, claimed with its start time.
		forge(t, attacker, membership.Heartbeat{ID: "m1", Weight: 50, Started: live.Started, IntervalMs: iv.Milliseconds()})
		time.Sleep(iv / 4)
	}
	leave := forged
	leave.Leave = true
	forge(t, attacker, leave)
	// A takeover would follow its probe within half a probe's wait, and a
	// leave its debounce (one interval): an absence cannot be awaited, so
	// wait past both.
	time.Sleep(2 * iv)
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
	hb := bustest.Scale(time.Second) // takeover waits one probe (≤ H) < k·H
	s := bustest.RunServer(t)
	w := watchChecked(t, s.Connect(), hb, zerolog.Nop())
	old := s.Connect()
	announceChecked(t, old, "m1", hb)
	await(t, w, patience, exactly("m1"))
	first := w.Members()[0].Started
	changed := w.Changed()
	next := s.Connect()
	old.Close() // a crash: no leave
	announceChecked(t, next, "m1", hb)
	deadline := time.Now().Add(time.Duration(k) * hb)
	for {
		m := w.Members()
		if len(m) != 1 {
			t.Fatalf("members = %+v during a crash-restart, want m1", m)
		}
		if !m[0].Started.Equal(first.Time) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new incarnation did not take over before the old one would expire")
		}
		time.Sleep(hb / 20) // the member table has no change signal
	}
	select {
	case <-changed:
		t.Fatalf("the ring changed during a crash-restart: %v", w.Ring().Members())
	default:
	}
}
