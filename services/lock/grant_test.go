package lock_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// A waiting acquire that carries its caller's deadline leaves the line at
// that deadline, though wait_ms is longer: it answers wait_timeout, and the
// lock, once released, is not granted to the caller that left.
func TestCallerDeadlineEndsWait(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	holder, err := c.TryAcquire(ctx(t), "tour", opts)
	if err != nil {
		t.Fatal(err)
	}
	nc := bustest.Connect(t, s.URL())
	deadline := time.Now().Add(300 * time.Millisecond)
	start := time.Now()
	_, err = bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx(t), nc, lock.SubjectAcquire,
		lock.AcquireRequest{Name: "tour", TTLms: 30000, WaitMs: 60000, Deadline: &bus.Time{Time: deadline}})
	if !errors.Is(err, lock.ErrWaitTimeout) {
		t.Fatalf("acquire past its caller's deadline = %v, want ErrWaitTimeout", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("answered after %v: the wait of 60 s was not cut at the deadline", took)
	}
	if info, err := c.Inspect(ctx(t), "tour"); err != nil || len(info.Waiters) != 0 {
		t.Fatalf("the waiter whose caller left is still in line: %+v, %v", info, err)
	}
	// Arrived just past its deadline (within the clocks' skew): answered at
	// once, as a try, not after wait_ms.
	start = time.Now()
	_, err = bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx(t), nc, lock.SubjectAcquire,
		lock.AcquireRequest{Name: "tour", TTLms: 30000, WaitMs: 60000, Deadline: &bus.Time{Time: time.Now().Add(-lock.DeadlineSkew / 2)}})
	if !errors.Is(err, lock.ErrWaitTimeout) || time.Since(start) > 20*time.Second {
		t.Fatalf("acquire just past its deadline = %v after %v, want ErrWaitTimeout at once", err, time.Since(start))
	}
	if err := holder.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	next, err := c.TryAcquire(ctx(t), "tour", opts)
	if err != nil {
		t.Fatalf("after the release, the lock is not free: %v", err)
	}
	if err := next.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

// A lease granted after a wait in line gets its whole TTL from the grant,
// not from the waiter's last write in line (written again at the grant
// when that was more than 1% of the TTL before).
func TestGrantGetsFullTTL(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	c := client(t, s.URL())
	holder, err := c.TryAcquire(ctx(t), "full", opts)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 30 * time.Second
	got := make(chan *lock.Lease, 1)
	go func() {
		l, err := client(t, s.URL()).Acquire(ctx(t), "full", lock.Options{TTL: ttl, Owner: "waiter"})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	waitWaiters(t, c, "full", 1)
	time.Sleep(time.Second) // time spent in line (over 1% of the TTL): what the lease must not lose
	released := time.Now()
	if err := holder.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	l := <-got
	if l == nil {
		t.FailNow()
	}
	defer l.Release(ctx(t))
	// Instants travel to the millisecond: allow for the truncation.
	if min := released.Add(ttl - 2*time.Millisecond); l.ExpiresAt().Before(min) {
		t.Fatalf("lease expires %v after the grant, want the whole %v", l.ExpiresAt().Sub(released), ttl)
	}
	info, err := c.Inspect(ctx(t), "full")
	if err != nil || len(info.Holders) != 1 {
		t.Fatalf("inspect = %+v, %v", info, err)
	}
	// The server's own expiry (its timestamp of the key's last write plus
	// the TTL, to the millisecond).
	if min := released.Add(ttl - 2*time.Millisecond); info.Holders[0].ExpiresAt.Before(min) {
		t.Fatalf("key expires %v after the grant on the server, want %v", info.Holders[0].ExpiresAt.Sub(released), ttl)
	}
}

// The expired event of a holder that died comes before the acquired event
// of the waiter that gets the lock after it, with one instance and with two
// (where the instance that tells the expiry may not be the one that
// grants), there with the expired events held back a moment so that an
// order left to chance shows.
func TestExpiredBeforeAcquired(t *testing.T) {
	for _, instances := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d instances", instances), func(t *testing.T) { expiredBeforeAcquired(t, instances) })
	}
}

