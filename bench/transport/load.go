package main

import (
	"context"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"
)

// A target is one system under test. call makes one request on behalf of
// worker i (0 <= i < concurrency) and returns when its reply has arrived.
type target struct {
	name string
	call func(ctx context.Context, i int) error
}

// A result is what one cell of the table measured.
type result struct {
	system   string
	conc     int
	ops      int             // successful requests started in the window
	errs     int             // failed requests started in the window
	firstErr error           // the first failure, to report
	window   time.Duration   // the measured window
	lat      []time.Duration // every successful request's latency, sorted
	allocs   uint64          // heap allocations of the whole process in the window
}

// measure runs conc workers that call t back to back for warmup+dur and
// keeps the requests that started after the warm-up.
func measure(ctx context.Context, t target, conc int, warmup, dur time.Duration) result {
	from := time.Now().Add(warmup)
	end := from.Add(dur)
	lats := make([][]time.Duration, conc)
	errs := make([]int, conc)
	firstErrs := make([]error, conc)
	var wg sync.WaitGroup
	for i := range conc {
		wg.Go(func() {
			l := make([]time.Duration, 0, 4096)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				err := t.call(ctx, i)
				d := time.Since(t0)
				switch {
				case t0.Before(from):
				case err != nil:
					if errs[i] == 0 {
						firstErrs[i] = err
					}
					errs[i]++
				default:
					l = append(l, d)
				}
			}
			lats[i] = l
		})
	}

	var m0, m1 runtime.MemStats
	time.Sleep(time.Until(from))
	runtime.ReadMemStats(&m0)
	time.Sleep(time.Until(end))
	runtime.ReadMemStats(&m1)
	wg.Wait()

	r := result{system: t.name, conc: conc, window: dur, allocs: m1.Mallocs - m0.Mallocs}
	for i := range conc {
		r.lat = append(r.lat, lats[i]...)
		r.errs += errs[i]
		if r.firstErr == nil {
			r.firstErr = firstErrs[i]
		}
	}
	r.ops = len(r.lat)
	slices.Sort(r.lat)
	return r
}

// opsPerSec is the throughput of the successful requests.
func (r result) opsPerSec() float64 { return float64(r.ops) / r.window.Seconds() }

// quantile returns the latency below which a fraction q of the requests
// finished (nearest rank).
func (r result) quantile(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	k := int(math.Ceil(q*float64(len(r.lat)))) - 1
	return r.lat[max(0, min(k, len(r.lat)-1))]
}

// allocsPerOp is the process's heap allocations per request, both sides of
// the request that live in this process included.
func (r result) allocsPerOp() float64 {
	if r.ops == 0 {
		return 0
	}
	return float64(r.allocs) / float64(r.ops)
}
