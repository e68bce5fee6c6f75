package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/services/scheduler"
)

// A task delivered MaxDeliver times without any outcome (a worker that
// does not speak the protocol, or keeps dying) is moved to the dead
// letters when the server's max-deliveries advisory comes, its record says
// dead, and it leaves the queue.
func TestMaxDeliveriesAdvisory(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{AckWait: 200 * time.Millisecond, MaxDeliver: 2})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "raw", Type: "x", Payload: []byte("lost soul")})
	if err != nil {
		t.Fatal(err)
	}
	js := s.JetStream()
	cons, err := js.Consumer(ctx(t), scheduler.Stream, "raw")
	if err != nil {
		t.Fatal(err)
	}
	// Two deliveries never acknowledged; the third pull finds the task out
	// of deliveries.
	for i := range 3 {
		if i == 2 {
			go func() { _, _ = cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second)) }()
			break
		}
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range batch.Messages() {
			n++ // never acknowledged
		}
		if n != 1 {
			t.Fatalf("delivery %d: %d messages", i+1, n)
		}
	}
	ev.wait(t, "task.dead", id)
	info, err := c.Status(ctx(t), id)
	if err != nil || info.State != scheduler.StateDead || info.Attempts != 2 {
		t.Fatalf("status = %+v, %v", info, err)
	}
	dead, err := js.Stream(ctx(t), scheduler.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dead.GetLastMsgForSubject(ctx(t), scheduler.DeadSubjectPrefix+"raw")
	if err != nil || string(m.Data) != "lost soul" || m.Header.Get(scheduler.HeaderID) != id {
		t.Fatalf("dead letter = %+v, %v", m, err)
	}
	queueEmpty(t, s.URL(), "raw")
}

// A submit that gets no answer from the store (no stream takes the
// queue's subjects, as while it elects a leader) is answered 503 once the
// service's wait is over: whether the task stands is unknown. Sent again
// with the same id once the stream is back, it makes the one task, its
// unique key its own; another submit with that key is a duplicate of it.
func TestSubmitGetsNoAnswer(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "f", Type: "x"}); err != nil {
		t.Fatal(err)
	}
	back := bustest.StreamAway(t, s.JetStream(), scheduler.Stream)
	nc := bustest.Connect(t, s.URL())
	req := scheduler.SubmitRequest{ID: "away-1", Queue: "f", Type: "x", UniqueKey: "once"}
	_, err := bus.Request[scheduler.SubmitRequest, scheduler.SubmitReply](ctx(t), nc, scheduler.SubjectSubmit, req)
	if !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("submit while the stream is away = %v, want 503", err)
	}
	back()
	if id, err := c.Submit(ctx(t), req); err != nil || id != "away-1" {
		t.Fatalf("sent again = %q, %v", id, err)
	}
	other := req
	other.ID = ""
	if id, err := c.Submit(ctx(t), other); !errors.Is(err, scheduler.ErrDuplicate) || id != "away-1" {
		t.Fatalf("the same unique key = %q, %v; want away-1, ErrDuplicate", id, err)
	}
	var runs atomic.Int32
	work(t, s.URL(), map[string]int{"f": 1}, map[string]scheduler.Handler{
		"x": func(ctx context.Context, task *scheduler.Task) error { runs.Add(1); return nil },
	})
	if info := waitDone(t, c, "away-1"); info.State != scheduler.StateSucceeded {
		t.Fatalf("task = %+v", info)
	}
	queueEmpty(t, s.URL(), "f")
	if n := runs.Load(); n != 2 {
		t.Fatalf("%d runs, want 2 (the first task and away-1)", n)
	}
}

// A stream that refuses a task's message fails the submit: an error, no
// task, the unique key free again.
func TestEnqueueRefused(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "r", Type: "x"}); err != nil {
		t.Fatal(err)
	}
	js := s.JetStream()
	stream, err := js.Stream(ctx(t), scheduler.Stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.MaxMsgSize = 512
	if _, err := js.UpdateStream(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	req := scheduler.SubmitRequest{ID: "refused", Queue: "r", Type: "x", UniqueKey: "once", Payload: make([]byte, 1024)}
	if id, err := c.Submit(ctx(t), req); err == nil {
		t.Fatalf("a refused message was submitted as %s", id)
	}
	if _, err := c.Status(ctx(t), "refused"); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("status of the refused task: %v", err)
	}
	req.Payload, req.ID = nil, ""
	if _, err := c.Submit(ctx(t), req); err != nil {
		t.Fatalf("the unique key was not given back: %v", err)
	}
}

