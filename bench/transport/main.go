// Command transport is the transport baseline of the mesh. It measures one
// request/reply round trip of a 100-byte payload three ways, side by side in
// one run, and prints one table:
//
//   - bus echo: a bus.Service whose endpoint (bus.Typed) returns the request,
//     called with bus.Request in msgpack;
//   - raw nats echo: a nats.go queue subscription that responds with the
//     request's data, called with nc.Request — the baseline of the ratio;
//   - redis GET of a value of the same size, with go-redis.
//
// Each system runs at each concurrency (N workers doing requests back to
// back) for a warm-up and then a measured window. The servers (nats-server,
// redis-server) run in processes of their own: scripts/bench.sh transport
// starts them on loopback ports and runs this program.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/meshkit/mesh/bench/internal/load"
	"github.com/meshkit/mesh/bench/internal/machine"
	"github.com/meshkit/mesh/bench/internal/redisbench"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/nats-io/nats.go"
)

// Names of the baseline and of the system the goal is about.
const (
	rawName       = "raw nats echo"
	busName       = "bus echo"
	busInlineName = "bus echo, Inline"
)

type config struct {
	natsURL    string
	redisAddr  string
	duration   time.Duration
	warmup     time.Duration
	concs      []int
	size       int
	conns      int
	redisPool  int
	systems    []string
	cpuprofile string
	memprofile string
	goalRatio  float64
	rounds     int
}

func main() {
	var cfg config
	var concs, systems string
	flag.StringVar(&cfg.natsURL, "nats", bus.DefaultURL, "NATS server `URL`")
	flag.StringVar(&cfg.redisAddr, "redis", "", "Redis `host:port`; empty: no Redis rows")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured time of each cell")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured warm-up before each cell")
	flag.StringVar(&concs, "c", "1,16,64", "concurrency levels, comma-separated")
	flag.IntVar(&cfg.size, "size", 100, "payload `bytes`")
	flag.IntVar(&cfg.conns, "conns", 1, "client NATS connections, shared round-robin by the workers")
	flag.IntVar(&cfg.redisPool, "redis-pool", 0, "Redis connection pool size; 0: the highest concurrency")
	flag.StringVar(&systems, "systems", "nats,bus,bus-inline,redis", "systems to run at each concurrency, in order: nats, bus, bus-inline, redis; for diagnosis also bus-client (bus.Request to the raw echo) and bus-server (nc.Request to the bus.Service)")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write a CPU profile of all the cells to `file`")
	flag.StringVar(&cfg.memprofile, "memprofile", "", "write an allocation profile to `file` at the end")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds of every cell, interleaved; the table shows the round of median ops/s")
	flag.Float64Var(&cfg.goalRatio, "goal", 0.9, "bus echo / raw nats echo ratio expected at the highest concurrency")
	flag.Parse()

	var err error
	if cfg.concs, err = load.ParseLevels(concs); err != nil {
		fatal(fmt.Errorf("-c: %w", err))
	}
	for sys := range strings.SplitSeq(systems, ",") {
		cfg.systems = append(cfg.systems, strings.TrimSpace(sys))
	}
	if cfg.size < 1 || cfg.conns < 1 || cfg.duration <= 0 || cfg.warmup < 0 {
		fatal(errors.New("-size and -conns must be ≥ 1, -duration > 0, -warmup ≥ 0"))
	}
	if cfg.redisPool == 0 {
		cfg.redisPool = cfg.concs[len(cfg.concs)-1]
	}
	if err := run(context.Background(), cfg, os.Stdout); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "transport:", err)
	os.Exit(1)
}

