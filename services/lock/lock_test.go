package lock_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// serve starts a lock service instance on its own connection.
func serve(t *testing.T, url string) *lock.Server {
	t.Helper()
	return serveWith(t, url, lock.Config{})
}

// serveWith starts a lock service instance with cfg on its own connection
// to url, made with opts. It is stopped at cleanup unless the test stopped
// it.
func serveWith(t *testing.T, url string, cfg lock.Config, opts ...nats.Option) *lock.Server {
	t.Helper()
	s, err := lock.New(bustest.Connect(t, url, opts...), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopService(t, s) })
	return s
}

func stopService(t *testing.T, s *lock.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("stopping a lock service: %v", err)
	}
}

// waitEmptied waits until every message of the bucket's stream has
// expired (keys, markers, barrier keys), for at most a minute.
func waitEmptied(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	st, err := js.Stream(ctx(t), "KV_"+lock.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := st.Info(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bucket's stream still holds %d messages after a minute", info.State.Msgs)
		}
		time.Sleep(100 * time.Millisecond) // waiting for the server's TTLs to run out
	}
}

func client(t *testing.T, url string) *lock.Client {
	return lock.NewClient(bustest.Connect(t, url))
}

var opts = lock.Options{TTL: 2 * time.Second, Owner: "test"}

func TestAcquireRelease(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	l, err := c.TryAcquire(ctx(t), "jobs.daily", opts)
	if err != nil {
		t.Fatal(err)
	}
	if l.Token() == 0 || time.Until(l.ExpiresAt()) <= 0 {
		t.Fatalf("lease token %d expires %v", l.Token(), l.ExpiresAt())
	}
	if _, err := c.TryAcquire(ctx(t), "jobs.daily", opts); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("second try = %v, want ErrLocked", err)
	}
	info, err := c.Inspect(ctx(t), "jobs.daily")
	if err != nil || !info.Held || len(info.Holders) != 1 || info.Holders[0].Token != l.Token() || info.Holders[0].Owner != "test" {
		t.Fatalf("inspect = %+v, %v", info, err)
	}
	if err := l.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	l2, err := c.TryAcquire(ctx(t), "jobs.daily", opts)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token() <= l.Token() {
		t.Fatalf("token %d after %d: fencing tokens must grow", l2.Token(), l.Token())
	}
	if err := c.Release(ctx(t), "jobs.daily", l.Token()); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("release with a stale token = %v, want ErrNotHeld", err)
	}
	if _, err := c.Renew(ctx(t), "jobs.daily", l.Token(), time.Second*2); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("renew with a stale token = %v, want ErrNotHeld", err)
	}
	if err := l2.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	for _, c := range []struct {
		body string
		is   error
	}{
		{`{"name":"","ttl_ms":5000}`, lock.ErrInvalidName},
		{`{"name":"a..b","ttl_ms":5000}`, lock.ErrInvalidName},
		{`{"name":"a b","ttl_ms":5000}`, lock.ErrInvalidName},
		{`{"name":"a","ttl_ms":0}`, lock.ErrInvalidTTL},
		{`{"name":"a","ttl_ms":-5}`, lock.ErrInvalidTTL},
		{`{"name":"a","ttl_ms":999999999999}`, lock.ErrInvalidTTL},
		{`{"name":"a","ttl_ms":5000,"wait_ms":-1}`, lock.ErrInvalid},
		{`{"name":"a","ttl_ms":"5s"}`, bus.ErrInvalid},
		{`{"name":`, bus.ErrInvalid},
		{`{"name":"a","ttl_ms":5000,"owner":"` + strings.Repeat("x", 100<<10) + `"}`, bus.ErrTooLarge},
	} {
		_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: lock.SubjectAcquire, Data: []byte(c.body)})
		if !errors.Is(err, c.is) {
			t.Errorf("%s: err = %v, want %v", c.body, err, c.is)
		}
	}
	list, err := lock.NewClient(nc).List(ctx(t), "")
	if err != nil || len(list.Locks) != 0 {
		t.Fatalf("bad input changed something: %+v, %v", list, err)
	}
	if _, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: lock.SubjectRelease, Data: []byte(`{"name":"a","token":0}`)}); !errors.Is(err, lock.ErrInvalid) {
		t.Fatalf("release without a token: %v", err)
	}
	if _, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: lock.SubjectRelease, Data: []byte(`{"name":"a","token":42}`)}); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("release of a lock not held: %v", err)
	}
}

