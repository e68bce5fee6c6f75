package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/bench/internal/machine"
	"github.com/meshkit/mesh/services/scheduler"
)

// Soak mode (-soak DURATION): the mesh scheduler of the table's mesh row
// (its service in this process) runs for DURATION at a steady rate of SDK
// submits, its worker setting a result of -soak-result-bytes on every task
// and the history bounded by -soak-history-max-bytes, small enough that the
// oldest records are evicted during the run. Every -soak-every it prints a
// row of figures; at the end, verdicts and the rate the bounds sustain for a
// whole retention (24 h).

// soakConfig is the soak's part of the flags.
type soakConfig struct {
	duration        time.Duration
	rate            float64 // tasks/s; zero: half the drain measured by a probe
	probe           int     // tasks of the probe drain
	resultBytes     int
	historyMaxBytes int64
	every           time.Duration
	check           int     // the last tasks whose records are read at the end
	rssTolerance    float64 // % of RSS growth after warm-up still called flat
	direct          bool
}

// defaultHistoryMaxBytes is the scheduler's default history bound.
const defaultHistoryMaxBytes = 1 << 30

// retention is how long the scheduler keeps a finished task's record, at
// most: the span the sustainable rate is for.
const retention = 24 * time.Hour

// historyBound is the scheduler's configuration with its history bounded
// by maxBytes.
func historyBound(maxBytes int64) scheduler.Config {
	return scheduler.Config{HistoryMaxBytes: maxBytes}
}

// sample is one row of the soak's series.
type sample struct {
	elapsed                time.Duration
	submitted, refused     int64
	succeeded              int64
	running                int   // the queue's tasks delivered and not acknowledged
	depth                  int64 // the queue's tasks not delivered yet
	natsRSS, meshRSS, heap uint64
	history                storeFigures
}

// storeFigures are the figures of the store of finished tasks.
type storeFigures struct {
	bytes, records int64
	oldest         time.Time // the time of its first record
}

// storeOf reads the figures of the store of finished tasks, the history
// stream.
func (m *meshSystem) storeOf(ctx context.Context) (storeFigures, error) {
	js, err := jetstream.New(m.conns[0])
	if err != nil {
		return storeFigures{}, err
	}
	st, err := js.Stream(ctx, scheduler.HistoryStream)
	if err != nil {
		return storeFigures{}, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return storeFigures{}, err
	}
	return storeFigures{bytes: int64(info.State.Bytes), records: int64(info.State.Msgs), oldest: info.State.FirstTime}, nil
}

// queue reads queue's figures from the queues reply (zero when the queue
// has no consumer yet).
func (m *meshSystem) queue(ctx context.Context, queue string) (scheduler.QueueInfo, error) {
	qs, err := m.client.Queues(ctx)
	for _, q := range qs {
		if q.Name == queue {
			return q, nil
		}
	}
	return scheduler.QueueInfo{}, err
}

