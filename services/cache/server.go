package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

// Version is the version of the cache service.
const Version = "0.1.0"

// Service is the name of the cache service, in micro discovery and in the
// heartbeat subjects of its nodes.
const Service = "cache"

// Config configures a Server, one node of the cache.
type Config struct {
	// ID names the node: a subject token, stable across restarts so that a
	// restarted node keeps its place in the ring. Required.
	ID string
	// Replicas is R, the copies of each key (the owner and R-1 replicas),
	// at most the number of nodes. Zero: 2.
	Replicas int
	// MaxBytes bounds the node's store: keys, values and a fixed overhead
	// per entry. Zero: 256 MiB.
	MaxBytes int64
	// MaxValueBytes bounds one value. Zero: DefaultMaxValueBytes (1 MiB).
	MaxValueBytes int
	// Loaders maps a namespace (the part of a key before its first ':') to
	// the subject of its loader: on a miss, the key's owner asks the loader
	// for the value, once per key however many requests wait for it.
	Loaders map[string]string
	// LoaderTimeout bounds a loader's answer. Zero: 5s.
	LoaderTimeout time.Duration
	// Grace is how long after a change of the ring a new owner asks the
	// previous owners for a key it misses (and after the node's start, its
	// replicas). Zero: 30s.
	Grace time.Duration
	// AttemptTimeout bounds one request to another node (a forward, a
	// replica write, a hand-off). Zero: 1s.
	AttemptTimeout time.Duration
	// Heartbeat is the membership interval H. Zero: 1s.
	Heartbeat time.Duration
	// AntiEntropy is the interval at which a node checks, besides after
	// every change of the ring, that the copy holders of its keys hold
	// them (see Rebalancing in the package doc). Zero: 30s.
	AntiEntropy time.Duration
	// HandoffRate bounds the keys per second a node hands off. Zero:
	// 250,000.
	HandoffRate int
	// LeaveTimeout bounds the hand-off of a node's keys when it stops
	// (Stop), besides half the time Stop's context has left. Zero: 30s.
	LeaveTimeout time.Duration
	// MaxConcurrent bounds the requests that wait on another node at once.
	// Zero: 1024.
	MaxConcurrent int
	// Logger, zero: no logs. Observer, zero: none.
	Logger   zerolog.Logger
	Observer bus.Observer
}

// Server is one cache node.
type Server struct {
	nc      *nats.Conn
	cfg     Config
	log     zerolog.Logger
	svc     *bus.Service
	events  *bus.Events
	store   *store
	ann     *membership.Announcer
	watcher *membership.Watcher
	started time.Time

	mu      sync.Mutex
	prev    []oldRing // rings replaced within the grace period, newest first
	without struct {  // the current ring without this node
		version uint64 // of the current ring
		r       *ring.Ring
	}
	fills singleflight.Group // the misses being resolved (fill)
	timer *time.Timer        // ends the grace period

	replies *replies // of the copies a set sends (own)

	clock clock      // versions of the writes this node owns
	parts *ring.Ring // no members: the partition of a key
	reb   rebalancer

	hits, misses, loads, handoffs, forwards atomic.Int64
}

// oldRing is a ring the node routed by until a change.
type oldRing struct {
	r     *ring.Ring
	until time.Time
}

