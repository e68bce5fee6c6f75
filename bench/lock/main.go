// Command lock compares mesh's lock service with etcd's concurrency.Mutex
// and with the bare NATS KV operations a lock needs (the floor under the
// service), side by side in one run, and prints one table.
//
//   - mesh lock: a lock.Server running in this process on a NATS connection
//     of its own, called through lock.Client (TryAcquire / Acquire and
//     Lease.Release) on another connection;
//   - etcd mutex: go.etcd.io/etcd/client/v3/concurrency (a Session with a
//     TTL per worker, NewMutex, TryLock / Lock, Unlock);
//   - NATS KV floor: kv.Create(name, value, KeyTTL(ttl)) and
//     kv.Delete(name, LastRevision(rev)) on a bucket with History 1 and
//     LimitMarkerTTL, with no service: it has no waiting line, so its
//     contended row spins on Create.
//
// Scenarios: acquire+release back to back on one name, and on a new name
// each cycle; N workers each on a name of its own; M contenders on one name
// (handoffs/s, handoff latency, FIFO overtakes). nats-server (JetStream on)
// and etcd run as processes of their own: scripts/bench.sh lock starts them
// on loopback ports and runs this program.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/meshkit/mesh/bench/internal/machine"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/lock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Names of the systems, as the table shows them.
const (
	meshName = "mesh lock"
	etcdName = "etcd mutex"
	kvName   = "NATS KV floor"
)

type config struct {
	natsURL, natsMon, etcdURL string
	natsPID, etcdPID          int
	duration, warmup          time.Duration
	opTimeout, ttl            time.Duration
	parallel, contenders      int
	rounds                    int
	systems, scenarios        []string
	cpuprofile                string
	sniff                     bool
	source                    string
	serialGoal, contendedGoal float64
}

