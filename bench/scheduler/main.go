// Command scheduler compares mesh's task scheduler with asynq (on Redis)
// and with a bare JetStream work queue (the floor under the scheduler),
// side by side in one run, and prints one table.
//
//   - mesh scheduler: a scheduler.Server running in this process on a NATS
//     connection of its own, tasks submitted through scheduler.Client and
//     run by scheduler.Worker, each on another connection;
//   - asynq: github.com/hibiken/asynq v0.26 with its defaults (asynq.Client,
//     asynq.Server with Concurrency = the worker count);
//   - JetStream floor: js.Publish to a work-queue stream and a durable pull
//     consumer with the same number of goroutines acking; its delayed tasks
//     use the server's message schedule alone (@at with the exact instant);
//   - floor + state: the floor plus the stored writes the v1 design asks of a
//     scheduler (a state per task at submit, start and outcome; an event
//     per change), made by the producer and the worker themselves: what
//     those writes alone cost;
//   - floor + state via a service (-systems statesvc, not by default): the
//     same with the worker's two writes asked of a bare service by
//     request/reply: what a task's hops through a service cost;
//   - JetStream raw: a bare work queue the fastest plain way (PublishAsync
//     from one goroutine, Consume with its default batch, acks not
//     awaited): what JetStream itself drains, the denominator of the drain
//     goal;
//   - record + history (-systems record, not by default): a candidate
//     store for the scheduler, with no service: the task message as the
//     record of a live task (a subject per task) and one outcome write to
//     a bounded history stream, pipelined before the ack (record.go).
//   - mesh scheduler (direct): the
//     mesh scheduler with the Client's direct submit, which publishes an
//     immediate task straight to JetStream (scheduler.WithDirect); its
//     service path and batches (SubmitMany asks the service) are the mesh
//     row's and are not measured again.
//
// The mesh scheduler also enqueues -tasks more by JSON requests on
// mesh.scheduler.submit (the service path of a client in any language)
// and -tasks more with Client.SubmitMany in batches of -batch; its drain
// then runs all of them. CPU per task counts this process and the
// processes of -server-pids (scripts/bench.sh passes nats-server's and
// redis-server's) from the first enqueue to the end of the drain.
//
// Scenarios, in order, each on a queue of its own:
//
//   - enqueue: -tasks no-op tasks submitted by -producers goroutines, no
//     worker running (tasks/s);
//   - drain: then -workers workers start and run them all (tasks/s);
//   - idle: -rate tasks/s for -idle on an idle queue with its workers
//     running: enqueue-to-start latency (p50, p99);
//   - delayed: -delayed tasks due 2 to 3 s ahead: start minus due time
//     (p50, p99, max) and how many started early.
//
// Soak mode (-soak DURATION, soak.go) runs the mesh scheduler alone at a
// steady rate instead of the table.
//
// nats-server (JetStream on) and redis-server run as processes of their
// own: scripts/bench.sh scheduler starts them on loopback ports and runs
// this program.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/meshkit/mesh/bench/internal/machine"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler"
)

// Names of the systems, as the table shows them.
const (
	meshName  = "mesh scheduler"
	asynqName = "asynq"
	floorName = "JetStream floor"

	rawName    = "JetStream raw"
	recordName = "record + history"

	stateFloorName   = "floor + state"
	stateServiceName = "floor + state via a service"
)

type config struct {
	natsURL, redisAddr string
	systems            []string
	tasks, producers   int
	workers            int
	rate               int
	idle               time.Duration
	delayed            int
	cpuprofile         string
	batch              int
	serverPids         []int
	natsPID            int
	source             string
	soak               soakConfig
}