// soak runs soak mode and writes its report to w.
func soak(ctx context.Context, cfg config, w io.Writer) error {
	sc := cfg.soak
	m, err := newMesh(ctx, cfg.natsURL, historyBound(sc.historyMaxBytes), sc.direct)
	if err != nil {
		return err
	}
	defer m.close()
	m.result = bytes.Repeat([]byte("r"), sc.resultBytes)
	if sc.rate == 0 {
		drain, err := probeDrain(ctx, cfg, m)
		if err != nil {
			return fmt.Errorf("probe drain: %w", err)
		}
		sc.rate = drain / 2
		fmt.Fprintf(os.Stderr, "bench: probe drain of %d tasks: %.0f tasks/s; soak at %.0f tasks/s\n", sc.probe, drain, sc.rate)
	}

	submitter := "Client.Submit"
	if sc.direct {
		submitter = "Client.Submit with WithDirect"
	}
	fmt.Fprintf(w, "# Task scheduler soak: %s at %.0f tasks/s\n\n", sc.duration, sc.rate)
	fmt.Fprintf(w, "machine: %s, %d CPUs, %s", machine.CPUModel(), runtime.NumCPU(), runtime.Version())
	if cfg.source != "" {
		fmt.Fprintf(w, ", mesh %s", cfg.source)
	}
	fmt.Fprintf(w, "\nload average at the start: %s\n", loadAverage())
	fmt.Fprintf(w, "submits: %.0f tasks/s (%s, from %d producers); %d workers; results of %d B; history bound %s (default %s)",
		sc.rate, submitter, cfg.producers, cfg.workers, sc.resultBytes, mib(sc.historyMaxBytes), mib(defaultHistoryMaxBytes))
	if cfg.soak.rate == 0 {
		fmt.Fprintf(w, "; rate: half the drain of %d such tasks measured first", sc.probe)
	}
	fmt.Fprintf(w, "\nRSS: VmRSS of nats-server (-nats-pid) and of this process (the scheduler's service and worker); heap: this process's Go heap after a GC\n")
	fmt.Fprintf(w, "history: the store of finished tasks (%s)\n\n", scheduler.HistoryStream)

	q := queueName("soak")
	var succeeded atomic.Int64
	stopWork, err := m.work(ctx, q, cfg.workers, func([]byte) { succeeded.Add(1) })
	if err != nil {
		return err
	}
	workersStopped := false
	defer func() {
		if !workersStopped {
			stopWork()
		}
	}()

	// Submits, each at its own instant: task n at start + n/rate.
	var next, submitted, refused atomic.Int64
	var firstRefusal atomic.Value
	last := make([]string, max(sc.check, 1)) // the ids of the last tasks, by n % len
	var lastMu sync.Mutex
	start := time.Now()
	end := start.Add(sc.duration)
	var wg sync.WaitGroup
	for range cfg.producers {
		wg.Go(func() {
			for {
				n := next.Add(1) - 1
				at := start.Add(time.Duration(float64(n) / sc.rate * float64(time.Second)))
				if !at.Before(end) {
					return
				}
				time.Sleep(time.Until(at))
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				id, err := m.client.Submit(sctx, scheduler.SubmitRequest{Queue: q, Type: "noop", Payload: stamp(time.Now())})
				cancel()
				if err != nil {
					refused.Add(1)
					firstRefusal.CompareAndSwap(nil, err.Error())
					continue
				}
				submitted.Add(1)
				lastMu.Lock()
				last[n%int64(len(last))] = id
				lastMu.Unlock()
			}
		})
	}
	take := func() sample {
		s := sample{elapsed: time.Since(start).Round(time.Second), submitted: submitted.Load(), refused: refused.Load(), succeeded: succeeded.Load()}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if qi, err := m.queue(qctx, q); err == nil {
			s.running, s.depth = qi.InFlight, int64(qi.Depth)
		} else {
			fmt.Fprintf(os.Stderr, "bench: queues: %v\n", err)
		}
		if h, err := m.storeOf(qctx); err == nil {
			s.history = h
		} else {
			fmt.Fprintf(os.Stderr, "bench: history: %v\n", err)
		}
		s.heap = liveHeap()
		s.natsRSS, s.meshRSS = rss(cfg.natsPID), rss(os.Getpid())
		return s
	}
	printSoakHeader(w)
	var series []sample
	tick := time.NewTicker(sc.every)
	submitting := make(chan struct{})
	go func() { wg.Wait(); close(submitting) }()
loop:
	for {
		select {
		case <-tick.C:
			s := take()
			series = append(series, s)
			printSoakRow(w, "", s)
		case <-submitting:
			break loop
		}
	}
	tick.Stop()

	// Every task submitted runs and leaves the queue.
	settled := waitEvery(func() bool {
		if succeeded.Load() < submitted.Load() {
			return false
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		qi, err := m.queue(qctx, q)
		return err == nil && qi.Depth == 0 && qi.InFlight == 0
	}, 250*time.Millisecond, 2*time.Minute)
	final := take()
	printSoakRow(w, "end", final)
	stopWork()
	workersStopped = true
	if !settled {
		fmt.Fprintf(w, "\n(the queue had not settled 2 minutes after the last submit)\n")
	}

	// The records of the last tasks.
	states := map[string]int{}
	var ids []string
	for _, id := range last {
		if id != "" {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		info, err := m.client.Status(sctx, id)
		cancel()
		switch {
		case errors.Is(err, scheduler.ErrNotFound):
			states["not found"]++
		case err != nil:
			states["error"]++
		default:
			states[info.State]++
		}
	}

	fmt.Fprintf(w, "\nload average at the end: %s\n\n", loadAverage())
	verdict := func(ok bool, format string, args ...any) {
		mark := "met"
		if !ok {
			mark = "NOT met"
		}
		fmt.Fprintf(w, "- "+format+": %s\n", append(args, mark)...)
	}
	refusals := fmt.Sprintf("%d of %d", final.refused, final.submitted+final.refused)
	if s, ok := firstRefusal.Load().(string); ok {
		refusals += " (the first: " + s + ")"
	}
	verdict(final.refused == 0, "submits refused: %s", refusals)
	verdict(settled && final.depth == 0 && final.running == 0, "tasks left running: %d, queued: %d", final.running, final.depth)
	verdict(len(ids) > 0 && states[scheduler.StateSucceeded] == len(ids), "every outcome recorded: the last %d tasks read by status: %s", len(ids), countStates(states))
	if len(series) > 0 {
		h0 := series[0].history
		moved := final.history.oldest.After(h0.oldest)
		verdict(moved && final.history.records < final.submitted, "oldest evicted: the first record's time %s → %s (%s); %d records for %d tasks submitted",
			clock(h0.oldest), clock(final.history.oldest), movedWord(moved), final.history.records, final.submitted)
	}
	if len(series) >= 3 {
		growth := func(f func(sample) uint64) float64 {
			k := len(series) / 3
			var a, b float64
			for i := range k {
				a += float64(f(series[i]))
				b += float64(f(series[len(series)-k+i]))
			}
			if a == 0 {
				return 0
			}
			return (b - a) / a * 100
		}
		n, me, h := growth(func(s sample) uint64 { return s.natsRSS }), growth(func(s sample) uint64 { return s.meshRSS }), growth(func(s sample) uint64 { return s.heap })
		verdict(n <= sc.rssTolerance && me <= sc.rssTolerance, "RSS growth after warm-up (the mean of the last third of the rows against the first third, flat within %.0f%%): nats-server %+.1f%%, mesh %+.1f%% (Go heap %+.1f%%)",
			sc.rssTolerance, n, me, h)
	} else {
		fmt.Fprintf(w, "- RSS growth after warm-up: fewer than 3 rows, not measured\n")
	}
	if final.history.records > 0 {
		perRecord := float64(final.history.bytes) / float64(final.history.records)
		fmt.Fprintf(w, "- bytes per record: %.0f (%d B in %d records)\n", perRecord, final.history.bytes, final.history.records)
		for _, bound := range []int64{sc.historyMaxBytes, defaultHistoryMaxBytes} {
			fmt.Fprintf(w, "- sustainable for %.0f h with a history bound of %s: %.3g tasks/s (the bound / bytes per record / %.0f s)\n",
				retention.Hours(), mib(bound), float64(bound)/perRecord/retention.Seconds(), retention.Seconds())
		}
	}
	return nil
}

// probeDrain submits sc.probe tasks (in batches) to a queue of their own,
// then runs the workers and returns the rate at which they drain them.
func probeDrain(ctx context.Context, cfg config, m *meshSystem) (float64, error) {
	q := queueName("soak-probe")
	n := cfg.soak.probe
	fmt.Fprintf(os.Stderr, "bench: probe: enqueue %d tasks in batches of %d\n", n, cfg.batch)
	_, failed, err := measureBatch(ctx, m, q, n, cfg.batch, max(cfg.producers/4, 1))
	if err != nil {
		return 0, err
	}
	want := int64(n - failed)
	var done atomic.Int64
	all := make(chan struct{})
	start := time.Now()
	stop, err := m.work(ctx, q, cfg.workers, func([]byte) {
		if done.Add(1) == want {
			close(all)
		}
	})
	if err != nil {
		return 0, err
	}
	defer stop()
	select {
	case <-all:
		return float64(want) / time.Since(start).Seconds(), nil
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("%d of %d tasks ran in 5 minutes", done.Load(), want)
	}
}

func printSoakHeader(w io.Writer) {
	fmt.Fprintf(w, "%7s %10s %8s %10s %8s %8s %9s %9s %9s %10s %8s\n",
		"elapsed", "submitted", "refused", "succeeded", "running", "depth", "nats RSS", "mesh RSS", "heap", "history", "records")
}

func printSoakRow(w io.Writer, label string, s sample) {
	if label == "" {
		label = s.elapsed.String()
	}
	fmt.Fprintf(w, "%7s %10d %8d %10d %8d %8d %9s %9s %9s %10s %8d\n", label, s.submitted, s.refused, s.succeeded, s.running, s.depth,
		mib(int64(s.natsRSS)), mib(int64(s.meshRSS)), mib(int64(s.heap)), mib(s.history.bytes), s.history.records)
}

// rss is process pid's resident set (VmRSS), or 0 when it cannot be read.
func rss(pid int) uint64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// liveHeap is this process's Go heap after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// waitEvery checks cond every interval until it holds or limit passes.
func waitEvery(cond func() bool, interval, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}

func mib(b int64) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func clock(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("15:04:05.000")
}

func movedWord(moved bool) string {
	if moved {
		return "moved"
	}
	return "did not move"
}

func countStates(states map[string]int) string {
	var parts []string
	for s, n := range states {
		parts = append(parts, fmt.Sprintf("%d %s", n, s))
	}
	if len(parts) == 0 {
		return "none"
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
