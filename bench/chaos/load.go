package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
)

type loadConfig struct {
	URLs, Password string
	Duration       time.Duration
	Faults         string
	Settle         time.Duration
	LockTTL        time.Duration
}

var kinds = []string{"cache.set", "cache.get", "lock", "task.submit"}

// op is one operation's outcome, at its end.
type op struct {
	at   time.Time
	kind int
	ok   bool
}

type recorder struct {
	mu   sync.Mutex
	ops  []op
	msgs [4]map[string]int // error messages by kind
}

func (r *recorder) add(kind int, err error) {
	r.mu.Lock()
	r.ops = append(r.ops, op{time.Now(), kind, err == nil})
	if err != nil {
		if r.msgs[kind] == nil {
			r.msgs[kind] = map[string]int{}
		}
		r.msgs[kind][err.Error()]++
	}
	r.mu.Unlock()
}

// cacheCheck tracks, per key, the newest acknowledged value (keys are split
// between writers, so a key's writes are sequential).
type cacheCheck struct {
	mu        sync.Mutex
	acked     map[string]uint64
	lostReads int // a get found nothing where a set had been acknowledged
}

type lockCheck struct {
	inside     atomic.Int32
	mu         sync.Mutex
	lastToken  uint64
	grants     int
	overlaps   int
	regressed  int
	leasesLost int
	relErrs    int
}