func main() {
	var cfg config
	var systems string
	flag.StringVar(&cfg.natsURL, "nats", bus.DefaultURL, "NATS server `URL` (JetStream enabled)")
	flag.StringVar(&cfg.redisAddr, "redis", "", "Redis `host:port` for asynq; empty: no asynq row")
	flag.StringVar(&systems, "systems", "mesh,mesh-direct,asynq,raw,floor,statefloor", "systems to run, in order: mesh, mesh-direct, asynq, floor, raw, record, statefloor, statesvc")
	flag.IntVar(&cfg.tasks, "tasks", 20_000, "tasks of the enqueue and drain scenarios")
	flag.IntVar(&cfg.producers, "producers", 16, "goroutines enqueueing in the enqueue scenario")
	flag.IntVar(&cfg.workers, "workers", 16, "workers (tasks run at once)")
	flag.IntVar(&meshPrefetch, "mesh-prefetch", 0, "mesh rows: tasks a worker pulls ahead (WorkerConfig.Prefetch; 0: its default)")
	flag.IntVar(&cfg.rate, "rate", 100, "tasks per second of the idle-latency scenario")
	flag.DurationVar(&cfg.idle, "idle", 10*time.Second, "duration of the idle-latency scenario")
	flag.IntVar(&cfg.delayed, "delayed", 200, "tasks of the delayed scenario, due 2 to 3 s ahead")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write a CPU profile of this process to `file`")
	flag.StringVar(&cfg.source, "source", "", "the revision of the mesh source under test, for the header")
	flag.BoolVar(&recordWritesHistory, "record-history", true, "record row: write each outcome to the history stream (false: the per-task subjects alone)")
	flag.BoolVar(&recordHistoryPerTask, "record-history-per-task", true, "record row: one history subject per task (false: one per queue)")
	flag.IntVar(&cfg.batch, "batch", 1000, "tasks per batch of the batch enqueue scenario")
	var pids string
	flag.StringVar(&pids, "server-pids", "", "comma-separated `pids` of the server processes (nats-server, redis-server) whose CPU time counts in CPU per task")
	flag.IntVar(&cfg.natsPID, "nats-pid", 0, "nats-server's `pid`, for its RSS in soak mode")
	flag.DurationVar(&cfg.soak.duration, "soak", 0, "soak mode: run the mesh scheduler for `duration` at a steady rate instead of the table (see bench/README.md)")
	flag.Float64Var(&cfg.soak.rate, "soak-rate", 0, "soak mode: tasks/s submitted; 0: half the drain rate of -soak-probe such tasks, measured first")
	flag.IntVar(&cfg.soak.probe, "soak-probe", 5000, "soak mode: tasks of the drain that sets the rate when -soak-rate is 0")
	flag.IntVar(&cfg.soak.resultBytes, "soak-result-bytes", 16<<10, "soak mode: bytes of the result each task sets")
	flag.Int64Var(&cfg.soak.historyMaxBytes, "soak-history-max-bytes", 64<<20, "soak mode: the scheduler's bound on the history of finished tasks, in bytes")
	flag.DurationVar(&cfg.soak.every, "soak-every", 10*time.Second, "soak mode: interval between two rows")
	flag.IntVar(&cfg.soak.check, "soak-check", 100, "soak mode: the last tasks whose records are read at the end")
	flag.Float64Var(&cfg.soak.rssTolerance, "soak-rss-tolerance", 10, "soak mode: RSS growth after warm-up, in %, still called flat")
	flag.BoolVar(&cfg.soak.direct, "soak-direct", false, "soak mode: submit with the Client's direct publish to JetStream")
	flag.Parse()
	var err error
	if cfg.serverPids, err = parsePids(pids); err != nil {
		fatal(err)
	}
	for _, s := range strings.Split(systems, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.systems = append(cfg.systems, s)
		}
	}
	stop, err := machine.CPUProfile(cfg.cpuprofile)
	if err != nil {
		fatal(err)
	}
	if cfg.soak.duration > 0 {
		err = soak(context.Background(), cfg, os.Stdout)
	} else {
		err = run(context.Background(), cfg, os.Stdout)
	}
	stop()
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench scheduler:", err)
	os.Exit(1)
}