// New returns a cache node ready to Start.
func New(nc *nats.Conn, cfg Config) (*Server, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 2
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 256 << 20
	}
	if cfg.MaxValueBytes <= 0 {
		cfg.MaxValueBytes = DefaultMaxValueBytes
	}
	if cfg.LoaderTimeout <= 0 {
		cfg.LoaderTimeout = 5 * time.Second
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = time.Second
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 1024
	}
	if cfg.AntiEntropy <= 0 {
		cfg.AntiEntropy = 30 * time.Second
	}
	if cfg.HandoffRate <= 0 {
		cfg.HandoffRate = 250_000
	}
	if cfg.LeaveTimeout <= 0 {
		cfg.LeaveTimeout = 30 * time.Second
	}
	if cfg.MaxBytes > 1<<46 {
		return nil, fmt.Errorf("cache: MaxBytes %d is too large", cfg.MaxBytes)
	}
	for ns, subj := range cfg.Loaders {
		if ns == "" || strings.Contains(ns, ":") || subj == "" || strings.ContainsAny(subj, " \t*>") {
			return nil, fmt.Errorf("cache: loader %q=%q: want a namespace without ':' and a subject", ns, subj)
		}
	}
	s := &Server{
		nc:  nc,
		cfg: cfg,
		log: cfg.Logger.With().Str("service", Service).Str("node", cfg.ID).Logger(),
	}
	var err error
	s.ann, err = membership.NewAnnouncer(nc, membership.AnnouncerConfig{
		Service: Service, ID: cfg.ID, Version: Version, Interval: cfg.Heartbeat,
		RingVersion:     func() uint64 { return s.ring().Version() },
		IdentitySubject: identitySubject(cfg.ID),
		Logger:          cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	s.watcher, err = membership.NewWatcher(nc, membership.WatcherConfig{
		Service: Service, Interval: cfg.Heartbeat, OnChange: s.onChange, IdentitySubject: identitySubject, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	var eps []bus.Endpoint
	for _, op := range []struct {
		name string
		h    bus.Handler
	}{{OpGet, s.get}, {OpSet, s.set}, {OpDel, s.del}, {OpMGet, s.mget}, {OpMSet, s.mset}} {
		eps = append(eps,
			bus.Endpoint{Name: op.name, Subject: "mesh.cache." + op.name, Handler: op.h, Inline: true},
			bus.Endpoint{Name: "node-" + op.name, Subject: NodeSubject(cfg.ID, op.name), Handler: op.h, Inline: true, NoQueue: true})
	}
	eps = append(eps,
		bus.Endpoint{Name: "node-" + OpPut, Subject: NodeSubject(cfg.ID, OpPut), Handler: bus.Typed(s.put), NoQueue: true},
		bus.Endpoint{Name: "node-" + OpDigest, Subject: NodeSubject(cfg.ID, OpDigest), Handler: bus.Typed(s.digest), NoQueue: true},
		bus.Endpoint{Name: OpStats, Subject: SubjectStats, Handler: bus.Typed(s.allStats)},
		bus.Endpoint{Name: "node-" + OpStats, Subject: NodeSubject(cfg.ID, OpStats), Handler: bus.Typed(s.nodeStats), NoQueue: true})
	s.svc, err = bus.NewService(nc, bus.Config{
		Name:        Service,
		Version:     Version,
		Description: "Sharded, replicated in-memory cache",
		Metadata:    map[string]string{"node": cfg.ID},
		Endpoints:   eps,
		// A batch of MaxBatch values at the limit would exceed any server's
		// max payload; the server's limit applies.
		MaxConcurrent: cfg.MaxConcurrent,
		Logger:        cfg.Logger,
		Observer:      cfg.Observer,
	})
	if err != nil {
		return nil, err
	}
	s.events = bus.NewEvents(nc, Service, cfg.ID)
	s.reb.init()
	if s.parts, err = ring.New(nil, ring.Config{}); err != nil {
		return nil, err
	}
	return s, nil
}

// ID is the node's id.
func (s *Server) ID() string { return s.cfg.ID }

// Start serves the node's subjects, then joins the ring. It returns once the
// node's ring holds the members that answered the first probe.
func (s *Server) Start(ctx context.Context) error {
	s.store = newStore(s.cfg.MaxBytes)
	s.started = time.Now()
	var err error
	if s.replies, err = newReplies(s.nc); err != nil {
		s.store.close()
		return fmt.Errorf("cache: %w", err)
	}
	if err := s.svc.Start(ctx); err != nil {
		s.replies.close()
		s.store.close()
		return err
	}
	if err := s.ann.Start(ctx); err != nil {
		_ = s.svc.Stop(ctx)
		s.replies.close()
		s.store.close()
		return fmt.Errorf("cache: %w", err)
	}
	if err := s.watcher.Start(ctx); err != nil {
		_ = s.ann.Stop(ctx)
		_ = s.svc.Stop(ctx)
		s.replies.close()
		s.store.close()
		return fmt.Errorf("cache: %w", err)
	}
	s.startRebalancer()
	return nil
}

// Stop hands the node's keys off to the nodes that hold them once it is
// gone (bounded by Config.LeaveTimeout and ctx), leaves the ring (the other
// nodes drop this one at once), finishes the requests in flight, hands off
// the keys written meanwhile, and stops.
func (s *Server) Stop(ctx context.Context) error {
	s.stopRebalancer()
	since := s.clock.next()
	s.leave(ctx, 0)
	err := errors.Join(s.ann.Stop(ctx), s.watcher.Stop(ctx), s.svc.Stop(ctx))
	s.leave(ctx, since)
	s.replies.close() // after the requests in flight, whose copies it answers
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	s.store.close()
	return err
}

// Done is closed once the node has stopped serving.
func (s *Server) Done() <-chan struct{} { return s.svc.Done() }

// Ring is the node's current view of the ring.
func (s *Server) Ring() *ring.Ring { return s.ring() }

// Changed returns a channel closed at the next change of the node's ring.
func (s *Server) Changed() <-chan struct{} { return s.watcher.Changed() }

func (s *Server) ring() *ring.Ring { return s.watcher.Ring() }

// owners returns the key's owners under r, or this node alone when r has
// no member (before the first heartbeat came back).
func (s *Server) owners(r *ring.Ring, key string, buf []string) []string {
	if r.Len() == 0 {
		return append(buf, s.cfg.ID)
	}
	return r.AppendOwners(buf, key, min(s.cfg.Replicas, r.Len()))
}

// ringWithout returns r without this node: the ring the other nodes routed
// by before this node joined.
func (s *Server) ringWithout(r *ring.Ring) *ring.Ring {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.without.r != nil && s.without.version == r.Version() {
		return s.without.r
	}
	ms := slices.DeleteFunc(r.Members(), func(m ring.Member) bool { return m.ID == s.cfg.ID })
	w, err := ring.New(ms, ring.Config{})
	if err != nil {
		w = nil // an empty ring
	}
	s.without.version, s.without.r = r.Version(), w
	return w
}

// onChange records the replaced ring for hand-offs and tells the mesh.
func (s *Server) onChange(prev, next *ring.Ring) {
	now := time.Now()
	s.mu.Lock()
	// A new slice each time: readers iterate the one they loaded unlocked.
	var rings []oldRing
	if prev.Len() > 0 {
		rings = append(rings, oldRing{prev, now.Add(s.cfg.Grace)})
	}
	for _, o := range s.prev {
		if !now.After(o.until) && len(rings) < 4 {
			rings = append(rings, o)
		}
	}
	s.prev = rings
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(s.cfg.Grace, s.endGrace)
	s.mu.Unlock()

	joined, left := diff(prev, next)
	s.log.Debug().Strs("joined", joined).Strs("left", left).Int("members", next.Len()).Msg("ring changed")
	// One node tells the mesh of joins and leaves: the first by id.
	if ms := next.Members(); len(ms) > 0 && ms[0].ID == s.cfg.ID {
		for _, id := range joined {
			s.emit("node_joined", map[string]any{"node": id, "members": next.Len()})
		}
		for _, id := range left {
			s.emit("node_left", map[string]any{"node": id, "members": next.Len()})
		}
	}
	s.reb.changes.Add(1)
	s.reb.kick(true)
}

// endGrace runs a hand-off once more at the end of the grace period, for
// the writes that raced the change.
func (s *Server) endGrace() { s.reb.kick(false) }

func (s *Server) emit(what string, data any) {
	if err := s.events.Emit(what, data); err != nil {
		s.log.Warn().Err(err).Str("event", what).Msg("cannot publish event")
	}
}

func diff(prev, next *ring.Ring) (joined, left []string) {
	ids := func(r *ring.Ring) []string {
		var out []string
		for _, m := range r.Members() {
			out = append(out, m.ID)
		}
		return out
	}
	p, n := ids(prev), ids(next)
	for _, id := range n {
		if !slices.Contains(p, id) {
			joined = append(joined, id)
		}
	}
	for _, id := range p {
		if !slices.Contains(n, id) {
			left = append(left, id)
		}
	}
	return joined, left
}
