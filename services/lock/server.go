package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
)

// Version is the version of the lock service.
const Version = "0.1.0"

// Bucket is the KV bucket that holds the locks.
const Bucket = "MESH_LOCKS"

// Config configures a Server.
type Config struct {
	// Replicas of the bucket (3 on a 3-node cluster). Zero: 1.
	Replicas int
	// MaxTTL bounds ttl_ms. Zero: 24 hours.
	MaxTTL time.Duration
	// MaxConcurrent bounds the requests served at once; a waiting acquire
	// holds one. Zero: 4096.
	MaxConcurrent int
	// MarkerTTL is how long the marker of a released or expired key stays
	// in the bucket: long enough for every instance's mirror to see it, even
	// across a reconnection, short enough not to pile up. Zero: 30s.
	MarkerTTL time.Duration
	// Logger, zero: no logs. Observer, zero: none.
	Logger   zerolog.Logger
	Observer bus.Observer
}

// Server is one instance of the lock service. Several may run at once: all
// the state is in the bucket; an instance's memory holds only a mirror of it
// and the requests it is serving.
type Server struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	cfg    Config
	log    zerolog.Logger
	svc    *bus.Service
	events *bus.Events
	mirror *mirror
	kv     jetstream.KeyValue
	prefix string // subject prefix of the bucket's keys
	feed   *feed
	heard  heard // the expired events of every instance

	writes *bus.Writes // keys whose acknowledgements are answered in callbacks

	// leasing holds the keys whose lease is being started at their grant
	// (startLease): key -> closed once written, or given up.
	leasing sync.Map

	tellers tellers // the expiries this instance is telling (tellExpiry)

	beforeRefusal func(name string) // tests: hold a refusal before its key is taken out
	beforeExpired func()            // tests: hold an expired event before it is emitted
}

// New returns a lock service instance ready to Start.
func New(nc *nats.Conn, cfg Config) (*Server, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 24 * time.Hour
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 4096
	}
	if cfg.MarkerTTL <= 0 {
		cfg.MarkerTTL = 30 * time.Second
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &Server{nc: nc, js: js, cfg: cfg, log: cfg.Logger.With().Str("service", "lock").Logger(), mirror: newMirror(), prefix: "$KV." + Bucket + "."}
	if s.writes, err = bus.NewWrites(nc, bus.DefaultTimeout); err != nil {
		return nil, err
	}
	s.svc, err = bus.NewService(nc, bus.Config{
		Name:          "lock",
		Version:       Version,
		Description:   "Fenced, server-leased locks and semaphores with fair waiting",
		MaxConcurrent: cfg.MaxConcurrent,
		// The largest valid request is well under 1 KiB.
		MaxRequestBytes: 64 << 10,
		Logger:          cfg.Logger,
		Observer:        cfg.Observer,
		Endpoints: []bus.Endpoint{
			{Name: "acquire", Subject: SubjectAcquire, Handler: s.acquire, Inline: true},
			{Name: "release", Subject: SubjectRelease, Handler: s.releaseNow, Inline: true},
			{Name: "renew", Subject: SubjectRenew, Handler: bus.Typed(s.renew)},
			{Name: "inspect", Subject: SubjectInspect, Handler: bus.Typed(s.inspect)},
			{Name: "list", Subject: SubjectList, Handler: bus.Typed(s.list)},
		},
	})
	if err != nil {
		return nil, err
	}
	s.events = bus.NewEvents(nc, "lock", s.svc.ID())
	return s, nil
}

// Start ensures the bucket, loads the mirror and starts serving.
func (s *Server) Start(ctx context.Context) error {
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         Bucket,
		Description:    "Mesh locks: one key per holder or waiter, w.<name>.<id>",
		History:        1,
		LimitMarkerTTL: s.cfg.MarkerTTL,
		Replicas:       s.cfg.Replicas,
		Storage:        jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("lock: bucket %s: %w", Bucket, err)
	}
	if err := s.allowBatches(ctx); err != nil {
		return fmt.Errorf("lock: bucket %s: %w", Bucket, err)
	}
	s.kv = kv
	if err := s.heard.listen(s.nc); err != nil {
		return fmt.Errorf("lock: following the expired events: %w", err)
	}
	s.feed = newFeed(s.js, "KV_"+Bucket, s.prefix+">", "mesh_lock_"+s.svc.ID(), s.mirror, s.onMsg, s.log)
	if err := s.feed.start(ctx); err != nil {
		s.heard.stop()
		return fmt.Errorf("lock: following the bucket: %w", err)
	}
	if err := s.catchUp(ctx); err != nil {
		s.feed.stop()
		s.heard.stop()
		return fmt.Errorf("lock: loading the locks: %w", err)
	}
	if err := s.svc.Start(ctx); err != nil {
		s.feed.stop()
		s.heard.stop()
		return err
	}
	return nil
}