// A unique key naming no task (a submit that failed before storing its
// task and could not give the key back) is taken over once older than a
// submit takes; before that, it is a duplicate.
func TestUniqueKeyLeftBehind(t *testing.T) {
	const grace = time.Second
	defer scheduler.SetUniqueGrace(scheduler.SetUniqueGrace(grace))
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	kv, err := s.JetStream().KeyValue(ctx(t), scheduler.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	if _, err := kv.Create(ctx(t), scheduler.UniqueKey("q", "k"), []byte("never-stored")); err != nil {
		t.Fatal(err)
	}
	req := scheduler.SubmitRequest{Queue: "q", Type: "x", UniqueKey: "k"}
	deadline := time.Now().Add(10 * time.Second)
	var id string
	for {
		id, err = c.Submit(ctx(t), req)
		if err == nil {
			break
		}
		if !errors.Is(err, scheduler.ErrDuplicate) || id != "never-stored" || time.Now().After(deadline) {
			t.Fatalf("submit over a key left behind: %q, %v", id, err)
		}
		time.Sleep(100 * time.Millisecond) // the key's age decides, no event
	}
	if since := time.Since(left); since < grace {
		t.Fatalf("key taken over after %s, before its grace", since)
	}
	if _, err := c.Status(ctx(t), id); err != nil {
		t.Fatalf("status of %s: %v", id, err)
	}
	if again, err := c.Submit(ctx(t), req); !errors.Is(err, scheduler.ErrDuplicate) || again != id {
		t.Fatalf("again = %q, %v; want %q, ErrDuplicate", again, err, id)
	}
}

// fixedServer is an embedded server on a fixed port and store, that a test
// can stop and start again.
type fixedServer struct {
	t    *testing.T
	dir  string
	addr string
	srv  *embed.Server
}

func startFixed(t *testing.T) *fixedServer {
	f := &fixedServer{t: t, dir: t.TempDir(), addr: bustest.FreeAddr(t)}
	f.start()
	t.Cleanup(func() {
		if f.srv != nil {
			f.stop()
		}
	})
	return f
}

func (f *fixedServer) start() {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := embed.Start(c, embed.Config{Listen: f.addr, DataDir: f.dir})
	if err != nil {
		f.t.Fatal(err)
	}
	f.srv = srv
}

func (f *fixedServer) stop() {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(c); err != nil {
		f.t.Fatal(err)
	}
	f.srv = nil
}

func (f *fixedServer) URL() string { return "nats://" + f.addr }

// noLoss submits n tasks to a scheduler on url while workers run them;
// midway through, disrupt runs (it may stop workers abruptly, restart
// servers...). Every id must reach a terminal state; duplicates (a task
// run twice: at least once delivery) are counted and reported.
// counter counts task starts and tells when a count is reached.
type counter struct {
	mu    sync.Mutex
	n     int64
	waits map[int64]chan struct{}
}

func (c *counter) add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if ch, ok := c.waits[c.n]; ok {
		close(ch)
		delete(c.waits, c.n)
	}
}

func (c *counter) load() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// reached returns a channel closed once the count reaches n.
func (c *counter) reached(n int64) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	if c.n >= n {
		close(ch)
		return ch
	}
	if c.waits == nil {
		c.waits = map[int64]chan struct{}{}
	}
	if old, ok := c.waits[n]; ok {
		return old
	}
	c.waits[n] = ch
	return ch
}

func (c *counter) wait(t *testing.T, n int64) {
	t.Helper()
	select {
	case <-c.reached(n):
	case <-time.After(30 * time.Second):
		t.Fatalf("%d task starts in 30s, waiting for %d", c.load(), n)
	}
}

