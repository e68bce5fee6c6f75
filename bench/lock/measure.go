package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// A scenario is one row group of the table, run for every system.
type scenario struct {
	id        string // as -scenarios names it
	title     string // as the table names it
	workers   int
	contended bool // workers wait for one name; else each cycle is a try
	newName   bool // every cycle on a name never used before
}

func scenarios(parallel, contenders int) []scenario {
	return []scenario{
		{id: "serial", title: "serial, one name", workers: 1},
		{id: "serial-new", title: "serial, new name each cycle", workers: 1, newName: true},
		{id: "parallel", title: fmt.Sprintf("%d names in parallel", parallel), workers: parallel},
		{id: "contended", title: fmt.Sprintf("%d contenders, one name", contenders), workers: contenders, contended: true},
	}
}

// A cell is what one system measured in one scenario.
type cell struct {
	sc       scenario
	system   string
	round    int
	ops      int             // cycles (or grants, contended) in the window
	window   time.Duration   // the measured window
	lat      []time.Duration // cycle latency; contended: handoff latency; sorted
	acq, rel []time.Duration // cycles only: the acquire and the release call of each cycle; sorted
	wait     []time.Duration // contended: how long each acquire waited; sorted
	errs     int             // failed calls in the window
	firstErr error
	// contended only
	overtakes  int             // grants overtaken: an earlier grant went to a call that started after theirs
	maxLead    time.Duration   // the largest head start an overtaken call had
	violations int             // grants while another worker held the lock
	inversions int             // grants whose token is lower than an earlier grant's
	sniffed    int             // mesh with -sniff: grants in the window matched to the order their request reached nats-server, or -1
	arrOver    int             // of those, overtaken in that order
	arrLead    int             // the largest number of requests by which an overtaken one had arrived first
	leads      []time.Duration // head start of every overtaken grant; sorted
	attempts   int64           // KV floor: Create calls made in the window
	// resource use over the window
	before, after sample
}

func (c *cell) opsPerSec() float64 { return float64(c.ops) / c.window.Seconds() }

// quantile returns the value below which a fraction q of ds lies (nearest
// rank); ds is sorted.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	k := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[max(0, min(k, len(ds)-1))]
}

// keyOf names the lock worker w uses in its n-th cycle of cell id.
func (sc scenario) keyOf(id string, w, n int) string {
	switch {
	case sc.contended:
		return "bench." + id + ".hot"
	case sc.newName:
		return fmt.Sprintf("bench.%s.w%d.n%d", id, w, n)
	default:
		return fmt.Sprintf("bench.%s.w%d", id, w)
	}
}

// timing is the window of one cell and what to sample at its edges.
type timing struct {
	warmup, dur, opTimeout time.Duration
	probe                  *probe
	sniffer                *sniffer // or nil
}

// window sleeps through the warm-up and the window, sampling at both ends.
func (t timing) window(c *cell, from, end time.Time) {
	time.Sleep(time.Until(from))
	c.before = t.probe.sample()
	time.Sleep(time.Until(end))
	c.after = t.probe.sample()
}

// runCycles: each worker takes and gives back its lock back to back (try,
// then release); one cycle's latency is the two calls together. Cycles
// that start in the window count.
func runCycles(ctx context.Context, sys system, sc scenario, id string, t timing) cell {
	from := time.Now().Add(t.warmup)
	end := from.Add(t.dur)
	lats := make([][]time.Duration, sc.workers)
	acqs := make([][]time.Duration, sc.workers)
	errs := make([]int, sc.workers)
	firstErrs := make([]error, sc.workers)
	var wg sync.WaitGroup
	for w := range sc.workers {
		wg.Go(func() {
			l := make([]time.Duration, 0, 8192)
			la := make([]time.Duration, 0, 8192)
			for n := 0; ; n++ {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				octx, cancel := context.WithTimeout(ctx, t.opTimeout)
				rel, err := sys.try(octx, w, sc.keyOf(id, w, n))
				da := time.Since(t0)
				if err == nil {
					err = rel(octx)
				}
				cancel()
				d := time.Since(t0)
				switch {
				case err != nil:
					if t0.Before(from) {
						continue
					}
					if errs[w] == 0 {
						firstErrs[w] = err
					}
					errs[w]++
					time.Sleep(10 * time.Millisecond) // no hot loop on a broken system
				case !t0.Before(from):
					l = append(l, d)
					la = append(la, da)
				}
			}
			lats[w] = l
			acqs[w] = la
		})
	}
	c := cell{sc: sc, system: sys.name(), window: t.dur}
	t.window(&c, from, end)
	wg.Wait()
	for w := range sc.workers {
		c.lat = append(c.lat, lats[w]...)
		c.acq = append(c.acq, acqs[w]...)
		for k, d := range lats[w] {
			c.rel = append(c.rel, d-acqs[w][k])
		}
		c.errs += errs[w]
		if c.firstErr == nil {
			c.firstErr = firstErrs[w]
		}
	}
	c.ops = len(c.lat)
	slices.Sort(c.lat)
	slices.Sort(c.acq)
	slices.Sort(c.rel)
	return c
}