func main() {
	var cfg config
	var systems, scens string
	flag.StringVar(&cfg.natsURL, "nats", bus.DefaultURL, "NATS server `URL` (JetStream enabled)")
	flag.StringVar(&cfg.natsMon, "nats-monitor", "", "nats-server monitoring `URL` (http://host:port), for its version, sync setting and message counts")
	flag.IntVar(&cfg.natsPID, "nats-pid", 0, "nats-server's `pid`, for its CPU time per operation")
	flag.StringVar(&cfg.etcdURL, "etcd", "", "etcd client `URL` (http://host:port); empty: no etcd rows")
	flag.IntVar(&cfg.etcdPID, "etcd-pid", 0, "etcd's `pid`, for its CPU time per operation")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured time of each cell")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured warm-up before each cell")
	flag.DurationVar(&cfg.ttl, "ttl", 10*time.Second, "lease TTL of every system (mesh lease, etcd session, KV key); ≥ 5s so that no renewal runs during a cycle")
	flag.DurationVar(&cfg.opTimeout, "op-timeout", 30*time.Second, "bound of one acquire or release")
	flag.IntVar(&cfg.parallel, "parallel", 32, "workers of the parallel scenario, each on a name of its own")
	flag.IntVar(&cfg.contenders, "contenders", 16, "workers of the contended scenario, all on one name")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds of every cell; the table shows, per system and scenario, the round of median ops/s")
	flag.StringVar(&systems, "systems", "mesh,etcd,kv", "systems to run in each scenario, in order: mesh, etcd, kv")
	flag.StringVar(&scens, "scenarios", "serial,serial-new,parallel,contended", "scenarios to run, in order")
	flag.StringVar(&cfg.source, "source", "", "the revision of the mesh source under test, for the header")
	flag.BoolVar(&cfg.sniff, "sniff", false, "diagnosis: also subscribe to "+lock.SubjectAcquire+" and count the mesh lock's overtakes in the order the acquire requests reached nats-server (adds one message per request)")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (clients and lock service) over all the cells to `file`")
	flag.Float64Var(&cfg.serialGoal, "serial-goal", 1.5, "mesh / etcd ops/s expected serially")
	flag.Float64Var(&cfg.contendedGoal, "contended-goal", 2, "mesh / etcd handoffs/s expected under contention")
	flag.Parse()

	cfg.systems = splitList(systems)
	cfg.scenarios = splitList(scens)
	if cfg.duration <= 0 || cfg.warmup < 0 || cfg.parallel < 1 || cfg.contenders < 1 || cfg.rounds < 1 || cfg.ttl < 5*time.Second {
		fatal(errors.New("-duration > 0, -warmup ≥ 0, -parallel, -contenders and -rounds ≥ 1, -ttl ≥ 5s"))
	}
	if err := run(context.Background(), cfg, os.Stdout); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "lock:", err)
	os.Exit(1)
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(ctx context.Context, cfg config, w io.Writer) error {
	all := scenarios(cfg.parallel, cfg.contenders)
	var scens []scenario
	workers := 1
	for _, id := range cfg.scenarios {
		i := slices.IndexFunc(all, func(s scenario) bool { return s.id == id })
		if i < 0 {
			return fmt.Errorf("-scenarios: unknown scenario %q (want serial, serial-new, parallel, contended)", id)
		}
		scens = append(scens, all[i])
		workers = max(workers, all[i].workers)
	}
	conn := func(name string) (*nats.Conn, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return bus.Connect(cctx, bus.Options{URL: cfg.natsURL, Name: name})
	}
	p := newProbe(cfg.natsMon, cfg.etcdURL, cfg.natsPID, cfg.etcdPID)

	t := timing{warmup: cfg.warmup, dur: cfg.duration, opTimeout: cfg.opTimeout, probe: p}
	var systems []system
	var serverVersion, etcdVersion string
	for _, s := range cfg.systems {
		switch s {
		case "mesh":
			srv, err := conn("bench-lock-service")
			if err != nil {
				return err
			}
			defer srv.Close()
			// Every mesh node ensures the event stream: the service's
			// events are stored, as in a deployment.
			if err := ensureEvents(ctx, srv); err != nil {
				return err
			}
			svc, err := lock.New(srv, lock.Config{})
			if err != nil {
				return err
			}
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = svc.Start(sctx)
			cancel()
			if err != nil {
				return fmt.Errorf("lock service: %w", err)
			}
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = svc.Stop(sctx)
			}()
			cl, err := conn("bench-lock-client")
			if err != nil {
				return err
			}
			defer cl.Close()
			serverVersion = cl.ConnectedServerVersion()
			systems = append(systems, newMesh(lock.NewClient(cl), cfg.ttl, workers))
			if cfg.sniff {
				sn, err := conn("bench-lock-sniffer")
				if err != nil {
					return err
				}
				defer sn.Close()
				if t.sniffer, err = newSniffer(sn); err != nil {
					return err
				}
			}
		case "etcd":
			if cfg.etcdURL == "" {
				fmt.Fprintln(os.Stderr, "lock: no -etcd address: skipping etcd")
				continue
			}
			e, err := newEtcd(ctx, cfg.etcdURL, cfg.ttl, workers)
			if err != nil {
				return err
			}
			defer e.close()
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := e.cli.Status(sctx, cfg.etcdURL)
			cancel()
			if err != nil {
				return fmt.Errorf("etcd status: %w", err)
			}
			etcdVersion = st.Version
			systems = append(systems, e)
		case "kv":
			nc, err := conn("bench-lock-kv")
			if err != nil {
				return err
			}
			defer nc.Close()
			serverVersion = nc.ConnectedServerVersion()
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			k, err := newKV(sctx, nc, cfg.ttl)
			cancel()
			if err != nil {
				return err
			}
			systems = append(systems, k)
		default:
			return fmt.Errorf("-systems: unknown system %q (want mesh, etcd, kv)", s)
		}
	}

	stopProfile, err := machine.CPUProfile(cfg.cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()

	var cells []cell
	n := 0
	run := time.Now().Unix() % 100000
	for round := range cfg.rounds {
		for _, sc := range scens {
			for _, sys := range systems {
				n++
				id := fmt.Sprintf("r%d-c%d", run, n)
				var c cell
				if sc.contended {
					c = runContended(ctx, sys, sc, id, t)
				} else {
					c = runCycles(ctx, sys, sc, id, t)
				}
				c.round = round + 1
				fmt.Fprintf(os.Stderr, "round %d  %-28s %-14s %8.0f ops/s  p50 %v  p99 %v  overtakes %d  errors %d\n",
					c.round, sc.title, c.system, c.opsPerSec(), quantile(c.lat, 0.5), quantile(c.lat, 0.99), c.overtakes, c.errs)
				cells = append(cells, c)
			}
		}
	}

	fmt.Fprintf(w, "# lock: mesh lock service vs etcd mutex vs bare NATS KV, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- machine: %s, nproc %d, GOMAXPROCS %d, %s/%s\n", machine.CPUModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "- go: %s; lock service %s in this process, on a NATS connection of its own", runtime.Version(), lock.Version)
	if cfg.source != "" {
		fmt.Fprintf(w, "; source %s", cfg.source)
	}
	fmt.Fprintln(w)
	if serverVersion != "" {
		fmt.Fprintf(w, "- nats-server: %s\n", describeNATS(ctx, p, serverVersion, cfg.natsURL))
	}
	if etcdVersion != "" {
		fmt.Fprintf(w, "- etcd: server %s at %s (separate process, one member; client go.etcd.io/etcd/client/v3 %s); durability: etcd's default, the WAL is fsynced before every raft commit is acknowledged (concurrent proposals share an fsync); --unsafe-no-fsync not set\n",
			etcdVersion, cfg.etcdURL, etcdClientVersion())
	}
	fmt.Fprintf(w, "- per cell %v measured after %v warm-up, %d round(s) of every cell, interleaved; lease TTL %v everywhere (mesh lease, etcd session, KV key TTL), so no renewal runs during a cycle; hold time 0\n\n",
		cfg.duration, cfg.warmup, cfg.rounds, cfg.ttl)
	rows := aggregate(cells)
	printTable(w, rows, cfg.rounds)
	return report(w, cfg, rows)
}

func describeNATS(ctx context.Context, p *probe, version, url string) string {
	v, err := p.natsVarz(ctx)
	if err != nil {
		return fmt.Sprintf("%s at %s (separate process, JetStream file store; sync setting not read: %v)", version, url, err)
	}
	sync := fmt.Sprintf("sync_interval %v: data is written to the OS at once and fsynced every %v (the default is 2m), so a process crash loses nothing but an OS crash or power loss can lose the last acknowledged writes", v.JetStream.Config.SyncInterval, v.JetStream.Config.SyncInterval)
	if v.JetStream.Config.SyncAlways {
		sync = "sync always: every write is fsynced before it is acknowledged"
	}
	return fmt.Sprintf("%s at %s (separate process, JetStream file store in %s; %s)", v.Version, url, v.JetStream.Config.StoreDir, sync)
}

func etcdClientVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "go.etcd.io/etcd/client/v3" {
				return d.Version
			}
		}
	}
	return "(version unknown)"
}

func micros(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// ensureEvents creates the mesh event stream, as a mesh node does at start.
func ensureEvents(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err == nil {
		_, err = bus.EnsureEventStream(ctx, js, bus.EventStreamConfig{})
	}
	if err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	return nil
}
