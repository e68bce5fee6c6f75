package membership

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/ring"
)

// DefaultMisses is how many heartbeats a member may miss before it is
// dropped, when a config leaves it zero.
const DefaultMisses = 3

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	Service string // the service whose members to watch; required
	// Interval is the heartbeat interval H assumed for a member whose
	// heartbeats do not state theirs. Zero: DefaultInterval.
	Interval time.Duration
	// Misses is k: a member silent for k of its intervals is dropped.
	// Zero: DefaultMisses.
	Misses int
	// Debounce is how long joins and leaves gather before the ring is
	// rebuilt, so a rolling restart does not flap it. Zero: Interval.
	// A member dropped for silence is removed at once: it was silent for
	// Misses intervals already.
	Debounce time.Duration
	// Ring configures the rings built; every process must use the same.
	Ring ring.Config
	// OnChange, when set, is called with the previous and the new ring
	// after each change, from the watcher's goroutine.
	OnChange func(prev, next *ring.Ring)
	Logger   zerolog.Logger // zero: no logs
}

// Member is a live member as the watcher knows it.
type Member struct {
	Heartbeat
	LastSeen time.Time
}

// Watcher keeps the live members of a service from their heartbeats, and the
// ring built from them. Lookups read the ring without a lock.
type Watcher struct {
	nc   *nats.Conn
	cfg  WatcherConfig
	log  zerolog.Logger
	ring ring.Holder

	mu      sync.Mutex
	members map[string]*Member
	changed chan struct{} // closed at the next ring change

	msgs chan *nats.Msg
	sub  *nats.Subscription
	stop chan struct{}
	done chan struct{}
}

