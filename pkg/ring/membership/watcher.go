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
	// IdentitySubject, when set, names the subject on which member id
	// answers identity probes (AnnouncerConfig.IdentitySubject): a new
	// member joins the ring only once a probe there is answered with a
	// heartbeat of the same id and start time, and another incarnation
	// of a live member (a restart under the same id) takes its place only
	// if the live one no longer answers. Zero: members are trusted on
	// their first heartbeat.
	IdentitySubject func(id string) string
	Logger          zerolog.Logger // zero: no logs
}

// Member is a live member as the watcher knows it.
type Member struct {
	Heartbeat
	LastSeen time.Time

	trusted  bool      // in the ring: its identity was checked (or need not be)
	checking bool      // an identity probe is in flight
	checked  time.Time // when the last identity probe was sent
	claimed  time.Time // when another incarnation last claimed the id
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

	msgs     chan *nats.Msg
	sub      *nats.Subscription
	stop     chan struct{}
	done     chan struct{}
	probes   sync.WaitGroup  // identity probes in flight
	trust    chan struct{}   // a member became trusted
	probeCtx context.Context // ends at Stop
	endProbe context.CancelFunc
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
	w := &Watcher{
		nc:      nc,
		cfg:     cfg,
		log:     cfg.Logger.With().Str("service", cfg.Service).Logger(),
		members: map[string]*Member{},
		changed: make(chan struct{}),
		msgs:    make(chan *nats.Msg, 4096),
		done:    make(chan struct{}),
		trust:   make(chan struct{}, 1),
	}
	w.probeCtx, w.endProbe = context.WithCancel(context.Background())
	return w, nil
}

// Ring returns the current ring (an empty one before the first member).
func (w *Watcher) Ring() *ring.Ring { return w.ring.Load() }