// result is one system's row.
type result struct {
	system           string
	enqueue, drain   float64 // tasks/s
	enqueueSvc       float64 // tasks/s by JSON requests (the service path), when the system has one
	enqueueBatch     float64 // tasks/s by batches, when the system has them
	drained          int
	cpuPerTask       time.Duration // this process and -server-pids, from the first enqueue to the end of the drain
	idleP50, idleP99 time.Duration
	idleN            int
	lateP50, lateP99 time.Duration
	lateMax          time.Duration
	early, delayedN  int
	errors           int
}

func run(ctx context.Context, cfg config, w io.Writer) error {
	var results []result
	rtt, err := idleRTT(cfg.natsURL, cfg.rate, 3*time.Second)
	if err != nil {
		return fmt.Errorf("request/reply at the idle rate: %w", err)
	}
	for _, name := range cfg.systems {
		var sys system
		switch name {
		case "mesh":
			sys, err = newMesh(ctx, cfg.natsURL, scheduler.Config{}, false)
		case "mesh-direct":
			sys, err = newMeshDirect(ctx, cfg.natsURL)
		case "asynq":
			if cfg.redisAddr == "" {
				fmt.Fprintln(os.Stderr, "bench: no -redis: skipping asynq")
				continue
			}
			sys, err = newAsynq(cfg.redisAddr)
		case "floor":
			sys, err = newFloor(ctx, cfg.natsURL)
		case "statesvc":
			sys, err = newStateService(ctx, cfg.natsURL)
		case "statefloor":
			sys, err = newStateFloor(ctx, cfg.natsURL)
		case "raw":
			sys, err = newRaw(ctx, cfg.natsURL)
		case "record":
			sys, err = newRecord(ctx, cfg.natsURL)
		default:
			return fmt.Errorf("unknown system %q (mesh, mesh-direct, asynq, floor, raw, record, statefloor, statesvc)", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(os.Stderr, "bench: %s\n", sys.name())
		r, err := measure(ctx, cfg, sys)
		sys.close()
		if err != nil {
			return fmt.Errorf("%s: %w", sys.name(), err)
		}
		results = append(results, r)
	}
	report(w, cfg, rtt, results)
	return nil
}

// idleRTT measures a bare NATS request/reply (an echo on another
// connection) at rate a second for d, and returns its median: the unit
// that the idle scenario's latencies are made of on this machine, where a
// request at a low rate finds the processes asleep.
func idleRTT(url string, rate int, d time.Duration) (time.Duration, error) {
	echo, err := nats.Connect(url, nats.Name("bench-scheduler-echo"))
	if err != nil {
		return 0, err
	}
	defer echo.Close()
	if _, err := echo.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return 0, err
	}
	if err := echo.Flush(); err != nil {
		return 0, err
	}
	nc, err := nats.Connect(url, nats.Name("bench-scheduler-requester"))
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	var rtts []time.Duration
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	for range int(d.Seconds() * float64(rate)) {
		<-tick.C
		start := time.Now()
		if _, err := nc.Request("bench.echo", stamp(start), time.Second); err != nil {
			return 0, err
		}
		rtts = append(rtts, time.Since(start))
	}
	return quantile(rtts, 0.5), nil
}

// stamp is a payload carrying an instant (enqueue time or due time).
func stamp(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(t.UnixNano()))
}

func unstamp(b []byte) time.Time {
	if len(b) < 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b)))
}

func queueName(what string) string { return "bench-" + what + "-" + strings.ToLower(nuid.Next()[:8]) }