// NewWatcher checks cfg and returns a watcher ready to Start.
func NewWatcher(nc *nats.Conn, cfg WatcherConfig) (*Watcher, error) {
	if !validToken(cfg.Service) {
		return nil, fmt.Errorf("membership: invalid service name %q", cfg.Service)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Misses <= 0 {
		cfg.Misses = DefaultMisses
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = cfg.Interval
	}
	if _, err := ring.New(nil, cfg.Ring); err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	return &Watcher{
		nc:      nc,
		cfg:     cfg,
		log:     cfg.Logger.With().Str("service", cfg.Service).Logger(),
		members: map[string]*Member{},
		changed: make(chan struct{}),
		msgs:    make(chan *nats.Msg, 4096),
		done:    make(chan struct{}),
	}, nil
}

// Ring returns the current ring (an empty one before the first member).
func (w *Watcher) Ring() *ring.Ring { return w.ring.Load() }

// Changed returns a channel closed at the next change of the ring.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Members returns the live members, sorted by id.
func (w *Watcher) Members() []Member {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Member, 0, len(w.members))
	for _, m := range w.members {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Start subscribes to the heartbeats, asks the members to announce
// themselves at once, builds the first ring from the answers and returns.
// It waits at most one interval for answers, less when they stop coming.
func (w *Watcher) Start(ctx context.Context) error {
	if w.stop != nil {
		return errors.New("membership: watcher already started")
	}
	sub, err := w.nc.ChanSubscribe(Subject(w.cfg.Service, "*"), w.msgs)
	if err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	w.sub = sub
	w.probe(ctx)
	w.rebuild()
	w.stop = make(chan struct{})
	go w.loop()
	return nil
}

// probe asks every member for a heartbeat and takes the answers until none
// came for a while, no member answered, an interval passed, or ctx ended.
func (w *Watcher) probe(ctx context.Context) {
	inbox := w.nc.NewRespInbox()
	answers := make(chan *nats.Msg, 1024)
	sub, err := w.nc.ChanSubscribe(inbox, answers)
	if err != nil {
		w.log.Warn().Err(err).Msg("membership probe failed")
		return
	}
	defer sub.Unsubscribe()
	if err := w.nc.PublishRequest(ProbeSubject(w.cfg.Service), inbox, nil); err != nil {
		w.log.Warn().Err(err).Msg("membership probe failed")
		return
	}
	quiet := min(w.cfg.Interval/4, 50*time.Millisecond)
	deadline := time.NewTimer(w.cfg.Interval)
	defer deadline.Stop()
	var idle <-chan time.Time
	for {
		select {
		case m := <-answers:
			if m.Header.Get("Status") == "503" { // no member is running
				return
			}
			w.handle(m, idTail(m.Subject, ""))
			idle = time.After(quiet)
		case <-idle:
			return
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// idTail returns the member id that a heartbeat subject names, or def.
func idTail(subject, def string) string {
	if i := strings.LastIndexByte(subject, '.'); i >= 0 && strings.HasPrefix(subject, "mesh.heartbeat.") && strings.Count(subject, ".") == 3 {
		return subject[i+1:]
	}
	return def
}

// Stop stops watching. The last ring stays readable.
func (w *Watcher) Stop(ctx context.Context) error {
	if w.stop == nil {
		return nil
	}
	select {
	case <-w.stop:
		return nil
	default:
	}
	_ = w.sub.Unsubscribe()
	close(w.stop)
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Watcher) loop() {
	defer close(w.done)
	tick := time.NewTicker(max(w.cfg.Interval/10, time.Millisecond))
	defer tick.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-w.stop:
			return
		case m := <-w.msgs:
			if w.handle(m, idTail(m.Subject, "?")) && debounce == nil {
				debounce = time.After(w.cfg.Debounce)
			}
		case <-debounce:
			debounce = nil
			w.rebuild()
		case now := <-tick.C:
			if w.expire(now) {
				w.rebuild()
			}
		}
	}
}

// handle applies a heartbeat and reports whether the member set changed.
func (w *Watcher) handle(m *nats.Msg, subjectID string) bool {
	hb, err := decodeHeartbeat(subjectID, m.Data)
	if err != nil {
		w.log.Warn().Err(err).Str("subject", m.Subject).Msg("ignoring a malformed heartbeat")
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	old, known := w.members[hb.ID]
	if hb.Leave {
		delete(w.members, hb.ID)
		return known
	}
	w.members[hb.ID] = &Member{Heartbeat: hb, LastSeen: time.Now()}
	return !known || old.Weight != hb.Weight
}

// expire drops the members silent for Misses of their intervals.
func (w *Watcher) expire(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	dropped := false
	for id, m := range w.members {
		interval := w.cfg.Interval
		if m.IntervalMs > 0 {
			interval = time.Duration(m.IntervalMs) * time.Millisecond
		}
		if now.Sub(m.LastSeen) > time.Duration(w.cfg.Misses)*interval {
			delete(w.members, id)
			dropped = true
			w.log.Info().Str("member", id).Dur("silent_ms", now.Sub(m.LastSeen)).Msg("member missed its heartbeats")
		}
	}
	return dropped
}

// rebuild builds the ring of the current members and swaps it in if the
// placement changed.
func (w *Watcher) rebuild() {
	w.mu.Lock()
	members := make([]ring.Member, 0, len(w.members))
	for _, m := range w.members {
		members = append(members, ring.Member{ID: m.ID, Weight: m.Weight})
	}
	w.mu.Unlock()
	next, err := ring.New(members, w.cfg.Ring)
	if err != nil { // heartbeats are checked, so this is a bug
		w.log.Error().Err(err).Msg("cannot build the ring")
		return
	}
	prev := w.ring.Load()
	if prev != nil && prev.Version() == next.Version() {
		return
	}
	w.ring.Store(next)
	w.mu.Lock()
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	w.log.Info().Int("members", next.Len()).Str("ring_version", FormatVersion(next.Version())).Msg("ring changed")
	if w.cfg.OnChange != nil {
		w.cfg.OnChange(prev, next)
	}
}