// allowBatches lets the bucket's stream take atomic batches, which a
// semaphore's refusals are (see refuse). CreateOrUpdateKeyValue writes the
// stream's whole configuration, which has no such setting: every instance
// that starts turns it back on.
func (s *Server) allowBatches(ctx context.Context) error {
	stream, err := s.js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return err
	}
	cfg := stream.CachedInfo().Config
	if cfg.AllowAtomicPublish {
		return nil
	}
	cfg.AllowAtomicPublish = true
	_, err = s.js.UpdateStream(ctx, cfg)
	return err
}

// Stop stops serving. Waiting acquires give up and leave the line. The
// expiries being told are told, unless ctx ends first.
func (s *Server) Stop(ctx context.Context) error {
	err := s.svc.Stop(ctx)
	if s.feed != nil {
		s.feed.stop()
	}
	s.heard.stop() // nothing is granted any more: no expiry waits to be heard
	if terr := s.tellers.stop(ctx); err == nil {
		err = terr
	}
	return err
}

// Done is closed once the service has stopped.
func (s *Server) Done() <-chan struct{} { return s.svc.Done() }

func (s *Server) onMsg(msg jetstream.Msg) {
	name, expired := s.mirror.apply(msg, s.prefix)
	if expired == nil {
		return
	}
	// Every instance sees the expiry; the one whose marker replaces the
	// server's (compare-and-set on its sequence) tells the world. Until
	// then, and until the others have heard it told, an instance grants no
	// lock of the name (mirror.telling), so that the expired event of the
	// old holder comes before the acquired event of the next.
	meta, err := msg.Metadata()
	if err != nil {
		s.mirror.told(name, expired.id)
		return
	}
	if !s.tellers.do(func(ctx context.Context) { s.tellExpiry(ctx, name, expired, meta.Sequence.Stream) }) {
		s.mirror.told(name, expired.id)
	}
}

// tellExpiry tells the expiry of the key of name seen at seq: it replaces
// the server's marker with its own, compare-and-set on seq, and emits the
// expired event, or, if another instance's marker came first, waits to
// hear that instance's event.
func (s *Server) tellExpiry(ctx context.Context, name string, expired *contender, seq uint64) {
	defer s.mirror.told(name, expired.id)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := s.purge(ctx, name, expired.id, seq)
	for bus.InFlight(err) {
		// On a cluster, a write naming the key was in flight: another
		// instance's marker, or a refusal checking the expired holder's
		// key, which changes nothing. Try again once it is applied.
		if s.catchUp(ctx) != nil {
			break
		}
		err = s.purge(ctx, name, expired.id, seq)
	}
	switch {
	case err == nil:
		if s.beforeExpired != nil {
			s.beforeExpired()
		}
		s.emit("expired", name, expired)
	case bus.Conflict(err):
		// Another instance replaced the marker and tells the expiry: wait
		// for its event, up to the 5 s of ctx (it may have died meanwhile;
		// on a loaded machine a second was seen to be short).
		s.heard.wait(ctx, expiryKey(name, expired.token))
	}
}

// tellers runs the goroutines that tell expiries, which Stop awaits.
type tellers struct {
	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
	ctx     context.Context // cancelled when Stop stops waiting
	cancel  context.CancelFunc
}

// do runs fn on a goroutine of its own, unless Stop was called.
func (t *tellers) do(fn func(ctx context.Context)) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	if t.ctx == nil {
		t.ctx, t.cancel = context.WithCancel(context.Background())
	}
	ctx := t.ctx
	t.wg.Go(func() { fn(ctx) })
	return true
}