func runLoad(ctx context.Context, cfg loadConfig) error {
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	connect := func(name string) (*bus.Options, error) {
		return &bus.Options{URL: cfg.URLs, Name: name, User: "client", Password: cfg.Password, InboxPrefix: clientInbox, Logger: log}, nil
	}
	o, _ := connect("chaos load")
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	nc, err := bus.Connect(cctx, *o)
	cancel()
	if err != nil {
		return err
	}
	defer nc.Close()
	cc, err := cache.NewClient(nc, cache.ClientConfig{AttemptTimeout: 500 * time.Millisecond, Logger: log})
	if err != nil {
		return err
	}
	if err := cc.Start(ctx); err != nil {
		return err
	}
	defer cc.Close(context.Background())
	lc := lock.NewClient(nc)
	sc := scheduler.NewClient(nc)

	rec := &recorder{}
	start := time.Now()
	loadCtx, stopLoad := context.WithTimeout(ctx, cfg.Duration)
	defer stopLoad()
	var wg sync.WaitGroup

	// Cache: two writers over their own halves of 200 keys, two readers.
	const keys, writers = 200, 2
	chk := &cacheCheck{acked: map[string]uint64{}}
	var seq atomic.Uint64
	for w := range writers {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				k := fmt.Sprintf("chaos:%d", rand.IntN(keys/writers)*writers+w)
				s := seq.Add(1)
				octx, cancel := context.WithTimeout(loadCtx, 2*time.Second)
				err := cc.Set(octx, k, []byte(strconv.FormatUint(s, 10)), 0)
				cancel()
				if loadCtx.Err() != nil {
					return
				}
				rec.add(0, err)
				if err == nil {
					chk.mu.Lock()
					chk.acked[k] = s
					chk.mu.Unlock()
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				k := fmt.Sprintf("chaos:%d", rand.IntN(keys))
				chk.mu.Lock()
				had := chk.acked[k] > 0
				chk.mu.Unlock()
				octx, cancel := context.WithTimeout(loadCtx, 2*time.Second)
				_, err := cc.Get(octx, k)
				cancel()
				if loadCtx.Err() != nil {
					return
				}
				if errors.Is(err, cache.ErrNotFound) {
					if had {
						chk.mu.Lock()
						chk.lostReads++
						chk.mu.Unlock()
					} else {
						err = nil
					}
				}
				rec.add(1, err)
				time.Sleep(10 * time.Millisecond)
			}
		})
	}

	// Locks: three contenders for one name; the critical section checks
	// that it is alone and that the fencing token only grows.
	lk := &lockCheck{}
	for i := range 3 {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				// Not bounded by the load's end: a wait cut short by it is no error.
				actx, cancel := context.WithTimeout(ctx, 5*time.Second)
				lease, err := lc.Acquire(actx, "chaos", lock.Options{TTL: cfg.LockTTL, Owner: fmt.Sprintf("chaos-%d", i)})
				cancel()
				if err != nil {
					rec.add(2, err)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if lk.inside.Add(1) != 1 {
					lk.mu.Lock()
					lk.overlaps++
					lk.mu.Unlock()
				}
				lk.mu.Lock()
				if lease.Token() <= lk.lastToken {
					lk.regressed++
				}
				lk.lastToken = max(lk.lastToken, lease.Token())
				lk.grants++
				lk.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				lost := false
				select {
				case <-lease.Done():
					lost = true
				default:
				}
				lk.inside.Add(-1)
				rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				rerr := lease.Release(rctx)
				cancel()
				lk.mu.Lock()
				if lost || lease.Err() != nil {
					lk.leasesLost++
				}
				if rerr != nil {
					lk.relErrs++
				}
				lk.mu.Unlock()
				rec.add(2, rerr)
			}
		})
	}

	// Tasks: 20 a second, each with a unique key so that a submission
	// retried after an error finds the task it may have made.
	run := nuid.Next()
	var tmu sync.Mutex
	var ids []string
	givenUp := 0
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			// One id for every attempt of a submission: a retry after an answer
			// lost at a fault finds the task the first attempt made.
			req := scheduler.SubmitRequest{ID: nuid.Next(), Queue: "chaos", Type: "echo", Payload: scheduler.Bytes(strconv.Itoa(n)), UniqueKey: run + "-" + strconv.Itoa(n)}
			var id string
			for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
				sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				got, err := sc.Submit(sctx, req)
				cancel()
				if dup, ok := scheduler.DuplicateID(err); ok {
					got, err = dup, nil
				}
				rec.add(3, err)
				if err == nil {
					id = got
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			tmu.Lock()
			if id == "" {
				givenUp++
			} else {
				ids = append(ids, id)
			}
			tmu.Unlock()
		}
	})
	wg.Wait()
	loadEnd := time.Now()

	// Every submitted task must finish.
	states := map[string]int{}
	pending := map[string]bool{}
	for _, id := range ids {
		pending[id] = true
	}
	settleStart := time.Now()
	for len(pending) > 0 && time.Since(settleStart) < cfg.Settle && ctx.Err() == nil {
		for id := range pending {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			info, err := sc.Status(sctx, id)
			cancel()
			if err == nil && scheduler.Finished(info.State) {
				states[info.State]++
				delete(pending, id)
			}
		}
		if len(pending) > 0 {
			time.Sleep(time.Second)
		}
	}
	settled := time.Since(settleStart)
	unfinished := map[string]int{}
	for id := range pending {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := sc.Status(sctx, id)
		cancel()
		if err != nil {
			unfinished["error: "+err.Error()]++
		} else {
			unfinished[info.State]++
		}
	}

	// Every acknowledged cache key must still be readable, with its newest
	// acknowledged value or a later one.
	var good, stale, missing, readErrs int
	chk.mu.Lock()
	acked := chk.acked
	chk.mu.Unlock()
	for k, s := range acked {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		v, err := cc.Get(gctx, k)
		cancel()
		switch {
		case errors.Is(err, cache.ErrNotFound):
			missing++
		case err != nil:
			readErrs++
		default:
			if got, _ := strconv.ParseUint(string(v), 10, 64); got >= s {
				good++
			} else {
				stale++
			}
		}
	}

	// The report.
	fmt.Printf("chaos report: load %s from %s, tasks settled in %s\n\n", loadEnd.Sub(start).Round(time.Second), start.UTC().Format(time.RFC3339), settled.Round(time.Second))
	rec.mu.Lock()
	ops := rec.ops
	rec.mu.Unlock()
	total := make([]int, len(kinds))
	errs := make([]int, len(kinds))
	for _, o := range ops {
		total[o.kind]++
		if !o.ok {
			errs[o.kind]++
		}
	}
	fmt.Println("operations (whole run):")
	for i, k := range kinds {
		fmt.Printf("  %-12s %6d ops  %5d errors (%.2f%%)\n", k, total[i], errs[i], pct(errs[i], total[i]))
		for msg, n := range rec.msgs[i] {
			fmt.Printf("      %5d x %s\n", n, msg)
		}
	}
	fmt.Printf("\nlock: %d grants; overlapping holders %d; token regressions %d; leases lost while held %d; failed releases %d; last token %d\n",
		lk.grants, lk.overlaps, lk.regressed, lk.leasesLost, lk.relErrs, lk.lastToken)
	fmt.Printf("tasks: %d submitted (%d submissions given up); finished: %v; not finished after %s: %v\n", len(ids), givenUp, states, cfg.Settle, unfinished)
	fmt.Printf("cache: %d keys acknowledged; readable with their newest value %d; stale %d; missing %d; read errors %d; reads during the load that missed an acknowledged key %d\n",
		len(acked), good, stale, missing, readErrs, chk.lostReads)

	verdict := lk.overlaps == 0 && lk.regressed == 0 && len(pending) == 0 && givenUp == 0 && stale == 0 && missing == 0 && readErrs == 0
	if cfg.Faults != "" {
		if err := faultReport(cfg.Faults, start, loadEnd, ops); err != nil {
			fmt.Println("faults:", err)
		}
	}
	if !verdict {
		return errors.New("a safety or liveness check failed (see the report)")
	}
	fmt.Println("\nverdict: mutual exclusion held, tokens grew, every task finished, every acknowledged key readable")
	return nil
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