// Changed returns a channel closed at the next change of the ring.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Members returns the live members in the ring (those whose identity was
// checked), sorted by id.
func (w *Watcher) Members() []Member {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Member, 0, len(w.members))
	for _, m := range w.members {
		if m.trusted {
			out = append(out, *m)
		}
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
	// The members that answered are checked before the first ring.
	w.probes.Wait()
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
	w.endProbe()
	select {
	case <-w.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	w.probes.Wait()
	return nil
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
		case <-w.trust:
			if debounce == nil {
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

// handle applies a heartbeat and reports whether the ring's member set
// changed. A heartbeat outside the bounds is ignored. An id belongs to one
// incarnation (start time) at a time: the first one seen keeps it until it
// leaves, expires, or stops answering its identity probe while another
// answers; heartbeats and leaves of another incarnation are ignored
// meanwhile, and so is a change of weight. With IdentitySubject, a new
// member joins the ring once its identity probe is answered.
func (w *Watcher) handle(m *nats.Msg, subjectID string) bool {
	hb, err := decodeHeartbeat(subjectID, m.Data)
	if err != nil {
		w.log.Warn().Err(err).Str("subject", m.Subject).Msg("ignoring a malformed heartbeat")
		return false
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	old, known := w.members[hb.ID]
	switch {
	case known && !old.Started.Equal(hb.Started.Time):
		if !hb.Leave && now.Sub(old.claimed) >= w.interval(old) {
			old.claimed = now
			w.log.Warn().Str("member", hb.ID).Time("started", hb.Started.Time).Time("live_started", old.Started.Time).
				Msg("another incarnation claims the id of a live member; the live one keeps it while it answers")
			if w.cfg.IdentitySubject != nil && old.trusted {
				w.takeOver(old.Heartbeat, hb)
			}
		}
		return false
	case hb.Leave:
		if known {
			delete(w.members, hb.ID)
		}
		return known && old.trusted
	case known:
		if old.Weight != hb.Weight {
			w.log.Warn().Str("member", hb.ID).Float64("weight", hb.Weight).Float64("live_weight", old.Weight).Msg("ignoring a change of weight of a live member")
			hb.Weight = old.Weight
		}
		old.Heartbeat, old.LastSeen = hb, now
		if !old.trusted && !old.checking && now.Sub(old.checked) >= w.interval(old) {
			w.check(old)
		}
		return false
	}
	nm := &Member{Heartbeat: hb, LastSeen: now, trusted: w.cfg.IdentitySubject == nil}
	w.members[hb.ID] = nm
	if !nm.trusted {
		w.check(nm)
	}
	return nm.trusted
}

// interval is a member's heartbeat interval.
func (w *Watcher) interval(m *Member) time.Duration {
	if m.IntervalMs > 0 {
		return time.Duration(m.IntervalMs) * time.Millisecond
	}
	return w.cfg.Interval
}

// probeWait bounds an identity probe.
func (w *Watcher) probeWait() time.Duration {
	return min(max(w.cfg.Interval, 500*time.Millisecond), 5*time.Second)
}

// check sends a member's identity probe; a matching answer makes it
// trusted. w.mu is held.
func (w *Watcher) check(m *Member) {
	m.checking, m.checked = true, time.Now()
	hb := m.Heartbeat
	w.probes.Add(1)
	go func() {
		defer w.probes.Done()
		seen := w.identities(hb.ID, w.probeWait(), func(seen map[int64]bool) bool { return seen[hb.Started.UnixMilli()] })
		ok := seen[hb.Started.UnixMilli()]
		w.mu.Lock()
		cur, present := w.members[hb.ID]
		current := present && cur.Started.Equal(hb.Started.Time)
		if current {
			cur.checking = false
			cur.trusted = ok
		}
		w.mu.Unlock()
		switch {
		case current && ok:
			w.log.Info().Str("member", hb.ID).Msg("member answered its identity probe")
			select {
			case w.trust <- struct{}{}:
			default:
			}
		case current:
			w.log.Warn().Str("member", hb.ID).Msg("member does not answer its identity probe; not in the ring")
		}
	}()
}

// takeOver lets the incarnation next have the id of the live one, live, if
// next answers its identity probe and live does not. w.mu is held.
func (w *Watcher) takeOver(live, next Heartbeat) {
	w.probes.Add(1)
	go func() {
		defer w.probes.Done()
		// Shorter than a probe: the live one must answer in this window,
		// which ends well before it would expire (k intervals).
		seen := w.identities(live.ID, w.probeWait()/2, nil)
		if !seen[next.Started.UnixMilli()] || seen[live.Started.UnixMilli()] {
			return
		}
		w.mu.Lock()
		cur, present := w.members[live.ID]
		if !present || !cur.Started.Equal(live.Started.Time) {
			w.mu.Unlock()
			return
		}
		next.Weight = cur.Weight // a restart keeps its place until its own heartbeats say otherwise
		w.members[live.ID] = &Member{Heartbeat: next, LastSeen: time.Now(), trusted: true, claimed: time.Now()}
		w.mu.Unlock()
		w.log.Info().Str("member", live.ID).Time("started", next.Started.Time).Msg("a new incarnation took over the id of a member that no longer answers")
		select {
		case w.trust <- struct{}{}:
		default:
		}
	}()
}

// identities sends an identity probe for id and returns the start times
// (Unix milliseconds) of the heartbeats that answered with that id within
// wait, or as soon as enough(seen) holds.
func (w *Watcher) identities(id string, wait time.Duration, enough func(map[int64]bool) bool) map[int64]bool {
	seen := map[int64]bool{}
	inbox := w.nc.NewRespInbox()
	answers := make(chan *nats.Msg, 16)
	sub, err := w.nc.ChanSubscribe(inbox, answers)
	if err != nil {
		return seen
	}
	defer sub.Unsubscribe()
	if err := w.nc.PublishRequest(w.cfg.IdentitySubject(id), inbox, nil); err != nil {
		return seen
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		select {
		case m := <-answers:
			if hb, err := decodeHeartbeat(id, m.Data); err == nil && !hb.Leave {
				seen[hb.Started.UnixMilli()] = true
			}
			if enough != nil && enough(seen) {
				return seen
			}
		case <-deadline.C:
			return seen
		case <-w.probeCtx.Done():
			return seen
		}
	}
}

// expire drops the members silent for Misses of their intervals.
func (w *Watcher) expire(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	dropped := false
	for id, m := range w.members {
		if now.Sub(m.LastSeen) > time.Duration(w.cfg.Misses)*w.interval(m) {
			delete(w.members, id)
			dropped = dropped || m.trusted
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
		if m.trusted {
			members = append(members, ring.Member{ID: m.ID, Weight: m.Weight})
		}
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
