package membership_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// k is the heartbeats a member may miss.
const k = membership.DefaultMisses

var (
	// h is the heartbeat interval in these tests, scaled by
	// MESH_TEST_TIME_SCALE (bustest.Scale) with every bound derived from
	// it: a live member is dropped only when its heartbeats, or the
	// watcher, stall for k·h, so a slow machine raises the factor.
	h = bustest.Scale(250 * time.Millisecond)
	// patience bounds a wait for something that must happen, however
	// slow the machine: not a bound under test.
	patience = bustest.Scale(10 * time.Second)
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
	return watchWith(t, nc, membership.WatcherConfig{})
}

// watchWith starts a watcher of service svc configured by cfg (its
// Interval zero: h).
func watchWith(t *testing.T, nc *nats.Conn, cfg membership.WatcherConfig) *membership.Watcher {
	t.Helper()
	cfg.Service = "svc"
	if cfg.Interval == 0 {
		cfg.Interval = h
	}
	w, err := membership.NewWatcher(nc, cfg)
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

// exactly is the condition that the ring's members are want, in id order.
func exactly(want ...string) func([]string) bool {
	return func(ids []string) bool { return slices.Equal(ids, want) }
}

// change is a change of a watcher's ring, as its OnChange saw it.
type change struct {
	at  time.Time
	ids []string
}

// history records a watcher's ring changes (WatcherConfig.OnChange), with
// the time the watcher made each, so that a test measures the watcher, not
// how soon its own goroutine woke up.
type history struct {
	mu      sync.Mutex
	changes []change
	more    chan struct{} // closed at the next change recorded
}

func (hs *history) onChange(_, next *ring.Ring) {
	var ids []string
	for _, m := range next.Members() {
		ids = append(ids, m.ID)
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.changes = append(hs.changes, change{time.Now(), ids})
	if hs.more != nil {
		close(hs.more)
		hs.more = nil
	}
}

// await waits until the history records a change made after t0 to a ring
// satisfying ok, and returns it. (OnChange runs just after the watcher
// publishes its new ring, so Watcher.Changed may fire first.)
func (hs *history) await(t *testing.T, t0 time.Time, ok func([]string) bool) change {
	t.Helper()
	deadline := time.After(patience)
	for {
		hs.mu.Lock()
		if hs.more == nil {
			hs.more = make(chan struct{})
		}
		more := hs.more
		hs.mu.Unlock()
		if c, found := hs.firstSince(t0, ok); found {
			return c
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("no ring change to the expected members within %v: %+v", patience, hs.all())
		}
	}
}

func (hs *history) all() []change {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return slices.Clone(hs.changes)
}

// firstSince returns the first change made after t0 to a ring satisfying ok.
func (hs *history) firstSince(t0 time.Time, ok func([]string) bool) (change, bool) {
	for _, c := range hs.all() {
		if !c.at.Before(t0) && ok(c.ids) {
			return c, true
		}
	}
	return change{}, false
}

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

// A member that crashes (no leave) is dropped within (k+1)·H of the crash:
// k·H after its last heartbeat, which came at most H before the crash. The
// bound is the point; it scales with h.
func TestCrashDetected(t *testing.T) {
	s := bustest.RunServer(t)
	var hs history
	w := watchWith(t, s.Connect(), membership.WatcherConfig{OnChange: hs.onChange})
	var victim *nats.Conn
	for i := range 3 {
		nc := s.Connect()
		announce(t, nc, fmt.Sprintf("m%d", i), 1)
		victim = nc
	}
	await(t, w, patience, exactly("m0", "m1", "m2"))
	crashed := time.Now()
	victim.Close() // the process dies: no leave
	dropped := hs.await(t, crashed, exactly("m0", "m1"))
	if took, bound := dropped.at.Sub(crashed), time.Duration(k+1)*h; took > bound {
		t.Fatalf("crash detected after %v, want within %v", took, bound)
	}
}

// A graceful stop is seen within about one H (the debounce); the bound is
// 2·H, scaled with h.
func TestGracefulLeave(t *testing.T) {
	s := bustest.RunServer(t)
	a := announce(t, s.Connect(), "m0", 1)
	announce(t, s.Connect(), "m1", 1)
	var hs history
	w := watchWith(t, s.Connect(), membership.WatcherConfig{OnChange: hs.onChange})
	await(t, w, patience, exactly("m0", "m1"))
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	left := time.Now() // the leave is on its way
	applied := hs.await(t, left, exactly("m1"))
	if took := applied.at.Sub(left); took > 2*h {
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
	want := []string{"m0", "m1", "m2", "m3"}
	for i := range 4 {
		announce(t, s.Connect(), want[i], float64(i+1))
	}
	// Until every watcher has exactly these members (a stalled machine may
	// drop one for a while), their versions must agree.
	deadline := time.Now().Add(patience)
	for {
		agree := true
		for _, w := range ws {
			agree = agree && slices.Equal(ids(w), want) && w.Ring().Version() == ws[0].Ring().Version()
		}
		if agree {
			return
		}
		if time.Now().After(deadline) {
			for i, w := range ws {
				t.Logf("watcher %d: members %v, version %x", i, ids(w), w.Ring().Version())
			}
			t.Fatalf("the watchers' rings did not converge to the same one of %v within %v", want, patience)
		}
		time.Sleep(h / 10) // polling several watchers at once
	}
}

// A member restarted with the same id rejoins as one member, and a restart
// within the debounce does not change the ring at all: no ring the watcher
// builds lacks it.
func TestRestartSameID(t *testing.T) {
	s := bustest.RunServer(t)
	announce(t, s.Connect(), "m0", 1)
	first := announce(t, s.Connect(), "m1", 1)
	var hs history
	// A debounce far longer than the restart below takes: a Stop, then a
	// Start on a connection made beforehand.
	w := watchWith(t, s.Connect(), membership.WatcherConfig{Debounce: 4 * h, OnChange: hs.onChange})
	await(t, w, patience, exactly("m0", "m1"))
	before := w.Members()[1].Started
	restarted := time.Now()
	next := s.Connect()
	if err := first.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	announce(t, next, "m1", 1)
	// A join after the restart: once the ring has it, the debounce the
	// leave started is over (one debounce gathers the changes made in it).
	announce(t, s.Connect(), "m2", 1)
	hs.await(t, restarted, exactly("m0", "m1", "m2"))
	for _, c := range hs.all() {
		if !c.at.Before(restarted) && !slices.Contains(c.ids, "m1") {
			t.Fatalf("the ring changed to %v during a restart within the debounce", c.ids)
		}
	}
	if m := w.Members(); len(m) != 3 || m[1].ID != "m1" || m[1].Started.Equal(before.Time) {
		t.Fatalf("members = %+v: want m1 once, the restarted one (the first started %v)", m, before)
	}
}

// Heartbeats delayed by less than k·H never drop the member, H being the
// interval its heartbeats state (here longer than the watcher's own).
func TestDelayedHeartbeatsDoNotFlap(t *testing.T) {
	s := bustest.RunServer(t)
	nc := s.Connect()
	w := watch(t, s.Connect())
	slow := bustest.Scale(400 * time.Millisecond)
	// The gaps come within H/2 of k·H. A run whose gaps, as published,
	// came later than k·H - H/4 (the test itself stalled) proves nothing
	// either way and is run again, as another member; a ring change in a
	// run whose gaps held fails.
	targets := []time.Duration{5 * slow / 2, 2 * slow, 5 * slow / 2}
	limit := time.Duration(k)*slow - slow/4
	for run := range 3 {
		id := fmt.Sprintf("slow%d", run)
		started := time.Now()
		var last time.Time
		beat := func() (gap time.Duration) {
			b, _ := json.Marshal(membership.Heartbeat{ID: id, Weight: 1, IntervalMs: slow.Milliseconds(), Started: bus.Time{Time: started}})
			if err := nc.Publish(membership.Subject("svc", id), b); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			gap, last = now.Sub(last), now
			return gap
		}
		beat()
		await(t, w, patience, exactly(id)) // a join waits for the debounce
		changed := w.Changed()
		beat()
		var gaps []time.Duration
		for _, target := range targets {
			time.Sleep(time.Until(last.Add(target))) // the delay under test
			gaps = append(gaps, beat())
		}
		select {
		case <-changed:
			if slices.Max(gaps) < limit {
				t.Fatalf("the ring changed to %v though the heartbeats came %v apart, under %v", ids(w), gaps, time.Duration(k)*slow)
			}
		default:
			return
		}
		t.Logf("heartbeats came %v apart, past %v: the test stalled; again", gaps, limit)
		// The member leaves before the next run.
		b, _ := json.Marshal(membership.Heartbeat{ID: id, Weight: 1, IntervalMs: slow.Milliseconds(), Started: bus.Time{Time: started}, Leave: true})
		if err := nc.Publish(membership.Subject("svc", id), b); err != nil {
			t.Fatal(err)
		}
		await(t, w, patience, size(0))
	}
	t.Fatalf("3 runs stalled past %v between heartbeats: the machine is too slow for the bound (raise %s)", limit, bustest.ScaleEnv)
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
	await(t, w, patience, size(1))
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
