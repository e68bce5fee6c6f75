package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
)

// DefaultInterval is the heartbeat interval H when a config leaves it zero.
const DefaultInterval = time.Second

// AnnouncerConfig configures an Announcer.
type AnnouncerConfig struct {
	Service string  // the service, a subject token; required
	ID      string  // the member id, a subject token, stable across restarts; required
	Weight  float64 // relative capacity; zero: 1
	Version string  // the service's version, for people reading heartbeats
	// Interval between heartbeats. Zero: DefaultInterval.
	Interval time.Duration
	// RingVersion, when set, returns the version of the ring the member
	// routes by; it travels in every heartbeat.
	RingVersion func() uint64
	// IdentitySubject, when set, is a subject on which the announcer
	// answers every request with its heartbeat: the probe by which
	// watchers configured with the same subject (WatcherConfig.
	// IdentitySubject) check a new member before trusting it. Put it
	// among the subjects the member serves (the cache: its node
	// subjects), so that the answer proves the member serves them.
	IdentitySubject string
	Logger          zerolog.Logger // zero: no logs
}

// Announcer makes one member known: it publishes a heartbeat every
// interval, answers probes at once, and publishes a leave when stopped.
type Announcer struct {
	nc      *nats.Conn
	cfg     AnnouncerConfig
	started time.Time

	mu       sync.Mutex
	probe    *nats.Subscription
	identity *nats.Subscription
	stop     chan struct{}
	done     chan struct{}
}

// NewAnnouncer checks cfg and returns an announcer ready to Start.
func NewAnnouncer(nc *nats.Conn, cfg AnnouncerConfig) (*Announcer, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	hb := Heartbeat{ID: cfg.ID, Weight: cfg.Weight, Version: cfg.Version, IntervalMs: cfg.Interval.Milliseconds()}
	if !validToken(cfg.Service) {
		return nil, fmt.Errorf("membership: invalid service name %q", cfg.Service)
	}
	if err := hb.check(""); err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	return &Announcer{nc: nc, cfg: cfg, done: make(chan struct{})}, nil
}

func (a *Announcer) heartbeat(leave bool) []byte {
	hb := Heartbeat{
		ID:         a.cfg.ID,
		Weight:     a.cfg.Weight,
		Version:    a.cfg.Version,
		Started:    bus.Time{Time: a.started},
		IntervalMs: a.cfg.Interval.Milliseconds(),
		Leave:      leave,
	}
	if a.cfg.RingVersion != nil {
		hb.RingVersion = FormatVersion(a.cfg.RingVersion())
	}
	b, _ := json.Marshal(hb) // a struct of plain fields always encodes
	return b
}

// Start publishes the first heartbeat and keeps publishing until Stop.
func (a *Announcer) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stop != nil {
		return errors.New("membership: announcer already started")
	}
	a.started = time.Now()
	subject := Subject(a.cfg.Service, a.cfg.ID)
	probe, err := a.nc.Subscribe(ProbeSubject(a.cfg.Service), func(m *nats.Msg) {
		if err := m.Respond(a.heartbeat(false)); err != nil {
			a.cfg.Logger.Debug().Err(err).Msg("cannot answer a membership probe")
		}
	})
	if err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	var identity *nats.Subscription
	if a.cfg.IdentitySubject != "" {
		identity, err = a.nc.Subscribe(a.cfg.IdentitySubject, func(m *nats.Msg) {
			if err := m.Respond(a.heartbeat(false)); err != nil {
				a.cfg.Logger.Debug().Err(err).Msg("cannot answer an identity probe")
			}
		})
		if err != nil {
			_ = probe.Unsubscribe()
			return fmt.Errorf("membership: %w", err)
		}
	}
	if err := a.nc.Publish(subject, a.heartbeat(false)); err != nil {
		_ = probe.Unsubscribe()
		if identity != nil {
			_ = identity.Unsubscribe()
		}
		return fmt.Errorf("membership: first heartbeat: %w", err)
	}
	a.probe, a.identity = probe, identity
	a.stop = make(chan struct{})
	go a.loop(subject)
	// Once Start returns, the server knows the probe subscription, so a
	// watcher started afterwards on another connection finds this member.
	if a.nc.IsConnected() {
		if err := a.nc.FlushTimeout(5 * time.Second); err != nil {
			a.cfg.Logger.Warn().Err(err).Msg("membership: probe subscription not confirmed by the server")
		}
	}
	return nil
}

func (a *Announcer) loop(subject string) {
	defer close(a.done)
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			if err := a.nc.Publish(subject, a.heartbeat(false)); err != nil {
				a.cfg.Logger.Warn().Err(err).Str("subject", subject).Msg("cannot publish heartbeat")
			}
		}
	}
}

// Stop stops the heartbeats and publishes a leave, so that watchers drop the
// member at once instead of after missed heartbeats.
func (a *Announcer) Stop(ctx context.Context) error {
	a.mu.Lock()
	if a.stop == nil {
		a.mu.Unlock()
		return nil
	}
	select {
	case <-a.stop:
		a.mu.Unlock()
		return nil
	default:
	}
	close(a.stop)
	_ = a.probe.Unsubscribe()
	if a.identity != nil {
		_ = a.identity.Unsubscribe()
	}
	a.mu.Unlock()
	select {
	case <-a.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := a.nc.Publish(Subject(a.cfg.Service, a.cfg.ID), a.heartbeat(true)); err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	if !a.nc.IsConnected() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		return a.nc.FlushTimeout(5 * time.Second)
	}
	return a.nc.FlushWithContext(ctx)
}

// Done is closed once the announcer has stopped publishing.
func (a *Announcer) Done() <-chan struct{} { return a.done }