// stop waits for the goroutines running, cancelling their context if ctx
// ends first, and runs no more.
func (t *tellers) stop(ctx context.Context) error {
	t.mu.Lock()
	t.stopped = true
	cancel := t.cancel
	t.mu.Unlock()
	if cancel == nil {
		return nil
	}
	idle := make(chan struct{})
	go func() { t.wg.Wait(); close(idle) }()
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = ctx.Err()
	}
	cancel()
	<-idle
	return err
}

func (s *Server) key(name, id string) string { return "w." + name + "." + id }

func (s *Server) emit(what, name string, c *contender) {
	_ = s.events.Emit(what, map[string]any{"name": name, "owner": c.rec.Owner, "token": c.token})
}

// write publishes a contender's record with a TTL; rev is the revision it
// must replace (compare-and-set), or 0 for a new key.
func (s *Server) write(ctx context.Context, name, id string, rec record, rev uint64) (uint64, error) {
	data, _ := json.Marshal(rec)
	ack, err := s.js.Publish(ctx, s.prefix+s.key(name, id), data, writeOpts(rec, rev)...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// purge removes a contender key if it is still at revision rev (any
// revision if rev is 0), leaving a marker that expires by itself.
func (s *Server) purge(ctx context.Context, name, id string, rev uint64) error {
	_, err := s.js.PublishMsg(ctx, s.purgeMsg(name, id, rev))
	return err
}

// purgeMsg is the message of purge.
func (s *Server) purgeMsg(name, id string, rev uint64) *nats.Msg {
	m := nats.NewMsg(s.prefix + s.key(name, id))
	m.Header.Set("KV-Operation", "PURGE")
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Header.Set(jetstream.MsgTTLHeader, s.cfg.MarkerTTL.String())
	if rev != 0 {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	}
	return m
}

// refuse takes a refused request's key out of the line, provided that
// what the refusal was decided on still stands (g): every key ahead of it
// is unchanged. If the holder had left, this key, refused, could stand
// first in line until taken out, and others would be refused for a holder
// that never was (the linearizability test caught this: two tries refused
// while nobody held the lock). The checks name those keys themselves
// rather than all the name's keys, so that on a cluster nats-server also
// refuses the purge while a write of one of them is still being replicated
// (it matches writes in flight by their exact subject), and a newcomer
// joining the line is no conflict. A lock has one key ahead that matters,
// the holder's; a semaphore's keys ahead are each checked by a message of
// an atomic batch, all purging this key, which the stream applies whole or
// not at all.
func (s *Server) refuse(ctx context.Context, name, id string, g guard) error {
	if s.beforeRefusal != nil {
		s.beforeRefusal(name)
	}
	if len(g.keys) > 1 {
		err := s.refuseBatch(ctx, name, id, g.keys)
		var apiErr *jetstream.APIError
		if err == nil || bus.Conflict(err) || !errors.As(err, &apiErr) {
			return err
		}
		// The stream refused the batch as such (an instance starting
		// updates the bucket, and for a moment it allows none; too many
		// batches in flight): check all the name's keys at once instead.
		g.keys = nil
	}
	m := s.purgeMsg(name, id, 0)
	on, seq := s.prefix+"w."+name+".*", g.seq
	if len(g.keys) == 1 {
		on, seq = s.prefix+s.key(name, g.keys[0].id), g.keys[0].seq
	}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, on)
	_, err := s.js.PublishMsg(ctx, m)
	return err
}

// refuseBatch purges a refused key in one atomic batch of a message per
// key ahead, each checking that key's last revision. nats.go 1.55 has no
// batch API: the headers are ADR-50's, the last message commits the batch
// and its reply is the batch's acknowledgement or error.
func (s *Server) refuseBatch(ctx context.Context, name, id string, keys []keyAt) error {
	batch := nuid.Next()
	for i, k := range keys {
		m := s.purgeMsg(name, id, 0)
		if i > 0 {
			m.Header.Del(jetstream.MsgRollup) // a batch may roll a subject up once
		}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(k.seq, 10))
		m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, s.prefix+s.key(name, k.id))
		m.Header.Set(headerBatchID, batch)
		m.Header.Set(headerBatchSeq, strconv.Itoa(i+1))
		if i < len(keys)-1 {
			if err := s.nc.PublishMsg(m); err != nil {
				return err
			}
			continue
		}
		m.Header.Set(headerBatchCommit, "1")
		// Bounded as a JetStream publish is when ctx has no deadline: a
		// batch sent to a stream leader that went away gets no answer.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		reply, err := s.nc.RequestMsgWithContext(cctx, m)
		cancel()
		if err != nil {
			return err
		}
		var ack struct {
			Error *jetstream.APIError `json:"error"`
		}
		if err := json.Unmarshal(reply.Data, &ack); err != nil {
			return fmt.Errorf("lock: acknowledgement of a refusal: %w", err)
		}
		if ack.Error != nil {
			return ack.Error
		}
	}
	return nil
}