func expiredBeforeAcquired(t *testing.T, instances int) {
	s := bustest.RunServer(t)
	if instances == 1 {
		serve(t, s.URL())
	}
	for range instances - 1 {
		for range 2 {
			srv, err := lock.New(bustest.Connect(t, s.URL()), lock.Config{})
			if err != nil {
				t.Fatal(err)
			}
			lock.BeforeExpired(srv, func() { time.Sleep(200 * time.Millisecond) }) // a slow emitter, not a wait for an event
			if err := srv.Start(ctx(t)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { stopService(t, srv) })
		}
	}
	type event struct {
		Type string `json:"type"`
		Data struct {
			Name  string `json:"name"`
			Token uint64 `json:"token"`
		} `json:"data"`
	}
	var mu sync.Mutex
	var events []event
	enc := bustest.Connect(t, s.URL())
	sub, err := enc.Subscribe(bus.EventSubject("lock", "*"), func(m *nats.Msg) {
		var e event
		if json.Unmarshal(m.Data, &e) == nil {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}

	const n = 6 // names at once, so that an order left to chance shows
	type pair struct{ dead, next uint64 }
	pairs := make([]pair, n)
	var wg sync.WaitGroup
	for i := range n {
		name := fmt.Sprintf("order.%d", i)
		doomed := bustest.Connect(t, s.URL())
		l, err := lock.NewClient(doomed).TryAcquire(ctx(t), name, lock.Options{TTL: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		pairs[i].dead = l.Token()
		wg.Go(func() {
			next, err := client(t, s.URL()).Acquire(ctx(t), name, opts)
			if err != nil {
				t.Error(err)
				return
			}
			pairs[i].next = next.Token()
			_ = next.Release(ctx(t))
		})
		doomed.Close() // no release, no renewal: the lease expires
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for i, p := range pairs {
		name := fmt.Sprintf("order.%d", i)
		for {
			mu.Lock()
			expired, acquired := -1, -1
			for j, e := range events {
				switch {
				case e.Data.Name == name && e.Type == "lock.expired" && e.Data.Token == p.dead:
					expired = j
				case e.Data.Name == name && e.Type == "lock.acquired" && e.Data.Token == p.next:
					acquired = j
				}
			}
			mu.Unlock()
			if expired >= 0 && acquired >= 0 {
				if expired > acquired {
					t.Errorf("%s: lock.acquired of token %d before lock.expired of token %d", name, p.next, p.dead)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: events expired #%d, acquired #%d (of %d)", name, expired, acquired, len(events))
			}
			time.Sleep(10 * time.Millisecond) // polling the events received
		}
	}
}

// A name has one limit while it has holders or waiters: a request with
// another limit is refused with limit_mismatch and changes nothing (before,
// a mutex became a semaphore of 5 when a second caller asked for one).
func TestLimitMismatch(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	c := lock.NewClient(nc)
	ask := func(body string) error {
		_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: lock.SubjectAcquire, Data: []byte(body)})
		return err
	}
	if err := ask(`{"name":"m","ttl_ms":30000}`); err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{
		`{"name":"m","ttl_ms":30000,"limit":5}`,
		`{"name":"m","ttl_ms":30000,"limit":5,"wait_ms":1000}`,
	} {
		err := ask(body)
		if !errors.Is(err, lock.ErrLimitMismatch) || bus.AsError(err).Status != 409 {
			t.Fatalf("%s on a held mutex: %v, want 409 limit_mismatch", body, err)
		}
	}
	info, err := c.Inspect(ctx(t), "m")
	if err != nil || len(info.Holders) != 1 || len(info.Waiters) != 0 || info.Limit != 1 {
		t.Fatalf("the refused requests changed the lock: %+v, %v", info, err)
	}
	if _, err := c.TryAcquire(ctx(t), "m", lock.Options{TTL: 5 * time.Second, Limit: 5}); !errors.Is(err, lock.ErrLimitMismatch) {
		t.Fatalf("SDK: %v, want ErrLimitMismatch", err)
	}
	// The other way round: a semaphore does not take a mutex's request.
	sem, err := c.TryAcquire(ctx(t), "s", lock.Options{TTL: 5 * time.Second, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.TryAcquire(ctx(t), "s", lock.Options{TTL: 5 * time.Second}); !errors.Is(err, lock.ErrLimitMismatch) {
		t.Fatalf("mutex request on a semaphore: %v, want ErrLimitMismatch", err)
	}
	// Once free, the name takes any limit.
	if err := sem.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	l, err := c.TryAcquire(ctx(t), "s", lock.Options{TTL: 5 * time.Second})
	if err != nil {
		t.Fatalf("a free name refused a new limit: %v", err)
	}
	_ = l.Release(ctx(t))
}

// Two first requests of a name with different limits, at once: the first
// in line sets the limit, the other is refused, and the name is left with
// one holder and nobody waiting.
func TestLimitMismatchRace(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	serve(t, s.URL())
	c := client(t, s.URL())
	for i := range 10 {
		name := fmt.Sprintf("race.%d", i)
		errs := make([]error, 2)
		leases := make([]*lock.Lease, 2)
		var wg sync.WaitGroup
		for j, limit := range []int{1, 5} {
			cj := client(t, s.URL())
			wg.Go(func() {
				leases[j], errs[j] = cj.TryAcquire(ctx(t), name, lock.Options{TTL: 5 * time.Second, Limit: limit})
			})
		}
		wg.Wait()
		granted, mismatched := 0, 0
		for _, err := range errs {
			switch {
			case err == nil:
				granted++
			case errors.Is(err, lock.ErrLimitMismatch):
				mismatched++
			default:
				t.Fatalf("%s: %v", name, err)
			}
		}
		if granted != 1 || mismatched != 1 {
			t.Fatalf("%s: %d granted, %d refused with limit_mismatch (%v), want 1 and 1", name, granted, mismatched, errs)
		}
		info, err := c.Inspect(ctx(t), name)
		if err != nil || len(info.Holders) != 1 || len(info.Waiters) != 0 {
			t.Fatalf("%s: %+v, %v", name, info, err)
		}
		for _, l := range leases {
			if l != nil {
				_ = l.Release(ctx(t))
			}
		}
	}
}

// Stop waits for an expiry being told: it returns only once the expired
// event is out, so that the goroutine telling it does not outlive the
// server.
func TestStopAwaitsExpiry(t *testing.T) {
	s := bustest.RunServer(t)
	srv, err := lock.New(bustest.Connect(t, s.URL()), lock.Config{})
	if err != nil {
		t.Fatal(err)
	}
	telling, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	lock.BeforeExpired(srv, func() {
		once.Do(func() { close(telling) })
		<-release
	})
	if err := srv.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	watch := bustest.Connect(t, s.URL())
	expired := make(chan struct{}, 1)
	sub, err := watch.Subscribe(bus.EventSubject("lock", "expired"), func(*nats.Msg) { expired <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	doomed := bustest.Connect(t, s.URL())
	if _, err := lock.NewClient(doomed).TryAcquire(ctx(t), "stop.expiry", lock.Options{TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	doomed.Close() // no release, no renewal
	select {
	case <-telling:
	case <-ctx(t).Done():
		t.Fatal("the expiry was not told")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop(ctx(t)) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while an expiry was being told", err)
	case <-time.After(bustest.Scale(300 * time.Millisecond)):
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	select {
	case <-expired:
	case <-ctx(t).Done():
		t.Fatal("no expired event")
	}
}