func run(ctx context.Context, cfg config, w io.Writer) error {
	payload := make([]byte, cfg.size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	conn := func(name string) (*nats.Conn, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return connect(cctx, cfg.natsURL, name)
	}

	var (
		targets   []load.Target
		natsInfo  string
		redisInfo = "not run"
		clients   []*nats.Conn
	)
	defer func() {
		for _, nc := range clients {
			nc.Close()
		}
	}()
	if slices.ContainsFunc(cfg.systems, func(s string) bool { return s != "redis" }) {
		for i := range cfg.conns {
			nc, err := conn(fmt.Sprintf("bench-client-%d", i))
			if err != nil {
				return err
			}
			clients = append(clients, nc)
		}
		natsInfo = fmt.Sprintf("%s at %s (separate process; no JetStream, so nothing is written to disk and fsync does not apply)",
			clients[0].ConnectedServerVersion(), cfg.natsURL)
		rawSrv, err := conn("bench-server-raw")
		if err != nil {
			return err
		}
		defer rawSrv.Close()
		if err := serveRaw(rawSrv); err != nil {
			return err
		}
		busSrv, err := conn("bench-server-bus")
		if err != nil {
			return err
		}
		defer busSrv.Close()
		svc, err := serveBus(ctx, busSrv)
		if err != nil {
			return err
		}
		defer stop(svc)
	}
	// The body bus.Request sends, for the raw client of the bus service.
	body, err := bus.MsgPack.Marshal(Echo{Data: payload})
	if err != nil {
		return err
	}
	for _, sys := range cfg.systems {
		switch sys {
		case "nats":
			targets = append(targets, rawClient(rawName, clients, subjectRaw, payload))
		case "bus":
			targets = append(targets, busClient(busName, clients, subjectBus, payload))
		case "bus-inline":
			targets = append(targets, busClient(busInlineName, clients, subjectBusInline, payload))
		case "bus-client":
			targets = append(targets, busClient("bus.Request to raw echo", clients, subjectRaw, payload))
		case "bus-server":
			targets = append(targets, rawClient("nc.Request to bus.Service", clients, subjectBus, body))
		case "redis":
			if cfg.redisAddr == "" {
				fmt.Fprintln(os.Stderr, "transport: no -redis address: skipping redis GET")
				continue
			}
			t, rdb, err := redisGet(ctx, cfg.redisAddr, cfg.redisPool, payload)
			if err != nil {
				return err
			}
			defer rdb.Close()
			redisInfo = redisbench.Describe(ctx, rdb, cfg.redisAddr)
			targets = append(targets, t)
		default:
			return fmt.Errorf("-systems: unknown system %q (want nats, bus, redis, bus-client or bus-server)", sys)
		}
	}

	stopProfile, err := machine.CPUProfile(cfg.cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()

	results := load.Rounds(ctx, targets, cfg.concs, cfg.rounds, cfg.warmup, cfg.duration, func(r load.Result) {
		fmt.Fprintf(os.Stderr, "%-18s c=%-3d %9.0f ops/s  p50 %v  p99 %v  errors %d\n",
			r.System, r.Conc, r.OpsPerSec(), r.Quantile(0.5), r.Quantile(0.99), r.Errs)
	})

	if cfg.memprofile != "" {
		if err := writeAllocs(cfg.memprofile); err != nil {
			return err
		}
	}

	fmt.Fprintf(w, "# transport baseline, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- machine: %s, nproc %d, GOMAXPROCS %d, %s/%s\n", machine.CPUModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "- go: %s\n", runtime.Version())
	if natsInfo != "" {
		fmt.Fprintf(w, "- nats-server: %s\n", natsInfo)
	}
	fmt.Fprintf(w, "- redis-server: %s\n", redisInfo)
	fmt.Fprintf(w, "- payload %d B; per cell %d interleaved rounds of %v measured after %v warm-up, the table shows the round of median ops/s; %d client NATS connection(s) shared by the workers, one server connection per echo; redis pool %d; allocs/op counts the whole bench process (client and, for the echoes, server side)\n\n",
		cfg.size, cfg.rounds, cfg.duration, cfg.warmup, cfg.conns, cfg.redisPool)
	printTable(w, results)
	return report(w, cfg, results)
}

func stop(svc *bus.Service) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = svc.Stop(ctx)
}

func printTable(w io.Writer, results []load.Result) {
	base := map[int]float64{}
	for _, r := range results {
		if r.System == rawName {
			base[r.Conc] = r.OpsPerSec()
		}
	}
	fmt.Fprintln(w, "| system | concurrency | ops/s | ops/s, all rounds | p50 | p99 | allocs/op | vs raw nats |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range results {
		ratio := "-"
		if b := base[r.Conc]; b > 0 {
			ratio = fmt.Sprintf("%.2f", r.OpsPerSec()/b)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %s | %.1f | %s |\n", r.System, r.Conc, r.OpsPerSec(), r.Spread(),
			micros(r.Quantile(0.5)), micros(r.Quantile(0.99)), r.AllocsPerOp(), ratio)
	}
}

// report prints the failures and the goal of the issue, and fails when a
// request failed.
func report(w io.Writer, cfg config, results []load.Result) error {
	var failed int
	at := map[string]*load.Result{} // the results at the top concurrency
	top := cfg.concs[len(cfg.concs)-1]
	fmt.Fprintln(w)
	for i, r := range results {
		switch {
		case r.Errs > 0:
			failed += r.Errs
			fmt.Fprintf(w, "- %s c=%d: %d failed requests, the first: %v\n", r.System, r.Conc, r.Errs, r.FirstErr)
		case r.Ops == 0:
			failed++
			fmt.Fprintf(w, "- %s c=%d: no request that started in the window finished\n", r.System, r.Conc)
		}
		if r.Conc == top {
			at[r.System] = &results[i]
		}
	}
	for _, name := range []string{busName, busInlineName} {
		bus, raw := at[name], at[rawName]
		if bus == nil || raw == nil || raw.Ops == 0 {
			continue
		}
		ratio := bus.OpsPerSec() / raw.OpsPerSec()
		verdict := "met"
		if ratio < cfg.goalRatio {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "- goal: %s ≥ %.2f× raw nats echo at c=%d: %.2f, %s\n", name, cfg.goalRatio, top, ratio, verdict)
	}
	if failed > 0 {
		return errors.New("some requests failed or never finished")
	}
	return nil
}

func micros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
