// Package node runs the services of one mesh process, in order, and stops
// them in reverse order. `mesh up` runs all of them; `mesh serve NAME` one.
package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
	"github.com/meshkit/mesh/services/sys"
)

// Service is what a mesh service offers to its host process.
type Service interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// Env is what a process gives its services.
type Env struct {
	Logger      zerolog.Logger
	Observer    bus.Observer // request metrics; may be nil
	Replicas    int          // replicas of the streams and buckets a service creates; zero: 1
	MeshVersion string
	Node        string   // this process's name; zero: the host name
	Services    []string // the services this process runs
	Cache       CacheEnv
	// Connect, when set, gives each service a connection of its own (with
	// its own NATS user), which the node closes after stopping it. Zero:
	// every service uses the node's connection.
	Connect func(service string) (*nats.Conn, error)
	// SchedulerHistoryBytes bounds the scheduler's task records
	// (scheduler.Config.HistoryMaxBytes); zero: the service's default.
	SchedulerHistoryBytes int64
}

// CacheEnv configures the cache nodes of a process.
type CacheEnv struct {
	Nodes    int               // cache nodes in this process; zero: 1
	Replicas int               // copies of each key; zero: 2
	MaxBytes int64             // store bound of each node; zero: the service's default
	Loaders  map[string]string // namespace -> loader subject
}

// Def defines a service.
type Def struct {
	Name    string
	Summary string
	// Tour lists commands that show the service working, printed by `mesh up`.
	Tour []string
	New  func(nc *nats.Conn, env Env) (Service, error)
}

// Defs lists every service, in start order.
func Defs() []Def {
	return []Def{
		{
			Name:    "sys",
			Summary: "process information and echo",
			Tour: []string{
				`nats req mesh.sys.info ''`,
				`nats req mesh.sys.echo '{"hello":"mesh"}'`,
			},
			New: func(nc *nats.Conn, env Env) (Service, error) {
				return sys.New(nc, sys.Config{MeshVersion: env.MeshVersion, Node: env.Node, Services: env.Services, Logger: env.Logger, Observer: env.Observer})
			},
		},
		{
			Name:    "cache",
			Summary: "sharded, replicated in-memory cache",
			Tour: []string{
				`nats req mesh.cache.set '{"key":"greeting","value":"hello","ttl_ms":60000}'`,
				`nats req mesh.cache.get '{"key":"greeting"}'`,
				`nats req mesh.cache.stats ''`,
			},
			New: newCache,
		},
		{
			Name:    "lock",
			Summary: "fenced, server-leased locks and semaphores with fair waiting",
			Tour: []string{
				`nats req mesh.lock.acquire '{"name":"reports","owner":"me","ttl_ms":30000}'`,
				`nats req mesh.lock.inspect '{"name":"reports"}'`,
				`nats req mesh.lock.release '{"name":"reports","token":TOKEN}'`,
			},
			New: func(nc *nats.Conn, env Env) (Service, error) {
				return lock.New(nc, lock.Config{Replicas: env.Replicas, Logger: env.Logger, Observer: env.Observer})
			},
		},
		{
			Name:    "scheduler",
			Summary: "delayed, periodic and retried tasks on JetStream work queues",
			Tour: []string{
				`nats req mesh.scheduler.submit '{"queue":"emails","type":"welcome","payload":"ann@example.com","delay_ms":5000}'`,
				`nats req mesh.scheduler.status '{"id":"ID"}'`,
				`nats req mesh.scheduler.queues ''`,
				`mesh worker --queue emails --exec cat`,
			},
			New: func(nc *nats.Conn, env Env) (Service, error) {
				return scheduler.New(nc, scheduler.Config{Replicas: env.Replicas, HistoryMaxBytes: env.SchedulerHistoryBytes, Logger: env.Logger, Observer: env.Observer})
			},
		},
	}
}

// newCache creates the process's cache nodes, named after the process
// (<node>-<i> when there are several).
func newCache(nc *nats.Conn, env Env) (Service, error) {
	n := max(env.Cache.Nodes, 1)
	base := subjectToken(env.Node)
	var g cacheGroup
	for i := range n {
		id := base
		if n > 1 {
			id = fmt.Sprintf("%s-%d", base, i)
		}
		s, err := cache.New(nc, cache.Config{
			ID: id, Replicas: env.Cache.Replicas, MaxBytes: env.Cache.MaxBytes, Loaders: env.Cache.Loaders,
			Logger: env.Logger, Observer: env.Observer,
		})
		if err != nil {
			return nil, err
		}
		g.group = append(g.group, s)
		g.nodes = append(g.nodes, s)
	}
	return g, nil
}

