// Package load runs a closed-loop load (N workers making requests back to
// back) against a system under test and keeps every latency, the same way for
// every request/reply benchmark of bench/.
package load

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshkit/mesh/bench/internal/machine"
)

// A Target is one system under test. Call makes one request on behalf of
// worker i (0 <= i < concurrency) and returns when its reply has arrived.
type Target struct {
	Name string
	Call func(ctx context.Context, i int) error
	// PIDs are the processes taking part in the requests (client, server,
	// broker) whose CPU time the window measures (Result.CPU).
	PIDs []int
}

// A Result is what one cell of a table measured.
type Result struct {
	System   string
	Conc     int
	Ops      int             // successful requests started in the window
	Errs     int             // failed requests started in the window
	FirstErr error           // the first failure, to report
	Window   time.Duration   // the measured window
	Lat      []time.Duration // every successful request's latency, sorted
	Allocs   uint64          // heap allocations of the whole process in the window
	// AllRounds is the throughput of every round of the cell (Rounds).
	AllRounds []float64
	// CPU is the CPU time of each of the target's PIDs in the window, -1
	// where it could not be read.
	CPU []time.Duration
}

// Measure runs conc workers that call t back to back for warmup+dur and
// keeps the requests that started after the warm-up.
func Measure(ctx context.Context, t Target, conc int, warmup, dur time.Duration) Result {
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
				err := t.Call(ctx, i)
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
	cpu := make([]time.Duration, len(t.PIDs))
	time.Sleep(time.Until(from))
	runtime.ReadMemStats(&m0)
	for i, pid := range t.PIDs {
		cpu[i] = procCPU(pid, 0)
	}
	time.Sleep(time.Until(end))
	runtime.ReadMemStats(&m1)
	for i, pid := range t.PIDs {
		cpu[i] = procCPU(pid, cpu[i])
	}
	wg.Wait()

	r := Result{System: t.Name, Conc: conc, Window: dur, Allocs: m1.Mallocs - m0.Mallocs, CPU: cpu}
	for i := range conc {
		r.Lat = append(r.Lat, lats[i]...)
		r.Errs += errs[i]
		if r.FirstErr == nil {
			r.FirstErr = firstErrs[i]
		}
	}
	r.Ops = len(r.Lat)
	slices.Sort(r.Lat)
	return r
}

// procCPU returns pid's CPU time since the reading before (-1 when either
// failed).
func procCPU(pid int, before time.Duration) time.Duration {
	d, err := machine.ProcCPU(pid)
	if err != nil || before < 0 {
		return -1
	}
	return d - before
}

// CPUPerOp is the CPU time of the target's process i (PIDs) per successful
// request, or -1 when it is unknown.
func (r Result) CPUPerOp(i int) time.Duration {
	if i >= len(r.CPU) || r.CPU[i] < 0 || r.Ops == 0 {
		return -1
	}
	return r.CPU[i] / time.Duration(r.Ops)
}

// OpsPerSec is the throughput of the successful requests.
func (r Result) OpsPerSec() float64 { return float64(r.Ops) / r.Window.Seconds() }

// Quantile returns the latency below which a fraction q of the requests
// finished (nearest rank).
func (r Result) Quantile(q float64) time.Duration {
	if len(r.Lat) == 0 {
		return 0
	}
	k := int(math.Ceil(q*float64(len(r.Lat)))) - 1
	return r.Lat[max(0, min(k, len(r.Lat)-1))]
}

// AllocsPerOp is the process's heap allocations per request, both sides of
// the request that live in this process included.
func (r Result) AllocsPerOp() float64 {
	if r.Ops == 0 {
		return 0
	}
	return float64(r.Allocs) / float64(r.Ops)
}

// Rounds measures every target at every concurrency rounds times,
// interleaved (at each concurrency, round 1 of every target, then round
// 2...), so that a drift of the machine touches every system alike. Per cell
// it returns the round of median throughput, in the order concurrency then
// target, with the throughput of every round in AllRounds. each is told of
// every round measured.
func Rounds(ctx context.Context, targets []Target, concs []int, rounds int, warmup, dur time.Duration, each func(Result)) []Result {
	var out []Result
	for _, c := range concs {
		cells := make([][]Result, len(targets))
		for range max(rounds, 1) {
			for i, t := range targets {
				r := Measure(ctx, t, c, warmup, dur)
				if each != nil {
					each(r)
				}
				cells[i] = append(cells[i], r)
			}
		}
		for _, rs := range cells {
			slices.SortFunc(rs, func(a, b Result) int { return cmp.Compare(a.OpsPerSec(), b.OpsPerSec()) })
			med := rs[(len(rs)-1)/2]
			for _, r := range rs {
				med.AllRounds = append(med.AllRounds, r.OpsPerSec())
				if r.Errs > 0 && med.Errs == 0 { // a failure in any round shows
					med.Errs, med.FirstErr = r.Errs, r.FirstErr
				}
			}
			out = append(out, med)
		}
	}
	return out
}

// Spread renders the throughput of every round as min–max.
func (r Result) Spread() string {
	if len(r.AllRounds) < 2 {
		return fmt.Sprintf("%.0f", r.OpsPerSec())
	}
	return fmt.Sprintf("%.0f–%.0f", slices.Min(r.AllRounds), slices.Max(r.AllRounds))
}

// ParseLevels reads a comma-separated list of concurrency levels ("1,16,64").
func ParseLevels(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}
