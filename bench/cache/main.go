// Command cache compares the mesh cache with Redis and with the transport's
// limit, side by side in one run, and prints one table:
//
//   - raw nats echo: a nats.go queue subscription that responds with the
//     request's 100 bytes — one request/reply, the limit of any NATS service;
//   - raw nats echo, MGET 16-sized: the same with 16 keys in and as many
//     bytes out as the cache's reply of 16 values, the limit of an MGET;
//   - cache GET and SET through the Go SDK (straight to the key's owner), GET
//     through the service subject (any node), MGET of 16 keys;
//   - cache GET forwarded: sent to a node that holds no copy, which passes it
//     to the owner (measured with R = 1, where such a node exists);
//   - Redis GET, SET and MGET of 16 keys (go-redis, one pool).
//
// The cache runs as `mesh up --nats URL --services cache --cache-nodes 2`
// runs it: two cache nodes in one process on one NATS connection, R = 2.
// With -mesh the nodes run in that command's own process and the raw echo in
// a process of its own (this program with -echo), so the clients in this
// process compete with neither; without it, all run in this process. The
// nats-server and redis-server run in processes of their own, started by
// scripts/bench.sh cache.
//
// Each cell also reports the CPU time per request of the client (this
// process), of the server (the echo's, the mesh's or redis-server's process)
// and of nats-server, read from /proc over the measured window: where the
// requests' cost goes, steadier than the throughput on a small machine.
//
// With -pin the servers (the echo, the mesh, redis-server) share CPU 1 and
// this process and nats-server CPU 0 (taskset): a diagnosis of what the
// sharing of both cores by every process costs.
//
// With -memory N it measures instead what N items of 100 bytes cost a node:
// the process's RSS and Go heap before and after loading them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/bench/internal/load"
	"github.com/meshkit/mesh/bench/internal/machine"
	"github.com/meshkit/mesh/bench/internal/redisbench"
	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/cache"
)

const (
	rawName    = "raw nats echo"
	rawMGName  = "raw nats echo, MGET 16-sized"
	getName    = "cache GET (SDK, to owner)"
	mgetName   = "cache MGET 16 (SDK)"
	rMGetName  = "redis MGET 16"
	rGetName   = "redis GET"
	subjectRaw = "bench.cache.raw"
	// subjectSized answers with as many bytes as the request's Reply-Bytes
	// header says: the exchange of an MGET (keys in, values out) without a
	// cache behind it.
	subjectSized = "bench.cache.raw-sized"
	batch        = 16
	timeout      = bus.DefaultTimeout
)

type config struct {
	natsURL, redisAddr string
	duration, warmup   time.Duration
	concs              []int
	keys, size         int
	memory             int
	cpuprofile, only   string
	rounds             int
	meshBin            string
	natsPID            int
	pin                bool
}

func main() {
	var cfg config
	var concs string
	flag.StringVar(&cfg.natsURL, "nats", bus.DefaultURL, "NATS server `URL`")
	flag.StringVar(&cfg.redisAddr, "redis", "", "Redis `host:port`; empty: no Redis rows")
	flag.DurationVar(&cfg.duration, "duration", 3*time.Second, "measured time of each cell")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured warm-up before each cell")
	flag.StringVar(&concs, "c", "1,16,64", "concurrency levels, comma-separated")
	flag.IntVar(&cfg.keys, "keys", 10000, "keys loaded before the reads")
	flag.IntVar(&cfg.size, "size", 100, "value `bytes`")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds of every cell, interleaved; the table shows the round of median ops/s")
	flag.IntVar(&cfg.memory, "memory", 0, "measure the memory of `N` items instead of the speed")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write a CPU profile to `file`")
	flag.StringVar(&cfg.only, "only", "", "run only the systems whose name matches this `regexp` (for diagnosis)")
	flag.StringVar(&cfg.meshBin, "mesh", "", "run the cache nodes in a `mesh` binary's process (mesh up --services cache); empty: in this process")
	flag.IntVar(&cfg.natsPID, "nats-pid", 0, "nats-server's `pid`, for its CPU time per request")
	flag.BoolVar(&cfg.pin, "pin", false, "give the servers (echo, mesh, redis-server) CPU 1 and this process and nats-server CPU 0 (with -mesh; for diagnosis)")
	handoffKeys := flag.Int("handoff", 0, "measure the hand-off of `N` keys on a join and a crash instead of the speed")
	echo := flag.Bool("echo", false, "serve the raw NATS echo until killed (the benchmark starts itself so with -mesh)")
	flag.Parse()
	if *echo {
		if err := serveEcho(context.Background(), cfg.natsURL); err != nil {
			fatal(err)
		}
		select {}
	}
	var err error
	if cfg.concs, err = load.ParseLevels(concs); err != nil {
		fatal(fmt.Errorf("-c: %w", err))
	}
	if *handoffKeys > 0 {
		err = handoff(context.Background(), cfg, *handoffKeys, os.Stdout)
	} else if cfg.memory > 0 {
		err = memory(context.Background(), cfg, os.Stdout)
	} else {
		err = run(context.Background(), cfg, os.Stdout)
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "cache:", err)
	os.Exit(1)
}