func measure(ctx context.Context, cfg config, sys system) (result, error) {
	r := result{system: sys.name()}
	var errs atomic.Int64

	// Enqueue, no workers.
	q := queueName("drain")
	fmt.Fprintf(os.Stderr, "bench:   enqueue %d tasks\n", cfg.tasks)
	var next atomic.Int64
	clock := cpuClock{pids: cfg.serverPids}
	cpu0 := clock.now()
	start := time.Now()
	var wg sync.WaitGroup
	if b, ok := sys.(allEnqueuer); ok {
		// One goroutine publishes every task asynchronously.
		failed, err := b.enqueueAll(ctx, q, func(int) []byte { return stamp(time.Now()) }, cfg.tasks)
		if err != nil {
			return r, err
		}
		errs.Add(int64(failed))
		next.Store(int64(cfg.tasks))
	}
	for range cfg.producers {
		wg.Go(func() {
			for next.Add(1) <= int64(cfg.tasks) {
				ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := sys.enqueue(ectx, q, stamp(time.Now()), time.Time{}); err != nil {
					errs.Add(1)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	r.enqueue = float64(cfg.tasks) / time.Since(start).Seconds()
	if n := errs.Load(); n > int64(cfg.tasks)/100 {
		return r, fmt.Errorf("%d of %d enqueues failed", n, cfg.tasks)
	}
	total := cfg.tasks
	if se, ok := sys.(serviceEnqueuer); ok {
		fmt.Fprintf(os.Stderr, "bench:   enqueue %d tasks by JSON requests\n", cfg.tasks)
		rate, failed, err := measureService(ctx, cfg.natsURL, se, q, cfg.tasks, cfg.producers)
		if err != nil {
			return r, fmt.Errorf("service path: %w", err)
		}
		r.enqueueSvc, total = rate, total+cfg.tasks
		errs.Add(int64(failed))
	}
	if be, ok := sys.(batchEnqueuer); ok {
		fmt.Fprintf(os.Stderr, "bench:   enqueue %d tasks in batches of %d\n", cfg.tasks, cfg.batch)
		rate, failed, err := measureBatch(ctx, be, q, cfg.tasks, cfg.batch, max(cfg.producers/4, 1))
		if err != nil {
			return r, fmt.Errorf("batch: %w", err)
		}
		r.enqueueBatch, total = rate, total+cfg.tasks
		errs.Add(int64(failed))
	}

	// Drain them.
	fmt.Fprintf(os.Stderr, "bench:   drain with %d workers\n", cfg.workers)
	want := int64(total) - errs.Load()
	var done atomic.Int64
	all := make(chan struct{})
	start = time.Now()
	stop, err := sys.work(ctx, q, cfg.workers, func([]byte) {
		if done.Add(1) == want {
			close(all)
		}
	})
	if err != nil {
		return r, err
	}
	select {
	case <-all:
		r.drain = float64(want) / time.Since(start).Seconds()
		r.drained = int(want)
		r.cpuPerTask = (clock.now() - cpu0) / time.Duration(max(want, 1))
	case <-time.After(5 * time.Minute):
		stop()
		return r, fmt.Errorf("drain: %d of %d tasks ran in 5 minutes", done.Load(), want)
	}
	stop()

	// Idle queue, paced enqueues.
	fmt.Fprintf(os.Stderr, "bench:   idle latency at %d tasks/s for %s\n", cfg.rate, cfg.idle)
	q = queueName("idle")
	var mu sync.Mutex
	var lat []time.Duration
	stop, err = sys.work(ctx, q, cfg.workers, func(p []byte) {
		d := time.Since(unstamp(p))
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
	})
	if err != nil {
		return r, err
	}
	// Let the workers find the queue, then warm up with one task.
	_ = sys.enqueue(ctx, q, stamp(time.Now()), time.Time{})
	waitFor(func() bool { mu.Lock(); defer mu.Unlock(); return len(lat) >= 1 }, 30*time.Second)
	mu.Lock()
	lat = lat[:0]
	mu.Unlock()
	n := int(cfg.idle.Seconds() * float64(cfg.rate))
	tick := time.NewTicker(time.Second / time.Duration(cfg.rate))
	for range n {
		<-tick.C
		go func() {
			if err := sys.enqueue(ctx, q, stamp(time.Now()), time.Time{}); err != nil {
				errs.Add(1)
			}
		}()
	}
	tick.Stop()
	waitFor(func() bool { mu.Lock(); defer mu.Unlock(); return len(lat) >= n }, 30*time.Second)
	stop()
	mu.Lock()
	r.idleN = len(lat)
	r.idleP50, r.idleP99 = quantile(lat, 0.5), quantile(lat, 0.99)
	mu.Unlock()

	// Delayed tasks.
	if _, ok := sys.(immediateOnly); ok {
		r.errors = int(errs.Load())
		return r, nil
	}
	fmt.Fprintf(os.Stderr, "bench:   %d delayed tasks\n", cfg.delayed)
	q = queueName("delayed")
	var late []time.Duration
	stop, err = sys.work(ctx, q, cfg.workers, func(p []byte) {
		d := time.Since(unstamp(p))
		mu.Lock()
		late = append(late, d)
		mu.Unlock()
	})
	if err != nil {
		return r, err
	}
	base := time.Now().Add(2 * time.Second)
	for i := range cfg.delayed {
		// Due instants in whole milliseconds, the precision of the mesh's
		// wire (asynq keeps whole seconds: its tasks may start early).
		due := base.Add(time.Duration(i) * time.Second / time.Duration(max(cfg.delayed, 1))).Truncate(time.Millisecond)
		if err := sys.enqueue(ctx, q, stamp(due), due); err != nil {
			errs.Add(1)
		}
	}
	ok := waitFor(func() bool { mu.Lock(); defer mu.Unlock(); return len(late) >= cfg.delayed }, 60*time.Second)
	stop()
	mu.Lock()
	defer mu.Unlock()
	if !ok {
		fmt.Fprintf(os.Stderr, "bench:   only %d of %d delayed tasks ran within a minute\n", len(late), cfg.delayed)
	}
	r.delayedN = len(late)
	for _, d := range late {
		if d < 0 {
			r.early++
		}
	}
	r.lateP50, r.lateP99 = quantile(late, 0.5), quantile(late, 0.99)
	if len(late) > 0 {
		r.lateMax = slices.Max(late)
	}
	r.errors = int(errs.Load())
	return r, nil
}

// allEnqueuer is a system whose enqueue scenario is one goroutine
// publishing every task at once (the raw row).
type allEnqueuer interface {
	enqueueAll(ctx context.Context, queue string, payload func(int) []byte, n int) (failed int, err error)
}

// immediateOnly is a system with no delayed tasks (the rows measuring a
// store's drain path): the delayed scenario is skipped.
type immediateOnly interface{ immediateOnly() }

// waitFor polls cond (the handlers count tasks; there is no event to await
// across three systems) until it holds or limit passes.
func waitFor(cond func() bool, limit time.Duration) bool {
	return waitEvery(cond, 5*time.Millisecond, limit)
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond && d > -10*time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

// rate is a tasks/s figure, or — for a scenario the system lacks.
func rate(f float64) string {
	if f == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", f)
}

func us(d time.Duration) string {
	if d == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func report(w io.Writer, cfg config, rtt time.Duration, rs []result) {
	fmt.Fprintf(w, "# Task scheduler: mesh vs asynq vs a bare JetStream work queue\n\n")
	fmt.Fprintf(w, "machine: %s, %d CPUs, %s", machine.CPUModel(), runtime.NumCPU(), runtime.Version())
	if cfg.source != "" {
		fmt.Fprintf(w, ", mesh %s", cfg.source)
	}
	fmt.Fprintf(w, "\nbare NATS request/reply at %d/s (idle processes): p50 %s\n", cfg.rate, ms(rtt))
	fmt.Fprintf(w, "enqueue: %d no-op tasks by %d producers (SDK single submits; service/s: JSON requests; batch/s: batches of %d from %d producers); drain: every task enqueued, with %d workers; idle: %d tasks/s for %s; delayed: %d tasks due 2-3 s ahead\n",
		cfg.tasks, cfg.producers, cfg.batch, max(cfg.producers/4, 1), cfg.workers, cfg.rate, cfg.idle, cfg.delayed)
	cpuOf := "this process"
	if len(cfg.serverPids) > 0 {
		cpuOf += fmt.Sprintf(" and the server processes %v", cfg.serverPids)
	}
	fmt.Fprintf(w, "CPU/task: CPU time of %s from the first enqueue to the end of the drain, per task drained\n\n", cpuOf)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tenqueue/s\tservice/s\tbatch/s\tdrain/s\tidle p50\tidle p99\tlate p50\tlate p99\tlate max\tearly\tCPU/task\terrors\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%d\t\n", r.system, r.enqueue, rate(r.enqueueSvc), rate(r.enqueueBatch), r.drain,
			ms(r.idleP50), ms(r.idleP99), ms(r.lateP50), ms(r.lateP99), ms(r.lateMax), r.early, r.delayedN, us(r.cpuPerTask), r.errors)
	}
	tw.Flush()
	var mesh, direct, asq, floor, stateFloor, raw *result
	for i := range rs {
		switch rs[i].system {
		case rawName:
			raw = &rs[i]
		case meshName:
			mesh = &rs[i]
		case meshDirectName:
			direct = &rs[i]
		case asynqName:
			asq = &rs[i]
		case floorName:
			floor = &rs[i]
		case stateFloorName:
			stateFloor = &rs[i]
		}
	}
	if mesh == nil && direct == nil {
		return
	}
	fmt.Fprintln(w)
	if asq != nil && mesh != nil {
		fmt.Fprintf(w, "mesh / asynq: enqueue %s (target ≥ 1×), service path %s (≥ 0.5×), batch %s (≥ 3×), drain %s (≥ 2×), CPU per task %s\n",
			ratio(mesh.enqueue, asq.enqueue), ratio(mesh.enqueueSvc, asq.enqueue), ratio(mesh.enqueueBatch, asq.enqueue),
			ratio(mesh.drain, asq.drain), ratio(float64(mesh.cpuPerTask), float64(asq.cpuPerTask)))
	}
	if asq != nil && direct != nil {
		fmt.Fprintf(w, "mesh (direct) / asynq: enqueue %s, drain %s, CPU per task %s\n",
			ratio(direct.enqueue, asq.enqueue), ratio(direct.drain, asq.drain),
			ratio(float64(direct.cpuPerTask), float64(asq.cpuPerTask)))
	}
	if mesh == nil {
		return
	}
	if raw != nil {
		fmt.Fprintf(w, "mesh / JetStream raw: drain %s\n", ratio(mesh.drain, raw.drain))
	}
	if floor != nil {
		fmt.Fprintf(w, "mesh / floor: enqueue %s, drain %s (target ≥ 0.5×)\n", ratio(mesh.enqueue, floor.enqueue), ratio(mesh.drain, floor.drain))
	}
	if stateFloor != nil {
		fmt.Fprintf(w, "mesh / floor + state: enqueue %s, drain %s\n", ratio(mesh.enqueue, stateFloor.enqueue), ratio(mesh.drain, stateFloor.drain))
		if floor != nil {
			fmt.Fprintf(w, "floor + state / floor: enqueue %s, drain %s\n", ratio(stateFloor.enqueue, floor.enqueue), ratio(stateFloor.drain, floor.drain))
		}
	}
	fmt.Fprintf(w, "mesh targets: idle p50 %s (≤ 1.5 ms), late p99 %s (≤ 50 ms), %d early (0)\n", ms(mesh.idleP50), ms(mesh.lateP99), mesh.early)
}