// Headers of an atomic batch (nats-server 2.12+, ADR-50).
const (
	headerBatchID     = "Nats-Batch-Id"
	headerBatchSeq    = "Nats-Batch-Sequence"
	headerBatchCommit = "Nats-Batch-Commit"
)

// holderPatience bounds how long a request retries compare-and-sets that
// conflict while what it rests on stands (the holder's key still holds
// with the token, a waiter's key is still in line, a refused key's keys
// ahead are still there): the key written again, or checked, by other
// requests at the same moment. Release and renew carry no deadline; a
// caller waits bus.DefaultTimeout (5 s) by default, so their retries end a
// second before, answering conflict (409, bus.ErrConflict): nothing
// changed, and the caller may try again.
const holderPatience = 4 * time.Second

// retryConflict is what a request does when its compare-and-set on a key
// conflicted: past until it gives up (bus.ErrConflict); before, it waits until
// the mirror has seen every write made before (catchUp), so that a write
// that was in flight is in view, with the key's latest revision, for the
// next try.
func (s *Server) retryConflict(ctx context.Context, name, what string, until time.Time, err error) error {
	if !time.Now().Before(until) {
		return bus.ErrConflict.With("lock %s: %s: other requests wrote or checked the key at every try for %v (%v); nothing changed", name, what, holderPatience, err)
	}
	return s.catchUp(ctx)
}

// leaseSlack: a lease granted after a wait in line loses at most
// 1/leaseSlack of its TTL to the wait. Below that, the key is not written again
// at the grant: on a contended lock, whose waiters mostly wait a few
// milliseconds, that write is one more stored message on the bucket's path
// between two hand-offs, a quarter to a third of the hand-offs a second
// (bench/lock, 16 contenders).
const leaseSlack = 100

// startLease writes a granted key again, so that its lease counts from
// the grant (at), without waiting for the acknowledgement (awaited, it
// made the hand-off a round trip longer). It is sent before the grant's
// reply; the expiry told is counted from before it was sent, never later
// than the server's. Until it is acknowledged, the key is in leasing: a
// release or renewal of the key through this instance, which would expect
// the revision before it and conflict, waits for it (awaitLease), and its
// acknowledgement gives the mirror the key's new revision at once. On a
// cluster the write may conflict for a write in flight that names the key
// (a refusal checking the holder): it is then written again, while the key
// stands unchanged, on a view caught up with the bucket (restartLease).
// Should it fail for good, the lease runs to the key's last write in line
// plus the TTL, at least two thirds of it, and the Client renews it before
// then.
func (s *Server) startLease(name, id string, rec record, rev uint64, at time.Time) {
	key := s.key(name, id)
	written := make(chan struct{})
	s.leasing.Store(key, written)
	done := func() {
		s.leasing.Delete(key)
		close(written)
	}
	m := nats.NewMsg(s.prefix + key)
	m.Data, _ = json.Marshal(rec)
	s.writes.Publish(m, func(ack *jetstream.PubAck, err error) {
		switch {
		case err == nil:
			s.mirror.wrote(name, id, ack.Sequence, at)
			done()
		case bus.InFlight(err):
			go func() {
				defer done()
				s.restartLease(name, id, rec, rev, at)
			}()
		default:
			// A conflict here (10071) is a key changed since the grant:
			// released or renewed through another instance, or expired.
			s.log.Warn().Err(err).Str("lock", name).Msg("starting a lease: the key keeps the TTL of its last write")
			done()
		}
	}, writeOpts(rec, rev)...)
}