// cacheGroup is a process's cache nodes. Start returns once every node's
// ring holds them all (or after converged, at most), so that the first
// writes find their replicas instead of a ring of one.
type cacheGroup struct {
	group
	nodes []*cache.Server
}

// converged bounds the wait for the nodes' rings.
const converged = 5 * time.Second

func (g cacheGroup) Start(ctx context.Context) error {
	if err := g.group.Start(ctx); err != nil {
		return err
	}
	wait := time.NewTimer(converged)
	defer wait.Stop()
	for _, s := range g.nodes {
		for {
			changed := s.Changed()
			if s.Ring().Len() >= len(g.nodes) {
				break
			}
			select {
			case <-changed:
			case <-wait.C:
				return nil // the rings will converge while the nodes serve
			case <-ctx.Done():
				return errors.Join(ctx.Err(), g.Stop(context.WithoutCancel(ctx)))
			}
		}
	}
	return nil
}

// subjectToken makes a name usable as a subject token.
func subjectToken(name string) string {
	if name == "" {
		name = "mesh"
	}
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, name)
}

// group runs several instances of a service as one.
type group []Service

func (g group) Start(ctx context.Context) error {
	for i, s := range g {
		if err := s.Start(ctx); err != nil {
			return errors.Join(err, group(g[:i]).Stop(ctx))
		}
	}
	return nil
}

func (g group) Stop(ctx context.Context) error {
	var errs []error
	for i := len(g) - 1; i >= 0; i-- {
		errs = append(errs, g[i].Stop(ctx))
	}
	return errors.Join(errs...)
}

// Names lists the names of every service.
func Names() []string {
	var names []string
	for _, d := range Defs() {
		names = append(names, d.Name)
	}
	return names
}

// Node is the set of services running in this process.
type Node struct {
	log     zerolog.Logger
	running []running
}

type running struct {
	name string
	svc  Service
	nc   *nats.Conn // the service's own connection (Env.Connect), or nil
}

// Start ensures the event stream, then creates and starts the named services
// (all when names is empty) in the order of Defs. If one fails, those already
// started are stopped.
func Start(ctx context.Context, nc *nats.Conn, names []string, env Env) (*Node, error) {
	all := Names()
	if len(names) == 0 {
		names = all
	}
	for _, n := range names {
		if !slices.Contains(all, n) {
			return nil, fmt.Errorf("unknown service %q (services: %s)", n, strings.Join(all, ", "))
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if _, err := bus.EnsureEventStream(ctx, js, bus.EventStreamConfig{Replicas: env.Replicas}); err != nil {
		return nil, err
	}
	env.Services = names
	n := &Node{log: env.Logger}
	for _, d := range Defs() {
		if !slices.Contains(names, d.Name) {
			continue
		}
		snc, own, err := nc, (*nats.Conn)(nil), error(nil)
		if env.Connect != nil {
			if own, err = env.Connect(d.Name); err != nil {
				return nil, errors.Join(fmt.Errorf("connecting %s: %w", d.Name, err), n.Stop(ctx))
			}
			snc = own
		}
		svc, err := d.New(snc, env)
		if err == nil {
			err = svc.Start(ctx)
		}
		if err != nil {
			if own != nil {
				own.Close()
			}
			return nil, errors.Join(fmt.Errorf("starting %s: %w", d.Name, err), n.Stop(ctx))
		}
		n.running = append(n.running, running{d.Name, svc, own})
		env.Logger.Info().Str("service", d.Name).Msg("service started")
	}
	return n, nil
}

// Stop stops the services in reverse order of start.
func (n *Node) Stop(ctx context.Context) error {
	var errs []error
	for i := len(n.running) - 1; i >= 0; i-- {
		r := n.running[i]
		if err := r.svc.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping %s: %w", r.name, err))
		}
		if r.nc != nil {
			_ = r.nc.Flush()
			r.nc.Close()
		}
		n.log.Info().Str("service", r.name).Msg("service stopped")
	}
	n.running = nil
	return errors.Join(errs...)
}