type fault struct {
	name       string
	start, end time.Time
}

// faultReport prints, for each fault, the errors while it lasted and how
// long after its start the last error came (until the next fault began).
func faultReport(path string, start, loadEnd time.Time, ops []op) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	byName := map[string]*fault{}
	var order []*fault
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 {
			continue
		}
		ms, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			continue
		}
		t := time.UnixMilli(ms)
		fl := byName[fs[2]]
		if fl == nil {
			fl = &fault{name: fs[2]}
			byName[fs[2]] = fl
			order = append(order, fl)
		}
		if fs[1] == "start" {
			fl.start = t
		} else {
			fl.end = t
		}
	}
	sort.Slice(order, func(i, j int) bool { return order[i].start.Before(order[j].start) })
	fmt.Println("\nfaults (times from the start of the load; errors while the fault lasted; the last error after its start, before the next fault):")
	for i, fl := range order {
		if fl.end.IsZero() {
			fl.end = loadEnd
		}
		next := loadEnd
		if i+1 < len(order) {
			next = order[i+1].start
		}
		during := make([]int, len(kinds))
		errs := make([]int, len(kinds))
		var last time.Time
		for _, o := range ops {
			if !o.at.Before(fl.start) && !o.at.After(fl.end) {
				during[o.kind]++
				if !o.ok {
					errs[o.kind]++
				}
			}
			if !o.ok && !o.at.Before(fl.start) && o.at.Before(next) && o.at.After(last) {
				last = o.at
			}
		}
		fmt.Printf("  %-22s %5.1fs..%5.1fs ", fl.name, fl.start.Sub(start).Seconds(), fl.end.Sub(start).Seconds())
		var parts []string
		for k := range kinds {
			parts = append(parts, fmt.Sprintf("%s %d/%d", kinds[k], errs[k], during[k]))
		}
		fmt.Print(strings.Join(parts, ", "))
		if last.IsZero() {
			fmt.Println("; no error")
		} else {
			fmt.Printf("; last error %.1fs after the start\n", last.Sub(fl.start).Seconds())
		}
	}
	return nil
}