// restartLease writes a granted key again after its first write at the
// grant conflicted for a write in flight: on a view caught up with the
// bucket, as long as the key stands at rev, its revision at the grant, for
// up to holderPatience.
func (s *Server) restartLease(name, id string, rec record, rev uint64, at time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), holderPatience)
	defer cancel()
	for {
		if err := s.catchUp(ctx); err != nil {
			s.log.Warn().Err(err).Str("lock", name).Msg("starting a lease: the key keeps the TTL of its last write")
			return
		}
		if now, ok := s.mirror.rev(name, id); !ok || now != rev {
			return // released, renewed or expired since the grant
		}
		seq, err := s.write(ctx, name, id, rec, rev)
		if err == nil {
			s.mirror.wrote(name, id, seq, at)
			return
		}
		if !bus.InFlight(err) {
			s.log.Warn().Err(err).Str("lock", name).Msg("starting a lease: the key keeps the TTL of its last write")
			return
		}
	}
}

// writeOpts are the options of a write of a contender's record: its TTL,
// and rev, the revision it must replace.
func writeOpts(rec record, rev uint64) []jetstream.PublishOpt {
	return []jetstream.PublishOpt{jetstream.WithMsgTTL(time.Duration(rec.TTLms) * time.Millisecond), jetstream.WithExpectLastSequencePerSubject(rev)}
}