func connect(ctx context.Context, url, name string) (*nats.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return bus.Connect(ctx, bus.Options{URL: url, Name: name})
}

// mesh is the cache under test, with a client on a connection of its own.
// The nodes run in a `mesh up` process of their own when a mesh binary is
// given (as users run them), else in this process as `mesh up` runs them
// (internal/node: the nodes on one connection).
type mesh struct {
	proc   *exec.Cmd  // the mesh process, or
	srv    *nats.Conn // the nodes' connection in this process
	nodes  *node.Node
	cli    *nats.Conn
	client *cache.Client
}

func startMesh(ctx context.Context, cfg config, nodes, replicas int) (*mesh, error) {
	m := &mesh{}
	var err error
	if cfg.meshBin != "" {
		m.proc = cfg.server(cfg.meshBin, "--nats", cfg.natsURL, "--log-level", "warn", "up", "--services", "cache",
			"--node", "bench", "--cache-nodes", strconv.Itoa(nodes), "--cache-replicas", strconv.Itoa(replicas), "--cache-max-bytes", "4GiB")
		m.proc.Stdout, m.proc.Stderr = io.Discard, os.Stderr
		err = m.proc.Start()
	} else if m.srv, err = connect(ctx, cfg.natsURL, "bench-cache-nodes"); err == nil {
		m.nodes, err = node.Start(ctx, m.srv, []string{"cache"}, node.Env{
			Node: "bench", Logger: zerolog.Nop(),
			Cache: node.CacheEnv{Nodes: nodes, Replicas: replicas, MaxBytes: 4 << 30},
		})
	}
	if err != nil {
		m.stop()
		return nil, err
	}
	if m.cli, err = connect(ctx, cfg.natsURL, "bench-cache-client"); err != nil {
		m.stop()
		return nil, err
	}
	if m.client, err = cache.NewClient(m.cli, cache.ClientConfig{Replicas: replicas}); err == nil {
		err = m.client.Start(ctx)
	}
	if err == nil {
		err = m.settle(ctx, nodes)
	}
	if err != nil {
		m.stop()
		return nil, err
	}
	return m, nil
}

// settle waits until the client and every node route by a ring of n nodes.
func (m *mesh) settle(ctx context.Context, n int) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		st, err := m.client.Stats(ctx)
		agreed := err == nil && len(st.Nodes) == n && m.client.Ring().Len() == n
		for _, nd := range st.Nodes {
			agreed = agreed && nd.Members == n
		}
		if agreed {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the cache nodes did not settle on a ring of %d in 20s", n)
}

func (m *mesh) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if m.client != nil {
		_ = m.client.Close(ctx)
	}
	if m.nodes != nil {
		_ = m.nodes.Stop(ctx)
	}
	if m.proc != nil && m.proc.Process != nil {
		_ = m.proc.Process.Signal(os.Interrupt)
		_ = m.proc.Wait()
	}
	for _, nc := range []*nats.Conn{m.cli, m.srv} {
		if nc != nil {
			nc.Close()
		}
	}
}

// With -pin, the servers run on one CPU and the clients and nats-server on
// the other, as where a server has a core of its own: a request's processes
// no longer take turns on the same core's caches.
const clientCPU, serverCPU = 0, 1

// server returns the command that starts a server process, on serverCPU
// with -pin.
func (cfg config) server(name string, args ...string) *exec.Cmd {
	if cfg.pin {
		return exec.Command("taskset", append([]string{"-c", strconv.Itoa(serverCPU), name}, args...)...)
	}
	return exec.Command(name, args...)
}

