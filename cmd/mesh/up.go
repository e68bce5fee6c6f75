package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/embed"
)

// runFlags are shared by up and serve.
type runFlags struct {
	Replicas int    `env:"MESH_REPLICAS" default:"1" help:"Replicas of the streams and buckets the services create (3 on a 3-node cluster)."`
	Metrics  string `env:"MESH_METRICS" placeholder:"ADDR" help:"Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9090) at /metrics."`
	Pprof    bool   `env:"MESH_PPROF" help:"Also serve Go's profiles (CPU, heap, goroutines) at /debug/pprof/ on the --metrics address."`
	Node     string `env:"MESH_NODE" help:"Name of this process in the mesh (default: the host name)."`

	CacheNodes               int               `name:"cache-nodes" env:"MESH_CACHE_NODES" default:"1" help:"Cache nodes in this process (several are for trying things out; in production run one per process)."`
	CacheReplicas            int               `name:"cache-replicas" env:"MESH_CACHE_REPLICAS" default:"2" help:"Copies of each cache key, at most the number of cache nodes."`
	CacheMaxBytes            string            `name:"cache-max-bytes" env:"MESH_CACHE_MAX_BYTES" default:"256MiB" help:"Memory bound of each cache node's store (e.g. 64MiB, 2GiB)."`
	SchedulerHistoryMaxBytes string            `name:"scheduler-history-max-bytes" env:"MESH_SCHEDULER_HISTORY_MAX_BYTES" default:"1GiB" help:"Bound of the scheduler's task records (the stream MESH_TASK_HISTORY); past it the oldest go first."`
	CacheLoaders             map[string]string `name:"cache-loader" env:"MESH_CACHE_LOADERS" placeholder:"NS=SUBJECT;..." help:"Read-through loaders: on a miss of a key NS:..., its owner requests the value from SUBJECT."`
}

// cacheEnv checks the cache flags.
func (f runFlags) cacheEnv() (node.CacheEnv, error) {
	var maxBytes int64
	if f.CacheMaxBytes != "" {
		var err error
		if maxBytes, err = parseBytes(f.CacheMaxBytes); err != nil {
			return node.CacheEnv{}, fmt.Errorf("--cache-max-bytes: %w", err)
		}
	}
	if f.CacheNodes < 0 || f.CacheReplicas < 0 {
		return node.CacheEnv{}, errors.New("--cache-nodes and --cache-replicas must be at least 1")
	}
	return node.CacheEnv{Nodes: f.CacheNodes, Replicas: f.CacheReplicas, MaxBytes: maxBytes, Loaders: f.CacheLoaders}, nil
}

// parseBytes reads a size such as 512, 64KiB, 256MiB or 2GiB (KB, MB, GB are
// taken as the same powers of two).
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"KB", 10}, {"MB", 20}, {"GB", 30}, {"K", 10}, {"M", 20}, {"G", 30}, {"B", 0}}
	num, shift := strings.TrimSpace(s), uint(0)
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, shift = strings.TrimSpace(n), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > 1<<(46-shift) {
		return 0, fmt.Errorf("%q is not a size such as 256MiB", s)
	}
	return n << shift, nil
}

type upCmd struct {
	runFlags
	Listen   string   `env:"MESH_LISTEN" default:"127.0.0.1:4222" help:"Client address of the embedded NATS server."`
	Data     string   `env:"MESH_DATA" default:".mesh/data" help:"JetStream store directory of the embedded server, locked while it runs: a second mesh needs its own."`
	Sync     string   `env:"MESH_SYNC" default:"default" help:"fsync policy of the store: default (NATS's: every 2 minutes), always (every write; much slower), or an interval such as 10s."`
	Services []string `env:"MESH_SERVICES" placeholder:"NAME,..." help:"Services to run (default: all)."`
	Auth     bool     `env:"MESH_AUTH" help:"Require credentials on the embedded server: a NATS user per service with the compose stack's permissions, and client and admin users; kept in --auth-dir."`
	AuthDir  string   `name:"auth-dir" env:"MESH_AUTH_DIR" default:".mesh/auth" help:"Where --auth keeps the credentials (made at the first run)."`
	Console  string   `env:"MESH_CONSOLE" default:"127.0.0.1:4280" placeholder:"ADDR" help:"Serve the web console on ADDR, a loopback address; off: no console."`
	consoleFlags
}

type serveCmd struct {
	runFlags
	Service string `arg:"" help:"The service to run."`
}

func (c *upCmd) Run(a *app) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.run(ctx, a)
}