// awaitLease waits, up to until, for the lease of key id of name to be
// started (startLease) if it is being started, and reports whether it
// waited.
func (s *Server) awaitLease(ctx context.Context, name, id string, until time.Time) bool {
	written, ok := s.leasing.Load(s.key(name, id))
	if !ok {
		return false
	}
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-written.(chan struct{}):
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// joinOpts are the options of a request's key: its TTL, and no earlier
// write of the key.
func joinOpts(r *AcquireRequest) []jetstream.PublishOpt {
	return []jetstream.PublishOpt{jetstream.WithMsgTTL(time.Duration(r.TTLms) * time.Millisecond), jetstream.WithExpectLastSequencePerSubject(0)}
}

// find returns the holder of name with token. A token is only ever given
// to a holder, so when the mirror does not show it holding, the mirror may be
// behind (the grant, or the release of an earlier holder, went through
// another instance): "not held" is decided only after catching up.
func (s *Server) find(ctx context.Context, name string, token uint64) (contender, error) {
	c, found, holds := s.mirror.byToken(name, token)
	if found && holds {
		return c, nil
	}
	if !found {
		// A key granted at once may not have reached the mirror yet; a token
		// is the revision it was written at, so seeing that far finds it. A
		// made-up token costs this short wait before the barrier below.
		sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		err := s.mirror.sync(sctx, token)
		cancel()
		if c, found, holds = s.mirror.byToken(name, token); err == nil && found && holds {
			return c, nil
		}
	}
	if err := s.catchUp(ctx); err != nil {
		return contender{}, err
	}
	c, found, holds = s.mirror.byToken(name, token)
	if !found || !holds {
		return contender{}, ErrNotHeld.With("lock %s is not held with token %d", name, token)
	}
	return c, nil
}

// releaseNow releases in the subscription's callback (the endpoint is
// Inline) a lock the mirror shows held with the request's token, and
// answers from the purge's acknowledgement; anything else (a token the
// mirror does not show holding, a renewal through another instance
// meanwhile) is left to release on a worker.
func (s *Server) releaseNow(_ context.Context, c *bus.Call) {
	r := new(ReleaseRequest)
	if err := c.Decode(r); err != nil {
		c.Reply(nil, err)
		return
	}
	slow := func(ctx context.Context) { c.Reply(s.release(ctx, r)) }
	h, found, holds := s.mirror.byToken(r.Name, r.Token)
	if !found || !holds {
		c.Go(slow)
		return
	}
	if _, starting := s.leasing.Load(s.key(r.Name, h.id)); starting {
		// The key is being written again at its grant: a purge expecting
		// its revision before would conflict.
		c.Go(slow)
		return
	}
	s.writes.Publish(s.purgeMsg(r.Name, h.id, h.rev), func(_ *jetstream.PubAck, err error) {
		switch {
		case err == nil:
			s.emit("released", r.Name, &h)
			c.Reply(&ReleaseReply{Released: true}, nil)
		case bus.Conflict(err):
			// Renewed meanwhile, or, on a cluster, a write naming the key
			// in flight: on a worker, once the mirror has caught up.
			c.Go(func(ctx context.Context) {
				if err := s.catchUp(ctx); err != nil {
					c.Reply(nil, err)
					return
				}
				slow(ctx)
			})
		case errors.Is(err, jetstream.ErrAsyncPublishTimeout):
			// The purge may or may not have been applied.
			c.Reply(nil, bus.ErrUnavailable.With("lock %s: release: no acknowledgement from the bucket", r.Name))
		default:
			c.Reply(nil, fmt.Errorf("lock %s: release: %w", r.Name, err))
		}
	})
}

// release releases on a worker. A compare-and-set that conflicts while the
// key still holds with the token is explained: the key was written again
// (its lease started at its grant, a renewal through another instance) or,
// on a cluster, another request's write that names it (a refusal checking
// the holder) was in flight. It is retried on a view caught up with the
// bucket, until holderPatience runs out; a key that no longer holds with
// the token is not_held.
func (s *Server) release(ctx context.Context, r *ReleaseRequest) (*ReleaseReply, error) {
	until := time.Now().Add(holderPatience)
	for {
		c, err := s.find(ctx, r.Name, r.Token)
		if err != nil {
			return nil, err
		}
		if s.awaitLease(ctx, r.Name, c.id, until) {
			continue // the key was written again: look again
		}
		err = s.purge(ctx, r.Name, c.id, c.rev)
		if err == nil {
			s.emit("released", r.Name, &c)
			return &ReleaseReply{Released: true}, nil
		}
		if !bus.Conflict(err) {
			return nil, fmt.Errorf("lock %s: release: %w", r.Name, err)
		}
		if err := s.retryConflict(ctx, r.Name, "release", until, err); err != nil {
			return nil, err
		}
	}
}

// renew renews on a worker, retrying conflicts as release does.
func (s *Server) renew(ctx context.Context, r *RenewRequest) (*RenewReply, error) {
	if err := checkTTL(r.TTLms, s.cfg.MaxTTL.Milliseconds()); err != nil {
		return nil, err
	}
	until := time.Now().Add(holderPatience)
	for {
		c, err := s.find(ctx, r.Name, r.Token)
		if err != nil {
			return nil, err
		}
		if s.awaitLease(ctx, r.Name, c.id, until) {
			continue
		}
		rec := c.rec
		rec.Token, rec.TTLms = c.token, r.TTLms
		at := time.Now() // the server's TTL runs from a moment after
		rev, err := s.write(ctx, r.Name, c.id, rec, c.rev)
		if err == nil {
			// The mirror learns the new revision now, so that a release
			// right after this renewal expects it.
			s.mirror.wrote(r.Name, c.id, rev, at)
			return &RenewReply{ExpiresAt: bus.Time{Time: at.Add(time.Duration(r.TTLms) * time.Millisecond)}}, nil
		}
		if !bus.Conflict(err) {
			return nil, fmt.Errorf("lock %s: renew: %w", r.Name, err)
		}
		if err := s.retryConflict(ctx, r.Name, "renew", until, err); err != nil {
			return nil, err
		}
	}
}

// catchUp waits until the mirror has seen every write to the bucket made
// before the call. The stream's last sequence cannot tell, as the message
// that bears it may be gone (released keys' markers expire), so catchUp
// writes a barrier of its own, a key sync.<instance> that expires by itself,
// and waits to see it.
func (s *Server) catchUp(ctx context.Context) error {
	ack, err := s.js.Publish(ctx, s.prefix+"sync."+s.svc.ID(), nil, jetstream.WithMsgTTL(time.Second))
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.mirror.sync(sctx, ack.Sequence); err != nil {
		return bus.ErrUnavailable.With("the lock service is behind its bucket")
	}
	return nil
}

func (s *Server) inspect(ctx context.Context, r *InspectRequest) (*InspectReply, error) {
	if err := s.catchUp(ctx); err != nil {
		return nil, err
	}
	reply := s.mirror.inspect(r.Name)
	return &reply, nil
}

func (s *Server) list(ctx context.Context, r *ListRequest) (*ListReply, error) {
	if err := s.catchUp(ctx); err != nil {
		return nil, err
	}
	limit := r.Limit
	if limit == 0 {
		limit = 1000
	}
	reply := s.mirror.list(r.Prefix, limit)
	return &reply, nil
}