func noLoss(t *testing.T, url string, n int, disrupt func(started *counter)) {
	c := client(t, url)
	t0 := time.Now()
	logf := func(format string, args ...any) {
		t.Logf("%6.2fs "+format, append([]any{time.Since(t0).Seconds()}, args...)...)
	}
	var starts startLog
	var started counter
	handler := func(ctx context.Context, task *scheduler.Task) error {
		starts.record(task.ID)
		started.add()
		select {
		case <-time.After(time.Duration(len(task.ID)%3) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	newWorker := func() (*scheduler.Worker, *nats.Conn) {
		nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: map[string]int{"bulk": 16}, ShutdownGrace: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		w.Handle("job", handler)
		if err := w.Start(ctx(t)); err != nil {
			t.Fatal(err)
		}
		return w, nc
	}
	w1, nc1 := newWorker()
	w2, nc2 := newWorker()
	t.Cleanup(func() { _ = w1.Stop(context.Background()); nc1.Close() })
	t.Cleanup(func() { _ = w2.Stop(context.Background()); nc2.Close() })

	ids := make([]string, n)
	runAt := make([]time.Time, n) // of the delayed tasks, as the service returned it
	var wg sync.WaitGroup
	var submitErr atomic.Value
	const submitters = 8
	for g := range submitters {
		wg.Go(func() {
			for i := g; i < n; i += submitters {
				for attempt := 0; ; attempt++ {
					sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					req := scheduler.SubmitRequest{Queue: "bulk", Type: "job", MaxRetries: intp(20), TimeoutMs: 10_000,
						Backoff: &scheduler.Backoff{Kind: "constant", InitialMs: 50}}
					var id string
					var err error
					if i%10 == 0 {
						// Some delayed: through the staging and its timers.
						// SubmitMany's result carries the run_at the
						// service set, which the start must not precede.
						req.DelayMs = int64(200 + i%700)
						var res []scheduler.SubmitResult
						res, err = c.SubmitMany(sctx, []scheduler.SubmitRequest{req})
						if err == nil {
							if err = res[0].Err(); err == nil && res[0].RunAt.IsZero() {
								err = fmt.Errorf("delayed task %s submitted without a run_at: %+v", res[0].ID, res[0])
								attempt = 1000 // not a fault of the run: give up
							}
							id, runAt[i] = res[0].ID, res[0].RunAt.Time
						}
					} else {
						id, err = c.Submit(sctx, req)
					}
					cancel()
					if err == nil {
						ids[i] = id
						break
					}
					if attempt > 100 {
						submitErr.Store(err)
						return
					}
					// The server is restarting: submit again. (A submit whose
					// reply was lost may have enqueued a task whose id we never
					// learn; it runs, unchecked.)
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
	// Abruptly, once tasks run: the first worker's connection closes mid-task.
	started.wait(t, int64(n/10))
	nc1.Close()
	logf("worker 1 closed after %d starts", started.load())
	disrupt(&started)
	logf("disrupted after %d starts", started.load())
	wg.Wait()
	logf("all submitted; %d starts", started.load())
	if err := submitErr.Load(); err != nil {
		t.Fatalf("submit: %v", err)
	}
	// Every id reaches a terminal state.
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for {
			wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			info, err := c.Wait(wctx, id)
			cancel()
			if err == nil {
				if info.State != scheduler.StateSucceeded {
					t.Fatalf("task %s ended %+v", id, info)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %s: %v (last %+v)", id, err, info)
			}
		}
	}
	logf("all terminal; %d starts", started.load())
	distinct := map[string]bool{}
	delayed := map[string]time.Time{}
	for i, id := range ids {
		distinct[id] = true
		if !runAt[i].IsZero() {
			delayed[id] = runAt[i]
		}
	}
	if len(distinct) != n {
		t.Fatalf("%d submits answered %d distinct ids", n, len(distinct))
	}
	// Every task ran (a task run more than once is at-least-once delivery),
	// and no delayed task before the run_at the service returned.
	for _, id := range ids {
		if _, ok := delayed[id]; !ok {
			delayed[id] = time.Time{} // started, at any time
		}
	}
	dups := starts.check(t, delayed)
	t.Logf("%d tasks, all succeeded; %d runs again (at-least-once delivery)", n, dups)
}

// No loss across a server restart on the same store and a worker dying
// mid-task.
func TestNoLossServerRestart(t *testing.T) {
	f := startFixed(t)
	cfg := scheduler.Config{AckWait: time.Second}
	// The scheduler must outlive the restart: its connection reconnects.
	serve(t, f.URL(), cfg)
	noLoss(t, f.URL(), 2000, func(started *counter) {
		started.wait(t, 600)
		t.Logf("restarting the server after %d starts", started.load())
		f.stop()
		f.start()
		t.Logf("restarted")
	})
}

// No loss on a 3-node cluster (R3) losing a node mid-run.
func TestNoLossClusterNodeDown(t *testing.T) {
	cl := bustest.RunCluster(t, 3)
	cfg := scheduler.Config{Replicas: 3, AckWait: time.Second}
	serve(t, cl.URL(), cfg)
	serve(t, cl.URL(), cfg)
	noLoss(t, cl.URL(), 600, func(started *counter) {
		started.wait(t, 200)
		victim := (cl.Leader() + 1) % cl.N()
		t.Logf("stopping node %d after %d starts", victim, started.load())
		cl.Stop(victim)
	})
}

// An instance that dies holding delayed tasks on its timers loses none:
// another instance gets them after the staging ack wait and releases them,
// late but never before the run_at the service returned.
func TestDelayedInstanceDies(t *testing.T) {
	t.Parallel() // waits on timers mostly
	s := bustest.RunServer(t)
	doomedConn := bustest.Connect(t, s.URL())
	serveOn(t, doomedConn, scheduler.Config{})
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	var starts startLog
	work(t, s.URL(), map[string]int{"d": 4}, map[string]scheduler.Handler{
		"x": func(ctx context.Context, task *scheduler.Task) error {
			starts.record(task.ID)
			return nil
		},
	})
	const n = 20
	runAt := map[string]time.Time{}
	for i := range n {
		due := time.Now().Add(time.Duration(800+20*i) * time.Millisecond).Truncate(time.Millisecond)
		r := submitReply(t, nc, scheduler.SubmitRequest{Queue: "d", Type: "x", RunAt: bus.Time{Time: due}})
		if r.State == scheduler.StateScheduled && !r.RunAt.Equal(due) {
			t.Fatalf("task %s: run_at %s, asked for %s", r.ID, r.RunAt, due.Format(time.RFC3339Nano))
		}
		if _, dup := runAt[r.ID]; dup {
			t.Fatalf("id %s twice", r.ID)
		}
		runAt[r.ID] = due // the run_at returned, or asked for if it had passed already
	}
	// Both instances hold some; one dies, before any is due unless the
	// machine is very slow.
	doomedConn.Close()
	for id := range runAt {
		if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded {
			t.Fatalf("task %s: %+v", id, info)
		}
	}
	if again := starts.check(t, runAt); again != 0 {
		t.Errorf("%d tasks ran more than once", again)
	}
}

// While no stream takes the state bucket's writes (its leader being
// elected, as when a NATS node dies), a submit sends them again for a
// while instead of failing at once. The bucket comes back once the
// service has sent a write again after a no-responders failure, that is
// after nats.go's own retries of it (2 × 250 ms) had given up: a service
// that failed the submit then never gets there, and the test fails on its
// error.
func TestSubmitWhileBucketAway(t *testing.T) {
	s := bustest.RunServer(t)
	srv, err := scheduler.New(bustest.Connect(t, s.URL()), scheduler.Config{})
	if err != nil {
		t.Fatal(err)
	}
	creates := &watchedCreates{again: make(chan string, 1)}
	scheduler.WrapStates(srv, func(kv jetstream.KeyValue) jetstream.KeyValue {
		creates.KeyValue = kv
		return creates
	})
	if err := srv.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	c := client(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "w", Type: "x"}); err != nil {
		t.Fatal(err) // the queue exists: only the bucket goes away
	}
	back := bustest.StreamAway(t, s.JetStream(), "KV_"+scheduler.Bucket)
	creates.watch.Store(true)
	got := make(chan error, 1)
	// One request, not the Client, which would send the submit again
	// itself: the service's own retries are the point.
	nc := bustest.Connect(t, s.URL())
	go func() {
		_, err := bus.Request[scheduler.SubmitRequest, scheduler.SubmitReply](ctx(t), nc, scheduler.SubjectSubmit,
			scheduler.SubmitRequest{Queue: "w", Type: "x", UniqueKey: "away"})
		got <- err
	}()
	select {
	case key := <-creates.again:
		t.Logf("the write of %s was sent again after no stream took it", key)
	case err := <-got:
		t.Fatalf("the submit ended (%v) without sending a write again while the bucket was away", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no write sent again in 30s")
	}
	back()
	if err := <-got; err != nil {
		t.Fatalf("a submit failed while the bucket was away for less than it waits: %v", err)
	}
}

// watchedCreates tells, once watch is set, the first key whose Create is
// called again after a Create of it failed for want of a stream.
type watchedCreates struct {
	jetstream.KeyValue
	watch  atomic.Bool
	mu     sync.Mutex
	failed map[string]bool
	again  chan string
}

func (k *watchedCreates) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	if k.watch.Load() {
		k.mu.Lock()
		if k.failed[key] {
			select {
			case k.again <- key:
			default:
			}
		}
		k.mu.Unlock()
	}
	rev, err := k.KeyValue.Create(ctx, key, value, opts...)
	if err != nil && bus.NoStream(err) && k.watch.Load() {
		k.mu.Lock()
		if k.failed == nil {
			k.failed = map[string]bool{}
		}
		k.failed[key] = true
		k.mu.Unlock()
	}
	return rev, err
}
