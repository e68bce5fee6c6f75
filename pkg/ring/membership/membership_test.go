package membership_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	h = 100 * time.Millisecond // heartbeat interval in these tests
	k = membership.DefaultMisses
)

func announce(t *testing.T, nc *nats.Conn, id string, weight float64) *membership.Announcer {
	t.Helper()
	a, err := membership.NewAnnouncer(nc, membership.AnnouncerConfig{Service: "svc", ID: id, Weight: weight, Version: "1.0.0", Interval: h})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop(context.Background()) })
	return a
}

func watch(t *testing.T, nc *nats.Conn) *membership.Watcher {
	t.Helper()
	w, err := membership.NewWatcher(nc, membership.WatcherConfig{Service: "svc", Interval: h})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	return w
}

// await waits for the watcher's ring to satisfy ok, and returns how long it took.
func await(t *testing.T, w *membership.Watcher, within time.Duration, ok func(ids []string) bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(within)
	for {
		changed := w.Changed()
		if ok(ids(w)) {
			return time.Since(start)
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("ring %v did not reach the expected state within %v", ids(w), within)
		}
	}
}

func ids(w *membership.Watcher) []string {
	var out []string
	for _, m := range w.Ring().Members() {
		out = append(out, m.ID)
	}
	return out
}

func size(n int) func([]string) bool { return func(ids []string) bool { return len(ids) == n } }

// A watcher started after the members knows them when Start returns.
func TestStartSeesMembersAtOnce(t *testing.T) {
	s := bustest.RunServer(t)
	for i := range 3 {
		announce(t, s.Connect(), fmt.Sprintf("m%d", i), 1)
	}
	w := watch(t, s.Connect())
	if got := ids(w); len(got) != 3 {
		t.Fatalf("members after Start = %v", got)
	}
}

// A member that crashes (no leave) is dropped within (k+1)·H.
func TestCrashDetected(t *testing.T) {
	s := bustest.RunServer(t)
	w := watch(t, s.Connect())
	var victim *nats.Conn
	for i := range 3 {
		nc := s.Connect()
		announce(t, nc, fmt.Sprintf("m%d", i), 1)
		victim = nc
	}
	await(t, w, 5*h, size(3))
	victim.Close() // the process dies: no leave
	crashed := time.Now()
	await(t, w, 10*h, size(2))
	if took := time.Since(crashed); took > time.Duration(k+1)*h {
		t.Fatalf("crash detected after %v, want within %v", took, time.Duration(k+1)*h)
	}
}

// A graceful stop is seen within about one H (the debounce).
func TestGracefulLeave(t *testing.T) {
	s := bustest.RunServer(t)
	a := announce(t, s.Connect(), "m0", 1)
	announce(t, s.Connect(), "m1", 1)
	w := watch(t, s.Connect())
	await(t, w, 5*h, size(2))
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	await(t, w, 10*h, size(1))
	if took := time.Since(left); took > 2*h {
		t.Fatalf("leave seen after %v, want about %v", took, h)
	}
}

// Watchers that see the same members build the same ring.
func TestWatchersConverge(t *testing.T) {
	s := bustest.RunServer(t)
	var ws []*membership.Watcher
	for range 5 {
		ws = append(ws, watch(t, s.Connect()))
	}
	for i := range 4 {
		announce(t, s.Connect(), fmt.Sprintf("m%d", i), float64(i+1))
	}
	for _, w := range ws {
		await(t, w, 10*h, size(4))
	}
	for _, w := range ws[1:] {
		if w.Ring().Version() != ws[0].Ring().Version() {
			t.Fatalf("ring versions differ: %x vs %x", w.Ring().Version(), ws[0].Ring().Version())
		}
	}
}

// A member restarted with the same id rejoins as one member, and a restart
// within the debounce does not change the ring at all.
func TestRestartSameID(t *testing.T) {
	s := bustest.RunServer(t)
	announce(t, s.Connect(), "m0", 1)
	first := announce(t, s.Connect(), "m1", 1)
	w := watch(t, s.Connect())
	await(t, w, 5*h, size(2))
	before := w.Members()[1].Started
	changed := w.Changed()
	if err := first.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	announce(t, s.Connect(), "m1", 1)
	// Wait past the debounce, until the watcher has seen the new instance.
	deadline := time.Now().Add(10 * h)
	for w.Members()[len(w.Members())-1].Started.Equal(before.Time) {
		if time.Now().After(deadline) {
			t.Fatal("the restarted member was never seen")
		}
		time.Sleep(h / 10) // polling the member table, which has no change signal
	}
	time.Sleep(2 * h) // past the debounce of the leave
	select {
	case <-changed:
		t.Fatalf("the ring changed during a restart within the debounce: %v", ids(w))
	default:
	}
	if m := w.Members(); len(m) != 2 || m[1].ID != "m1" {
		t.Fatalf("members = %+v", m)
	}
}

// Heartbeats delayed by less than k·H never drop the member.
func TestDelayedHeartbeatsDoNotFlap(t *testing.T) {
	s := bustest.RunServer(t)
	nc := s.Connect()
	w := watch(t, s.Connect())
	started := time.Now()
	beat := func() {
		b, _ := json.Marshal(membership.Heartbeat{ID: "slow", Weight: 1, IntervalMs: h.Milliseconds(), Started: bus.Time{Time: started}})
		if err := nc.Publish(membership.Subject("svc", "slow"), b); err != nil {
			t.Fatal(err)
		}
	}
	beat()
	await(t, w, 5*h, size(1))
	changed := w.Changed()
	for _, gap := range []time.Duration{h, 2 * h, 5 * h / 2, 2 * h, 5 * h / 2} {
		time.Sleep(gap) // the delay under test
		beat()
	}
	select {
	case <-changed:
		t.Fatalf("the ring changed though every gap was under %v", time.Duration(k)*h)
	default:
	}
}

// Malformed heartbeats are ignored; the watcher keeps working.
func TestMalformedHeartbeatsIgnored(t *testing.T) {
	s := bustest.RunServer(t)
	nc := s.Connect()
	w := watch(t, s.Connect())
	for subject, body := range map[string]string{
		"mesh.heartbeat.svc.a":     `{"id":`,
		"mesh.heartbeat.svc.b":     `{"id":"not-b","weight":1}`,
		"mesh.heartbeat.svc.c":     `{"id":"c","weight":-1}`,
		"mesh.heartbeat.svc.d":     `{"id":"d","weight":"heavy"}`,
		"mesh.heartbeat.svc.e":     ``,
		"mesh.heartbeat.svc.f":     "\xc1\xc1",
		"mesh.heartbeat.svc.g":     `{"id":"g","interval_ms":-5}`,
		"mesh.heartbeat.svc.a.b.c": `{"id":"a"}`,
	} {
		if err := nc.Publish(subject, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	announce(t, s.Connect(), "ok", 1)
	await(t, w, 5*h, size(1))
	if got := ids(w); got[0] != "ok" {
		t.Fatalf("members = %v", got)
	}
}

func TestConfigErrors(t *testing.T) {
	s := bustest.RunServer(t)
	nc := s.Connect()
	for _, c := range []membership.AnnouncerConfig{{Service: "svc"}, {Service: "a.b", ID: "x"}, {Service: "svc", ID: "x.y"}, {Service: "svc", ID: "x", Weight: -1}} {
		if _, err := membership.NewAnnouncer(nc, c); err == nil {
			t.Errorf("announcer config %+v accepted", c)
		}
	}
	if _, err := membership.NewWatcher(nc, membership.WatcherConfig{Service: "*"}); err == nil {
		t.Error("watcher of service * accepted")
	}
}
