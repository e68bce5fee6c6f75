package lock_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// TestHolderRacesOnCluster: on a 3-node cluster, the bucket on 3 replicas,
// two instances, holders that waited in line renew and release their lease
// the moment it is granted, while others try the held lock. Each of those
// requests races a write the service itself made to the holder's key: the
// key written again at the grant (the lease starts then), and the
// refusals of the tries, whose purges check the holder's key. On a
// clustered stream a compare-and-set on a key with a write in flight fails
// (JetStream error 10164), and a stale revision fails with 10071. None of
// these races may reach a client as a server error (5xx): every holder's
// renewal and release succeeds, every try is granted or refused.
func TestHolderRacesOnCluster(t *testing.T) {
	c := bustest.RunCluster(t, 3)
	cfg := lock.Config{Replicas: 3}
	serveWith(t, c.URL(), cfg)
	serveWith(t, c.URL(), cfg)

	const (
		name    = "race"
		holders = 8
		triers  = 2
		rounds  = 20
	)
	// A short TTL, so that the lease of a waiter that waited over 1% of it
	// (30 ms) is started again at its grant: most of them, as each waits
	// for the others' hand-offs.
	ttl := bustest.Scale(3 * time.Second)
	long := bustest.Scale(20 * time.Second) // no request takes this long

	var (
		mu       sync.Mutex
		failures []string // requests not answered as they must be
		fives    int      // of them, answered with a server error
		counts   = map[string]int{}
	)
	count := func(what string) {
		mu.Lock()
		counts[what]++
		mu.Unlock()
	}
	fail := func(err error, format string, args ...any) {
		var e *bus.Error
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...)+": "+err.Error())
		if errors.As(err, &e) && e.Status >= 500 {
			fives++
		}
		mu.Unlock()
	}

	var done atomic.Bool
	var holding sync.WaitGroup
	for i := range holders {
		locks := reach(t, c.URL()) // a node the instances are not connected to learns of them a moment later
		holding.Go(func() {
			for round := range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), long)
				l, err := locks.Acquire(ctx, name, lock.Options{TTL: ttl, Owner: fmt.Sprintf("holder-%d", i)})
				if err != nil {
					cancel()
					fail(err, "holder %d, round %d: acquire", i, round)
					count("acquire failed")
					continue
				}
				count("granted")
				if round%2 == 1 {
					if _, err := locks.Renew(ctx, name, l.Token(), ttl); err != nil {
						fail(err, "holder %d, round %d: renew of token %d", i, round, l.Token())
						count("renew failed")
					} else {
						count("renewed")
					}
				}
				if err := l.Release(ctx); err != nil {
					fail(err, "holder %d, round %d: release of token %d", i, round, l.Token())
					count("release failed")
				} else {
					count("released")
				}
				cancel()
			}
		})
	}
	var trying sync.WaitGroup
	for i := range triers {
		locks := reach(t, c.URL())
		trying.Go(func() {
			for !done.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), long)
				l, err := locks.TryAcquire(ctx, name, lock.Options{TTL: ttl, Owner: fmt.Sprintf("trier-%d", i)})
				switch {
				case errors.Is(err, lock.ErrLocked):
					count("refused")
				case err != nil:
					fail(err, "trier %d: try", i)
					count("try failed")
				default:
					count("tried and granted")
					if err := l.Release(ctx); err != nil {
						fail(err, "trier %d: release of token %d", i, l.Token())
						count("release failed")
					}
				}
				cancel()
				time.Sleep(2 * time.Millisecond) // pacing: tries refused back to back would starve the rest
			}
		})
	}
	holding.Wait()
	done.Store(true)
	trying.Wait()

	t.Logf("counts: %v", counts)
	if counts["refused"] == 0 {
		t.Errorf("no try was refused: the holders' requests raced no refusal")
	}
	if len(failures) > 0 {
		slices.Sort(failures)
		t.Errorf("%d requests failed (%d of them with a server error), e.g.:\n%s", len(failures), fives, strings.Join(failures[:min(len(failures), 10)], "\n"))
	}
}