// pin moves every thread of process pid to the CPU.
func pin(pid, cpu int) error {
	if out, err := exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(pid)).CombinedOutput(); err != nil {
		return fmt.Errorf("taskset pid %d: %v: %s", pid, err, out)
	}
	return nil
}

// pid is the mesh process's id, 0 when the nodes run in this one.
func (m *mesh) pid() int {
	if m.proc == nil {
		return 0
	}
	return m.proc.Process.Pid
}

// pids are the processes a request involves: this one (the client), the
// server's (0: this one as well) and nats-server.
func (cfg config) pids(server int) []int {
	return []int{os.Getpid(), server, cfg.natsPID}
}

// serveEcho is the raw NATS echo: in a process of its own when the cache
// runs in one (this program started with -echo), else on a connection of
// this process.
func serveEcho(ctx context.Context, url string) error {
	nc, err := connect(ctx, url, "bench-raw-echo")
	if err != nil {
		return err
	}
	if _, err := nc.QueueSubscribe(subjectRaw, "q", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return err
	}
	var replies sync.Map // size -> []byte
	if _, err := nc.QueueSubscribe(subjectSized, "q", func(m *nats.Msg) {
		n, _ := strconv.Atoi(m.Header.Get("Reply-Bytes"))
		r, ok := replies.Load(n)
		if !ok {
			r, _ = replies.LoadOrStore(n, make([]byte, max(n, 0)))
		}
		_ = m.Respond(r.([]byte))
	}); err != nil {
		return err
	}
	return nc.Flush()
}

func key(i int) string { return fmt.Sprintf("bench:%07d", i) }

// fill stores n keys with values of size bytes, in batches.
func (m *mesh) fill(ctx context.Context, n, size int) error {
	value := make([]byte, size)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	items := map[string][]byte{}
	for i := range n {
		items[key(i)] = value
		if len(items) == 500 || i == n-1 {
			if err := m.client.MSet(ctx, items, 0); err != nil {
				return err
			}
			clear(items)
		}
	}
	return nil
}

func checkLen(got, want int) error {
	if got != want {
		return fmt.Errorf("value of %d bytes, want %d", got, want)
	}
	return nil
}

// keysFor returns a per-worker source of random loaded keys.
func keysFor(n int) func(i int) string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = key(i)
	}
	rngs := make([]*rand.Rand, 1024)
	for i := range rngs {
		rngs[i] = rand.New(rand.NewPCG(uint64(i), 7))
	}
	return func(i int) string { return keys[rngs[i%len(rngs)].IntN(n)] }
}