// A grant is one acquisition of the contended lock.
type grant struct {
	seq      uint64 // order of the grants (taken while holding the lock)
	worker   int
	arrival  int64     // -sniff: the place of the acquire request in the order nats-server relayed them, or -1
	token    uint64    // the system's place in line of the grant
	asked    time.Time // the acquire call started
	granted  time.Time // the acquire call returned
	released time.Time // the release call started
}

// runContended: every worker loops on one name: acquire (waiting), hold
// for nothing, release. Grants that return in the window count.
func runContended(ctx context.Context, sys system, sc scenario, id string, t timing) cell {
	from := time.Now().Add(t.warmup)
	end := from.Add(t.dur)
	key := sc.keyOf(id, 0, 0)
	var (
		seq        atomic.Uint64
		holders    atomic.Int32
		violations atomic.Int32
		wg         sync.WaitGroup
		mu         sync.Mutex
		all        []grant
		errs       int
		firstErr   error
	)
	attempts0 := int64(0)
	kv, isKV := sys.(*kvSystem)
	for w := range sc.workers {
		wg.Go(func() {
			gs := make([]grant, 0, 8192)
			var nerr int
			var ferr error
			for {
				asked := time.Now()
				if !asked.Before(end) {
					break
				}
				octx, cancel := context.WithTimeout(ctx, t.opTimeout)
				rel, token, err := sys.wait(octx, w, key)
				granted := time.Now()
				if err != nil {
					cancel()
					if !asked.Before(from) || granted.After(from) {
						if nerr == 0 {
							ferr = err
						}
						nerr++
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if holders.Add(1) != 1 {
					violations.Add(1)
				}
				g := grant{seq: seq.Add(1), worker: w, arrival: -1, token: token, asked: asked, granted: granted}
				holders.Add(-1)
				g.released = time.Now()
				err = rel(octx)
				cancel()
				gs = append(gs, g)
				if err != nil && !granted.Before(from) && granted.Before(end) {
					if nerr == 0 {
						ferr = fmt.Errorf("release: %w", err)
					}
					nerr++
				}
			}
			mu.Lock()
			all = append(all, gs...)
			errs += nerr
			if firstErr == nil {
				firstErr = ferr
			}
			mu.Unlock()
		})
	}
	c := cell{sc: sc, system: sys.name(), window: t.dur}
	time.Sleep(time.Until(from))
	if isKV {
		attempts0 = kv.attempts.Load()
	}
	c.before = t.probe.sample()
	time.Sleep(time.Until(end))
	c.after = t.probe.sample()
	if isKV {
		c.attempts = kv.attempts.Load() - attempts0
	}
	wg.Wait()
	c.errs, c.firstErr = errs, firstErr
	c.violations = int(violations.Load())
	c.sniffed = -1
	if _, isMesh := sys.(*meshSystem); isMesh && t.sniffer != nil && errs == 0 && t.sniffer.match(key, all) {
		c.sniffed = 0 // counted by analyze
	}
	analyze(&c, all, from, end)
	return c
}

// analyze derives the contended figures from every grant of the run.
//
//   - handoff latency of grant k: from the release call of grant k-1 starting
//     to the acquire of grant k returning (both in the window);
//   - wait: from an acquire call starting to its return;
//   - overtake: grant k (in the window) is overtaken when an earlier grant
//     (in grant order, warm-up included) went to an acquire call that
//     started after k's had started;
//   - token inversion: grant k (in the window) has a lower token (place in
//     the system's own line) than an earlier grant: the system did not
//     serve its line in order.
func analyze(c *cell, all []grant, from, end time.Time) {
	slices.SortFunc(all, func(a, b grant) int { return cmp.Compare(a.seq, b.seq) })
	in := func(g grant) bool { return !g.granted.Before(from) && g.granted.Before(end) }
	var latest time.Time // the latest ask among the grants so far
	var top uint64       // the highest token among the grants so far
	lastArrival := int64(-1)
	for k, g := range all {
		if in(g) {
			c.ops++
			c.wait = append(c.wait, g.granted.Sub(g.asked))
			if k > 0 && in(all[k-1]) && all[k-1].seq+1 == g.seq {
				c.lat = append(c.lat, g.granted.Sub(all[k-1].released))
			}
			if latest.After(g.asked) {
				c.overtakes++
				c.maxLead = max(c.maxLead, latest.Sub(g.asked))
				c.leads = append(c.leads, latest.Sub(g.asked))
			}
			if g.arrival >= 0 {
				c.sniffed++
			}
			if g.arrival >= 0 && lastArrival > g.arrival {
				c.arrOver++
				c.arrLead = max(c.arrLead, int(lastArrival-g.arrival))
			}
			if g.token < top {
				c.inversions++
			}
		}
		top = max(top, g.token)
		if g.asked.After(latest) {
			latest = g.asked
		}
		lastArrival = max(lastArrival, g.arrival)
	}
	slices.Sort(c.lat)
	slices.Sort(c.wait)
	slices.Sort(c.leads)
}

// errNoOps: a cell completed nothing.
var errNoOps = errors.New("nothing completed in the window")