// run runs the mesh until ctx ends.
func (c *upCmd) run(ctx context.Context, a *app) error {
	var srv *embed.Server
	var auth *meshAuth
	opts := a.conn.options("mesh up", a.log)
	if c.Auth && a.conn.NATS != "" {
		return errors.New("--auth sets up the embedded server's users; with --nats, give the services' credentials instead")
	}
	if a.conn.NATS == "" {
		if host, _, err := net.SplitHostPort(c.Listen); err == nil && !isLoopback(host) && !c.Auth {
			a.log.Warn().Str("listen", c.Listen).Msg("the embedded NATS server has no authentication and listens beyond loopback (see --auth)")
		}
		cfg := embed.Config{Listen: c.Listen, DataDir: c.Data, Sync: c.Sync, Name: nodeName(c.Node), Logger: a.log}
		so, err := cfg.Options()
		if err != nil {
			return err
		}
		if c.Auth {
			if auth, err = loadAuth(c.AuthDir); err != nil {
				return err
			}
			if err := auth.configure(so); err != nil {
				return err
			}
		}
		startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		srv, err = embed.StartOptions(startCtx, so, a.log, false)
		cancel()
		if errors.Is(err, embed.ErrDataDirInUse) {
			return fmt.Errorf("%w: stop that mesh, or give this one a data folder of its own with --data (MESH_DATA)", err)
		}
		if err != nil {
			return fmt.Errorf("starting the embedded NATS server on %s: %w", c.Listen, err)
		}
		a.log.Info().Str("url", srv.ClientURL()).Str("data", c.Data).Str("sync", c.Sync).Bool("auth", c.Auth).Msg("embedded NATS server ready")
		opts.URL = srv.ClientURL()
		if auth != nil {
			opts = auth.options("admin", opts)
			a.serviceConn = auth.serviceConn(opts)
		}
	}
	waitConsole := func() {}
	err := a.run(ctx, opts, c.runFlags, c.Services, func(nc *nats.Conn) {
		var url string
		url, waitConsole = a.startConsole(ctx, nc, c.Console, c.consoleFlags, c.CacheReplicas)
		printTour(a.out, nc.ConnectedUrl(), url, c.Services, auth)
	})
	waitConsole()
	if srv != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = errors.Join(err, srv.Shutdown(shutCtx))
		a.log.Info().Msg("embedded NATS server stopped")
	}
	return err
}

// Help is the detail of mesh serve --help: the services there are.
func (c *serveCmd) Help() string {
	var b strings.Builder
	b.WriteString("Services:\n")
	for _, d := range node.Defs() {
		fmt.Fprintf(&b, "  %-10s %s\n", d.Name, d.Summary)
	}
	b.WriteString("Several instances of a service may run at once, in one process or many.")
	return b.String()
}

func (c *serveCmd) Run(a *app) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := a.conn.options("mesh serve "+c.Service, a.log)
	opts.Retry = true // wait for a NATS server that is still starting
	return a.run(ctx, opts, c.runFlags, []string{c.Service}, nil)
}

// run connects, starts the services and the metrics endpoint, waits for ctx
// to end, and stops everything in reverse order.
func (a *app) run(ctx context.Context, opts bus.Options, f runFlags, services []string, ready func(*nats.Conn)) error {
	if f.Pprof && f.Metrics == "" {
		return errors.New("--pprof serves the profiles on the --metrics address: give one")
	}
	nc, err := bus.Connect(ctx, opts)
	if err != nil {
		return err
	}
	defer nc.Close()
	cacheEnv, err := f.cacheEnv()
	if err != nil {
		return err
	}
	env := node.Env{Logger: a.log, Replicas: f.Replicas, MeshVersion: version, Node: nodeName(f.Node), Cache: cacheEnv, Connect: a.serviceConn}
	if f.SchedulerHistoryMaxBytes != "" {
		if env.SchedulerHistoryBytes, err = parseBytes(f.SchedulerHistoryMaxBytes); err != nil {
			return fmt.Errorf("--scheduler-history-max-bytes: %w", err)
		}
	}
	var metrics *metricsServer
	if f.Metrics != "" {
		if metrics, err = startMetrics(f.Metrics, f.Pprof, a.log); err != nil {
			return err
		}
		env.Observer = metrics
	}
	n, err := startNode(ctx, nc, services, env, opts.Retry)
	if err == nil {
		if ready != nil {
			ready(nc)
		}
		<-ctx.Done()
		a.log.Info().Msg("stopping")
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = n.Stop(stopCtx)
	}
	if metrics != nil {
		err = errors.Join(err, metrics.close())
	}
	return errors.Join(err, nc.Flush())
}

// startNode starts the services. With retry (mesh serve), a start that
// failed because NATS or JetStream did not answer in time — a cluster still
// electing its leaders, say — is tried again, with a note in the log, until
// ctx ends.
func startNode(ctx context.Context, nc *nats.Conn, services []string, env node.Env, retry bool) (*node.Node, error) {
	wait := 500 * time.Millisecond
	for {
		n, err := node.Start(ctx, nc, services, env)
		if err == nil || !retry || ctx.Err() != nil {
			return n, err
		}
		if st := bus.AsError(err).Status; st != 503 && st != 408 {
			return nil, err
		}
		env.Logger.Warn().Err(err).Dur("retry_in_ms", wait).Msg("starting the services failed; retrying")
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// nodeName is the name of this process: the flag, else the host name.
func nodeName(flag string) string {
	if flag != "" {
		return flag
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "mesh"
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// printTour tells a person at the terminal how to talk to the mesh (with
// auth, as the client user) and where its console is.
func printTour(w io.Writer, url, console string, services []string, auth *meshAuth) {
	var b strings.Builder
	lines := []string{
		"nats micro ls                  # the running services",
		"nats sub 'mesh.events.>'       # what the services do",
	}
	for _, d := range node.Defs() {
		if len(services) > 0 && !slices.Contains(services, d.Name) {
			continue
		}
		lines = append(lines, d.Tour...)
	}
	if auth == nil {
		fmt.Fprintf(&b, "\nMesh is up. NATS: %s (no authentication: anyone who can reach it can do anything; see --auth)\n", url)
	} else {
		fmt.Fprintf(&b, "\nMesh is up. NATS: %s, with a user per service; credentials in %s\n", url, auth.dir)
		lines = auth.tour(url, lines)
	}
	if console != "" {
		fmt.Fprintf(&b, "Console: %s\n", console)
	}
	fmt.Fprintf(&b, "\n")
	for _, line := range lines {
		fmt.Fprintf(&b, "  %s\n", line)
	}
	fmt.Fprintf(&b, "\nCtrl-C stops it.\n\n")
	fmt.Fprint(w, b.String())
}