func run(ctx context.Context, cfg config, w io.Writer) error {
	if cfg.pin {
		if cfg.meshBin == "" || cfg.natsPID == 0 || runtime.NumCPU() < 2 {
			return errors.New("-pin needs -mesh, -nats-pid and 2 CPUs")
		}
		for _, pid := range []int{os.Getpid(), cfg.natsPID} {
			if err := pin(pid, clientCPU); err != nil {
				return err
			}
		}
	}
	payload := make([]byte, cfg.size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	echoPID := 0 // in this process
	if cfg.meshBin != "" {
		echo := cfg.server(os.Args[0], "-echo", "-nats", cfg.natsURL)
		echo.Stderr = os.Stderr
		if err := echo.Start(); err != nil {
			return err
		}
		defer func() { _ = echo.Process.Kill(); _ = echo.Wait() }()
		echoPID = echo.Process.Pid
	} else if err := serveEcho(ctx, cfg.natsURL); err != nil {
		return err
	}

	m, err := startMesh(ctx, cfg, 2, 2)
	if err != nil {
		return err
	}
	if err := m.fill(ctx, cfg.keys, cfg.size); err != nil {
		m.stop()
		return err
	}
	pick := keysFor(cfg.keys)
	// The MGET-sized echo sends 16 keys and gets back as many bytes as the
	// cache's msgpack reply of 16 values.
	mgReply := cache.MGetReply{Values: make([]cache.GetReply, batch)}
	for i := range mgReply.Values {
		mgReply.Values[i] = cache.GetReply{Found: true, Value: payload}
	}
	mgBody, err := bus.MsgPack.Marshal(mgReply)
	if err != nil {
		return err
	}
	sizedReq := func(i int) *nats.Msg {
		keys := make([]string, batch)
		for j := range keys {
			keys[j] = pick(i)
		}
		body, _ := bus.MsgPack.Marshal(cache.MGetRequest{Keys: keys})
		msg := nats.NewMsg(subjectSized)
		msg.Header.Set("Reply-Bytes", strconv.Itoa(len(mgBody)))
		msg.Data = body
		return msg
	}
	targets := []load.Target{
		{Name: rawName, Call: func(_ context.Context, _ int) error {
			r, err := m.cli.Request(subjectRaw, payload, timeout)
			if err != nil {
				return err
			}
			return checkLen(len(r.Data), len(payload))
		}},
		{Name: getName, Call: func(ctx context.Context, i int) error {
			v, err := m.client.Get(ctx, pick(i))
			if err != nil {
				return err
			}
			return checkLen(len(v), cfg.size)
		}},
		{Name: "cache GET (mesh.cache.get, any node)", Call: func(ctx context.Context, i int) error {
			r, err := bus.Request[cache.GetRequest, cache.GetReply](ctx, m.cli, cache.SubjectGet, cache.GetRequest{Key: pick(i)})
			if err != nil {
				return err
			}
			return checkLen(len(r.Value), cfg.size)
		}},
		{Name: "cache SET (SDK, owner + replica)", Call: func(ctx context.Context, i int) error {
			return m.client.Set(ctx, pick(i), payload, 0)
		}},
		{Name: rawMGName, Call: func(_ context.Context, i int) error {
			r, err := m.cli.RequestMsg(sizedReq(i), timeout)
			if err != nil {
				return err
			}
			return checkLen(len(r.Data), len(mgBody))
		}},
		{Name: mgetName, Call: func(ctx context.Context, i int) error {
			keys := make([]string, batch)
			for j := range keys {
				keys[j] = pick(i)
			}
			vs, err := m.client.MGet(ctx, keys...)
			if err != nil {
				return err
			}
			for _, v := range vs {
				if err := checkLen(len(v), cfg.size); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	redisInfo, redisPID := "not run", 0
	if cfg.redisAddr != "" {
		rdb := redisbench.Client(cfg.redisAddr, cfg.concs[len(cfg.concs)-1], timeout)
		defer rdb.Close()
		pipe := rdb.Pipeline()
		for i := range cfg.keys {
			pipe.Set(ctx, key(i), payload, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			m.stop()
			return fmt.Errorf("redis %s: %w", cfg.redisAddr, err)
		}
		redisInfo = redisbench.Describe(ctx, rdb, cfg.redisAddr)
		redisPID = redisbench.PID(ctx, rdb)
		if cfg.pin {
			if err := pin(redisPID, serverCPU); err != nil {
				m.stop()
				return err
			}
		}
		targets = append(targets,
			load.Target{Name: rGetName, Call: func(ctx context.Context, i int) error {
				b, err := rdb.Get(ctx, pick(i)).Bytes()
				if err != nil {
					return err
				}
				return checkLen(len(b), cfg.size)
			}},
			load.Target{Name: "redis SET", Call: func(ctx context.Context, i int) error {
				return rdb.Set(ctx, pick(i), payload, 0).Err()
			}},
			load.Target{Name: rMGetName, Call: func(ctx context.Context, i int) error {
				keys := make([]string, batch)
				for j := range keys {
					keys[j] = pick(i)
				}
				vs, err := rdb.MGet(ctx, keys...).Result()
				if err != nil {
					return err
				}
				for _, v := range vs {
					s, _ := v.(string)
					if err := checkLen(len(s), cfg.size); err != nil {
						return err
					}
				}
				return nil
			}})
	}

	for i, t := range targets {
		switch {
		case strings.HasPrefix(t.Name, "cache"):
			targets[i].PIDs = cfg.pids(m.pid())
		case strings.HasPrefix(t.Name, "redis"):
			targets[i].PIDs = cfg.pids(redisPID)[:2] // no NATS
		default:
			targets[i].PIDs = cfg.pids(echoPID)
		}
	}
	stopProfile, err := machine.CPUProfile(cfg.cpuprofile)
	if err != nil {
		m.stop()
		return err
	}
	only, err := regexp.Compile(cfg.only)
	if err != nil {
		m.stop()
		return fmt.Errorf("-only: %w", err)
	}
	var results []load.Result
	measure := func(ts []load.Target) {
		ts = slices.DeleteFunc(ts, func(t load.Target) bool { return !only.MatchString(t.Name) })
		results = append(results, load.Rounds(ctx, ts, cfg.concs, cfg.rounds, cfg.warmup, cfg.duration, func(r load.Result) {
			fmt.Fprintf(os.Stderr, "%-44s c=%-3d %9.0f ops/s  p50 %v  p99 %v  errors %d\n",
				r.System, r.Conc, r.OpsPerSec(), r.Quantile(0.5), r.Quantile(0.99), r.Errs)
		})...)
	}
	measure(targets)
	m.stop()

	// The forwarded path needs a node that holds no copy of the key: with
	// R = 1 the other node of two.
	m, err = startMesh(ctx, cfg, 2, 1)
	if err != nil {
		return err
	}
	defer m.stop()
	if err := m.fill(ctx, cfg.keys, cfg.size); err != nil {
		return err
	}
	members := m.client.Ring().Members()
	measure([]load.Target{{Name: "cache GET forwarded (R=1, to the non-owner)", PIDs: cfg.pids(m.pid()), Call: func(ctx context.Context, i int) error {
		k := pick(i)
		other := members[0].ID
		if other == m.client.Ring().Owner(k) {
			other = members[1].ID
		}
		r, err := bus.Request[cache.GetRequest, cache.GetReply](ctx, m.cli, cache.NodeSubject(other, cache.OpGet), cache.GetRequest{Key: k})
		if err != nil {
			return err
		}
		return checkLen(len(r.Value), cfg.size)
	}}})
	stopProfile()

	fmt.Fprintf(w, "# cache, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- machine: %s, nproc %d, GOMAXPROCS %d, %s/%s, %s\n", machine.CPUModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(w, "- nats-server %s at %s (separate process); redis %s\n", m.cli.ConnectedServerVersion(), cfg.natsURL, redisInfo)
	where := "in a `mesh up --services cache --cache-nodes 2` process of their own, the raw echo in another"
	if cfg.meshBin == "" {
		where = "in this process on one NATS connection (as `mesh up --cache-nodes 2`), the raw echo on another"
	}
	if cfg.pin {
		where += fmt.Sprintf("; pinned: the servers (echo, mesh, redis-server) on CPU %d, this process and nats-server on CPU %d", serverCPU, clientCPU)
	}
	fmt.Fprintf(w, "- cache: 2 nodes %s, R = 2 unless said; the clients in this process on one connection; %d keys of %d B loaded, each request picks keys at random; per cell %d interleaved rounds of %v measured after %v warm-up, the table shows the round of median ops/s\n\n",
		where, cfg.keys, cfg.size, cfg.rounds, cfg.duration, cfg.warmup)
	return report(w, results)
}

func report(w io.Writer, results []load.Result) error {
	find := func(name string, c int) *load.Result {
		for i, r := range results {
			if r.System == name && r.Conc == c {
				return &results[i]
			}
		}
		return nil
	}
	perOp := func(name string) int {
		if strings.Contains(name, "MGET") {
			return batch
		}
		return 1
	}
	fmt.Fprintln(w, "| system | c | ops/s | ops/s, all rounds | keys/s | p50 | p99 | ops vs raw echo | keys vs redis | CPU µs/op: client, server, NATS |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	failed := 0
	for _, r := range results {
		vsRaw, vsRedis := "-", "-"
		if b := find(rawName, r.Conc); b != nil && b.Ops > 0 {
			vsRaw = fmt.Sprintf("%.2f", r.OpsPerSec()/b.OpsPerSec())
		}
		redisTwin := map[string]string{getName: rGetName, mgetName: rMGetName, "cache SET (SDK, owner + replica)": "redis SET"}[r.System]
		if b := find(redisTwin, r.Conc); b != nil && b.Ops > 0 {
			vsRedis = fmt.Sprintf("%.2f", r.OpsPerSec()/b.OpsPerSec())
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %.0f | %s | %s | %s | %s | %s |\n", r.System, r.Conc, r.OpsPerSec(), r.Spread(), r.OpsPerSec()*float64(perOp(r.System)),
			micros(r.Quantile(0.5)), micros(r.Quantile(0.99)), vsRaw, vsRedis, cpuPerOp(r))
		if r.Errs > 0 || r.Ops == 0 {
			failed++
			fmt.Fprintf(os.Stderr, "%s c=%d: %d errors, the first: %v\n", r.System, r.Conc, r.Errs, r.FirstErr)
		}
	}
	top := results[len(results)-1].Conc
	for _, r := range results {
		top = max(top, r.Conc)
	}
	fmt.Fprintln(w)
	if g, raw := find(getName, top), find(rawName, top); g != nil && raw != nil {
		ratio, p99 := g.OpsPerSec()/raw.OpsPerSec(), float64(g.Quantile(0.99))/float64(raw.Quantile(0.99))
		fmt.Fprintf(w, "- goal GET at c=%d ≥ 0.95× raw echo: %.2f, %s; p99 ≤ 1.5× the echo's: %.2f×, %s\n", top, ratio, verdict(ratio >= 0.95), p99, verdict(p99 <= 1.5))
	}
	if mg, rmg := find(mgetName, top), find(rMGetName, top); mg != nil && rmg != nil {
		ratio := mg.OpsPerSec() / rmg.OpsPerSec()
		fmt.Fprintf(w, "- goal MGET 16 at c=%d ≥ 1.0× Redis MGET 16 in keys/s: %.2f, %s\n", top, ratio, verdict(ratio >= 1))
		if raw := find(rawMGName, top); raw != nil && raw.Ops > 0 {
			fmt.Fprintf(w, "- the transport's limit for that exchange, the raw echo of 16 keys for an MGET-sized reply: %.2f× Redis MGET 16; the cache's MGET reaches %.2f× it\n",
				raw.OpsPerSec()/rmg.OpsPerSec(), mg.OpsPerSec()/raw.OpsPerSec())
		}
	}
	if failed > 0 {
		return errors.New("some cells had errors")
	}
	return nil
}

// cpuPerOp renders the CPU time per request of each process of a cell
// ("-" where unknown, or where the server shares the client's process).
func cpuPerOp(r load.Result) string {
	var parts []string
	for i := range r.CPU {
		d := r.CPUPerOp(i)
		if d < 0 {
			parts = append(parts, "-")
			continue
		}
		parts = append(parts, fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)))
	}
	return strings.Join(parts, ", ")
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func micros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// memory loads n items of cfg.size bytes into one node and reports what they
// cost the process.
func memory(ctx context.Context, cfg config, w io.Writer) error {
	m, err := startMesh(ctx, config{natsURL: cfg.natsURL}, 1, 1) // in this process, to read its memory
	if err != nil {
		return err
	}
	defer m.stop()
	rss0, heap0 := settle()
	start := time.Now()
	if err := m.fill(ctx, cfg.memory, cfg.size); err != nil {
		return err
	}
	took := time.Since(start)
	st, err := m.client.Stats(ctx)
	if err != nil {
		return err
	}
	rss1, heap1 := settle()
	n := float64(st.Total.Items)
	keyLen := len(key(0))
	fmt.Fprintf(w, "# cache memory, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- machine: %s, nproc %d, %s; one node, R = 1, loaded with %d MSETs of 500 in %v\n", machine.CPUModel(), runtime.NumCPU(), runtime.Version(), cfg.memory/500, took.Round(time.Millisecond))
	fmt.Fprintf(w, "- items %d of %d B values and %d B keys; the store accounts %d B (%.0f B/item)\n", st.Total.Items, cfg.size, keyLen, st.Total.Bytes, float64(st.Total.Bytes)/n)
	fmt.Fprintf(w, "- process RSS %d MiB → %d MiB: %.0f B/item, %.2f× the value, %.2f× key + value\n", rss0>>20, rss1>>20, float64(rss1-rss0)/n, float64(rss1-rss0)/n/float64(cfg.size), float64(rss1-rss0)/n/float64(cfg.size+keyLen))
	fmt.Fprintf(w, "- Go heap in use %d MiB → %d MiB: %.0f B/item\n", heap0>>20, heap1>>20, float64(heap1-heap0)/n)
	ratio := float64(rss1-rss0) / n / float64(cfg.size)
	fmt.Fprintf(w, "- goal RSS per item ≤ 2× the payload: %.2f, %s\n", ratio, verdict(ratio <= 2))
	return nil
}

// settle collects garbage, returns freed memory to the OS and reads the
// process's RSS and the Go heap in use.
func settle() (rss, heap uint64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, err := os.ReadFile("/proc/self/statm")
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			rss = pages * uint64(os.Getpagesize())
		}
	}
	return rss, ms.HeapInuse
}