// Waiters are served in the order they asked, and each holder's token is
// greater than the previous one's.
func TestFIFO(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	serve(t, s.URL()) // two instances share the requests
	c := client(t, s.URL())
	first, err := c.TryAcquire(ctx(t), "fifo", opts)
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		// Join the line one after the other: wait until the previous one is in.
		wg.Go(func() {
			l, err := client(t, s.URL()).Acquire(ctx(t), "fifo", opts)
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			if err := l.Release(ctx(t)); err != nil {
				t.Error(err)
			}
		})
		waitWaiters(t, c, "fifo", i+1)
	}
	if err := first.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d served in place %d", got, want)
		}
		want++
	}
	if want != n {
		t.Fatalf("%d of %d waiters served", want, n)
	}
}

func waitWaiters(t *testing.T, c *lock.Client, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := c.Inspect(ctx(t), name)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Waiters) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters, want %d", len(info.Waiters), n)
		}
		time.Sleep(5 * time.Millisecond) // polling the service's view of the line
	}
}

// A holder that dies without releasing loses the lock when its TTL ends,
// and the waiter in line gets it then: not before the dead holder's lease
// can have ended (an order of instants on one clock), and within
// holderDiesBound of its end, the point of the test (a bound scaled by
// MESH_TEST_TIME_SCALE, see bustest.Scale).
func TestHolderDies(t *testing.T) {
	holderDiesBound := bustest.Scale(1500 * time.Millisecond)
	const ttl = time.Second
	s := bustest.RunServer(t)
	serve(t, s.URL())
	doomed := bustest.Connect(t, s.URL())
	sent := time.Now() // the server cannot start the lease before the request is sent
	l, err := lock.NewClient(doomed).TryAcquire(ctx(t), "crash", lock.Options{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, s.URL())
	type grant struct {
		lease *lock.Lease
		at    time.Time
		err   error
	}
	granted := make(chan grant, 1)
	go func() {
		l2, err := c.Acquire(ctx(t), "crash", opts)
		granted <- grant{l2, time.Now(), err}
	}()
	waitWaiters(t, c, "crash", 1) // in line while the holder lives
	doomed.Close()                // no release, no renewal
	<-l.Done()
	g := <-granted
	if g.err != nil {
		t.Fatal(g.err)
	}
	defer g.lease.Release(context.Background())
	if earliest := sent.Add(ttl); g.at.Before(earliest) {
		t.Fatalf("the waiter got the lock %v before the dead holder's lease could have ended", earliest.Sub(g.at))
	}
	if late := g.at.Sub(l.ExpiresAt()); late > holderDiesBound {
		t.Fatalf("the waiter got the lock %v after the dead holder's lease ended, more than %v (%s)", late, holderDiesBound, bustest.ScaleEnv)
	}
	if g.lease.Token() <= l.Token() {
		t.Fatalf("token %d after %d", g.lease.Token(), l.Token())
	}
	if err := g.lease.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

// A lease renews itself past its TTL while held.
func TestLeaseRenews(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	l, err := c.TryAcquire(ctx(t), "long", lock.Options{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	first := l.ExpiresAt()
	time.Sleep(2500 * time.Millisecond) // longer than the TTL: renewals must keep it
	if l.Err() != nil || !l.ExpiresAt().After(first) {
		t.Fatalf("lease err %v, expires %v (first %v)", l.Err(), l.ExpiresAt(), first)
	}
	if _, err := c.TryAcquire(ctx(t), "long", opts); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("the renewed lock was free: %v", err)
	}
	if err := l.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

// A lease whose lock was released under it (here: by token, elsewhere) is
// lost at its next renewal.
func TestLeaseLost(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	l, err := c.TryAcquire(ctx(t), "lost", lock.Options{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx(t), "lost", l.Token()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("lease not lost")
	}
	if !errors.Is(l.Err(), lock.ErrLeaseLost) || !errors.Is(l.Err(), lock.ErrNotHeld) {
		t.Fatalf("err = %v", l.Err())
	}
	if err := l.Release(ctx(t)); !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("release of a lost lease = %v", err)
	}
}

// A waiter whose wait runs out gets ErrWaitTimeout and leaves the line.
func TestWaitTimeout(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	l, err := c.TryAcquire(ctx(t), "busy", opts)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx(t), 300*time.Millisecond)
	defer cancel()
	if _, err := c.Acquire(wctx, "busy", opts); !errors.Is(err, lock.ErrWaitTimeout) {
		t.Fatalf("err = %v, want ErrWaitTimeout", err)
	}
	info, err := c.Inspect(ctx(t), "busy")
	if err != nil || len(info.Waiters) != 0 {
		t.Fatalf("the waiter stayed in line: %+v, %v", info, err)
	}
	_ = l.Release(ctx(t))
}

// A semaphore never has more than limit holders.
func TestSemaphore(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	const limit, workers, rounds = 3, 8, 5
	o := lock.Options{TTL: 5 * time.Second, Limit: limit}
	var holding, peak atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		c := client(t, s.URL())
		wg.Go(func() {
			for r := range rounds {
				l, err := c.Acquire(ctx(t), "pool", o)
				if err != nil {
					t.Errorf("worker %d round %d: %v", w, r, err)
					return
				}
				n := holding.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(5 * time.Millisecond) // hold it a moment
				holding.Add(-1)
				if err := l.Release(ctx(t)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > limit || p < 2 {
		t.Fatalf("peak holders %d, want 2..%d", p, limit)
	}
}

func TestLocker(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	mu := client(t, s.URL()).Locker("counter", opts)
	var n int
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 5 {
				mu.Lock()
				v := n
				time.Sleep(time.Millisecond)
				n = v + 1
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if n != 20 {
		t.Fatalf("n = %d: the locker let two in at once", n)
	}
}

func TestList(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	for _, name := range []string{"a.1", "a.2", "b"} {
		l, err := c.TryAcquire(ctx(t), name, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release(ctx(t))
	}
	l, err := c.List(ctx(t), "a.")
	if err != nil || len(l.Locks) != 2 || l.Locks[0].Name != "a.1" || l.Locks[1].Holders != 1 {
		t.Fatalf("list = %+v, %v", l, err)
	}
}

// Once every key and marker has expired, the stream's last sequence names a
// message that is gone: the service must still answer and start at once.
func TestEmptiedBucket(t *testing.T) {
	s := bustest.RunServer(t)
	nc := bustest.Connect(t, s.URL())
	start := func() *lock.Server {
		srv, err := lock.New(nc, lock.Config{MarkerTTL: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx(t)); err != nil {
			t.Fatal(err)
		}
		return srv
	}
	srv := start()
	c := client(t, s.URL())
	l, err := c.TryAcquire(ctx(t), "gone", opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	waitEmptied(t, bustest.JetStream(t, nc))
	began := time.Now()
	if info, err := c.Inspect(ctx(t), "gone"); err != nil || info.Held {
		t.Fatalf("inspect = %+v, %v", info, err)
	}
	if err := srv.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	srv = start()
	defer srv.Stop(context.Background())
	// Waiting for a message that is gone ran into a timeout of seconds and
	// failed: the errors above tell that. The bound says "at once"; it is
	// scaled by MESH_TEST_TIME_SCALE (bustest.Scale) for slow machines.
	if took, bound := time.Since(began), bustest.Scale(time.Second); took > bound {
		t.Fatalf("inspect and a restart took %v on an emptied bucket, more than %v", took, bound)
	}
}

// An acquire that reaches the service after its caller's deadline (it sat
// in a stalled instance's socket) is refused and takes no place in line.
func TestAcquireAfterDeadline(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	late := &bus.Time{Time: time.Now().Add(-2 * lock.DeadlineSkew)}
	_, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx(t), nc, lock.SubjectAcquire,
		lock.AcquireRequest{Name: "late", TTLms: 5000, Deadline: late})
	if !errors.Is(err, lock.ErrExpired) {
		t.Fatalf("acquire after its deadline = %v, want ErrExpired", err)
	}
	c := client(t, s.URL())
	if info, err := c.Inspect(ctx(t), "late"); err != nil || info.Held || len(info.Waiters) != 0 {
		t.Fatalf("inspect = %+v, %v: the late request changed something", info, err)
	}
	// Within the skew allowed for clocks, the request is served.
	l, err := c.TryAcquire(ctx(t), "late", opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	soon := &bus.Time{Time: time.Now().Add(-lock.DeadlineSkew / 2)}
	r, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx(t), nc, lock.SubjectAcquire,
		lock.AcquireRequest{Name: "late", TTLms: 5000, Deadline: soon})
	if err != nil {
		t.Fatalf("acquire just past its deadline, within the skew: %v", err)
	}
	if err := c.Release(ctx(t), "late", r.Token); err != nil {
		t.Fatal(err)
	}
}

// serveHoldingRefusal starts an instance whose first refusal, once decided
// and before its key is taken out of the line, closes refusing and waits
// for resume to be closed; refusals counts the refusals decided.
func serveHoldingRefusal(t *testing.T, url string) (refusing, resume chan struct{}, refusals *atomic.Int32) {
	t.Helper()
	srv, err := lock.New(bustest.Connect(t, url), lock.Config{})
	if err != nil {
		t.Fatal(err)
	}
	refusing, resume, refusals = make(chan struct{}), make(chan struct{}), new(atomic.Int32)
	lock.BeforeRefusal(srv, func(string) {
		if refusals.Add(1) == 1 {
			close(refusing)
			<-resume
		}
	})
	if err := srv.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	return refusing, resume, refusals
}

// A try refused while the lock is held is taken out of the line a moment
// after its refusal is decided. If the holder releases in that moment, the
// refused key stands first in line: a try then must not be refused for a
// holder that never was. Either the first try is granted after all, or the
// second is.
func TestRefusedKeyFirstInLine(t *testing.T) {
	s := bustest.RunServer(t)
	refusing, resume, _ := serveHoldingRefusal(t, s.URL())
	c := client(t, s.URL())
	holder, err := c.TryAcquire(ctx(t), "phantom", opts)
	if err != nil {
		t.Fatal(err)
	}
	refusedThenReleased(t, c, "phantom", opts, refusing, resume, func() error { return holder.Release(ctx(t)) })
}

// refusedThenReleased makes a first try that is refused and held before
// its key leaves the line (refusing, resume: serveHoldingRefusal), then
// release, then a second try. The refused key must not stand where the
// released one was: either try is granted. The leases are released at
// cleanup.
func refusedThenReleased(t *testing.T, c *lock.Client, name string, o lock.Options, refusing, resume chan struct{}, release func() error) {
	t.Helper()
	type outcome struct {
		lease *lock.Lease
		err   error
	}
	firstTry := make(chan outcome, 1)
	go func() {
		l, err := c.TryAcquire(ctx(t), name, o)
		firstTry <- outcome{l, err}
	}()
	<-refusing
	if err := release(); err != nil {
		t.Fatal(err)
	}
	second, secondErr := c.TryAcquire(ctx(t), name, o)
	close(resume)
	got := <-firstTry
	for _, l := range []*lock.Lease{got.lease, second} {
		if l != nil {
			t.Cleanup(func() { _ = l.Release(context.Background()) })
		}
	}
	if errors.Is(got.err, lock.ErrLocked) && errors.Is(secondErr, lock.ErrLocked) {
		t.Fatal("both tries were refused after a release: the first, refused, stood where the released key was")
	}
	if got.err != nil && secondErr != nil {
		t.Fatalf("first try: %v; second try: %v", got.err, secondErr)
	}
}

// A semaphore's refused try rests on every key ahead of it, here both
// holders: the second one leaving before the refused key is taken out
// must not leave the key standing as a holder. Either the first try is
// granted after all, or the second is. On one server and on a cluster,
// where the refusal is an atomic batch that the stream must accept.
func TestSemaphoreRefusalRestsOnEveryKeyAhead(t *testing.T) {
	for _, where := range []string{"server", "cluster"} {
		t.Run(where, func(t *testing.T) {
			var url string
			if where == "server" {
				url = bustest.RunServer(t).URL()
			} else {
				url = bustest.RunCluster(t, 3).URL()
			}
			refusing, resume, _ := serveHoldingRefusal(t, url)
			c := reach(t, url) // on a cluster, the service's interest reaches the client's node a moment later
			sem := opts
			sem.Limit = 2
			var holders []*lock.Lease
			for range 2 {
				l, err := c.TryAcquire(ctx(t), "pool", sem)
				if err != nil {
					t.Fatal(err)
				}
				holders = append(holders, l)
			}
			defer holders[0].Release(context.Background())
			// The second holder leaves while the first try, refused with
			// both slots taken, still stands in line.
			refusedThenReleased(t, c, "pool", sem, refusing, resume, func() error { return holders[1].Release(ctx(t)) })
			// Both slots taken again: a third try is refused, by a batch
			// the stream accepts, and by the check of the whole name when
			// the stream takes no batch; either way its key leaves the line.
			js := bustest.JetStream(t, bustest.Connect(t, url))
			for _, batches := range []bool{true, false} {
				if !batches {
					stream, err := js.Stream(ctx(t), "KV_"+lock.Bucket)
					if err != nil {
						t.Fatal(err)
					}
					cfg := stream.CachedInfo().Config
					cfg.AllowAtomicPublish = false
					if _, err := js.UpdateStream(ctx(t), cfg); err != nil {
						t.Fatal(err)
					}
				}
				if l, err := c.TryAcquire(ctx(t), "pool", sem); !errors.Is(err, lock.ErrLocked) {
					if l != nil {
						defer l.Release(context.Background())
					}
					t.Fatalf("a try on a full semaphore (batches %v): %v, want ErrLocked", batches, err)
				}
				if info, err := c.Inspect(ctx(t), "pool"); err != nil || len(info.Holders) != 2 || len(info.Waiters) != 0 {
					t.Fatalf("after a refused try (batches %v): %+v, %v", batches, info, err)
				}
			}
		})
	}
}

// A try refused while a newcomer joins the line is refused once: its
// refusal rests on the holder's key alone, which the newcomer does not
// change (resting on every key of the name, it was decided again).
func TestRefusalIgnoresNewcomers(t *testing.T) {
	s := bustest.RunServer(t)
	refusing, resume, refusals := serveHoldingRefusal(t, s.URL())
	c := client(t, s.URL())
	holder, err := c.TryAcquire(ctx(t), "busy", opts)
	if err != nil {
		t.Fatal(err)
	}
	tried := make(chan error, 1)
	go func() {
		_, err := c.TryAcquire(ctx(t), "busy", opts)
		tried <- err
	}()
	<-refusing
	newcomer := make(chan error, 1)
	go func() {
		l, err := c.Acquire(ctx(t), "busy", opts)
		if err == nil {
			err = l.Release(ctx(t))
		}
		newcomer <- err
	}()
	waitWaiters(t, c, "busy", 2) // the newcomer's key is in line behind the refused one
	close(resume)
	if err := <-tried; !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("try: %v, want lock_held", err)
	}
	if n := refusals.Load(); n != 1 {
		t.Fatalf("the refusal was decided %d times, want once", n)
	}
	if err := holder.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-newcomer; err != nil {
		t.Fatalf("newcomer: %v", err)
	}
}

// While no stream takes the bucket's writes (its leader being elected, as
// when a NATS node dies), an acquire that may wait keeps trying to join the
// line within its wait instead of failing at once.
func TestAcquireWhileBucketAway(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	back := bustest.StreamAway(t, s.JetStream(), "KV_"+lock.Bucket)
	if _, err := c.TryAcquire(ctx(t), "away", opts); !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("a try while the bucket is away: %v, want unavailable", err)
	}
	got := make(chan error, 1)
	go func() {
		actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := c.Acquire(actx, "away", opts)
		if err == nil {
			err = l.Release(context.Background())
		}
		got <- err
	}()
	// Longer than nats.go's own retries of a publish nobody takes (2 × 250 ms).
	time.Sleep(1500 * time.Millisecond)
	back()
	if err := <-got; err != nil {
		t.Fatalf("an acquire that could wait failed while the bucket was away: %v", err)
	}
}
