package cache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

// Active hand-off. One goroutine per node runs a pass after each change of
// the ring, at the end of the grace period, after a write that raced a
// change, and every Config.AntiEntropy. A pass groups the node's keys by
// partition and, for each partition:
//   - when the node is not one of its copy holders (a stray copy), sends its
//     keys to every holder and drops each copy once all of them
//     acknowledged it, unless it was written again meanwhile;
//   - when it is, asks each other holder for the partition's digest and
//     sends the keys to a holder whose digest differs from its own.
//
// Receivers keep the copy of the higher version. A pass that could not
// reach a holder leaves its partitions counted as under-replicated and is
// tried again after a few heartbeats.

// rebalancer is the state of a node's hand-off.
type rebalancer struct {
	kicks  chan struct{} // a pass is wanted
	cancel context.CancelFunc
	done   chan struct{}

	handedOff, received, underRep, lastMs atomic.Int64
	// changes counts the changes of the ring; rebalanced is the value it
	// had when the last complete pass started, so that a pass completed
	// before a change does not count for a ring that came back.
	changes, rebalanced atomic.Uint64
	rebalancedRing      atomic.Uint64 // the version of the ring of that pass

	mu      sync.Mutex
	changed bool // the pass wanted follows a change of the ring
	tombs   map[string]tombstone
	next    time.Time // pacing: when the next key may be sent
}

// tombstone is a recent delete: a hand-off of an older version of the key
// must not bring it back.
type tombstone struct {
	ver uint64
	at  time.Time
}

// maxTombs bounds the deletes remembered; beyond it, a delete that races a
// hand-off may be undone.
const maxTombs = 1 << 20

func (b *rebalancer) init() {
	b.kicks = make(chan struct{}, 1)
	b.tombs = map[string]tombstone{}
}

// kick asks for a pass; changed: the ring changed.
func (b *rebalancer) kick(changed bool) {
	if changed {
		b.mu.Lock()
		b.changed = true
		b.mu.Unlock()
	}
	select {
	case b.kicks <- struct{}{}:
	default:
	}
}

func (b *rebalancer) takeChanged() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.changed
	b.changed = false
	return c
}

func (s *Server) startRebalancer() {
	ctx, cancel := context.WithCancel(context.Background())
	s.reb.cancel, s.reb.done = cancel, make(chan struct{})
	go s.rebalanceLoop(ctx)
}

func (s *Server) stopRebalancer() {
	if s.reb.cancel == nil {
		return
	}
	s.reb.cancel()
	<-s.reb.done
}

func (s *Server) rebalanceLoop(ctx context.Context) {
	defer close(s.reb.done)
	tick := time.NewTicker(s.cfg.AntiEntropy)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.reb.kicks:
		case <-tick.C:
		case <-retry.C:
		}
		reason := "anti_entropy"
		if s.reb.takeChanged() {
			reason = "ring_changed"
		}
		if !s.rebalance(ctx, s.ring(), reason) && ctx.Err() == nil {
			retry.Reset(4 * s.heartbeat())
		}
	}
}

func (s *Server) heartbeat() time.Duration {
	if s.cfg.Heartbeat > 0 {
		return s.cfg.Heartbeat
	}
	return membership.DefaultInterval
}

// part is the keys of one partition this node holds, their versions and
// digest, and what a pass does with them.
type part struct {
	keys []string
	vers []uint64
	dig  Digest

	stray   bool      // this node is not one of the partition's holders
	targets []string  // the other holders
	need    []string  // the holders whose digest differs
	items   []PutItem // what was sent
	failed  bool
}

func hashOf(key string, ver uint64) uint64 {
	return xxhash.Sum64String(key) ^ (ver * 0x9e3779b97f4a7c15)
}

// partitions groups the keys of versions since or later by partition.
func (s *Server) partitions(since uint64) map[int]*part {
	parts := map[int]*part{}
	for k, st := range s.store.all() {
		if st.ver < since {
			continue
		}
		p := s.parts.Partition(k)
		pt := parts[p]
		if pt == nil {
			pt = &part{}
			parts[p] = pt
		}
		pt.keys = append(pt.keys, k)
		pt.vers = append(pt.vers, st.ver)
		pt.dig.Keys++
		pt.dig.Hash ^= hashOf(k, st.ver)
	}
	return parts
}

// passFigures are what a pass did.
type passFigures struct {
	handedOff, dropped, failed int64
	started, aborted           bool
}

// rebalance runs one pass over ring r and reports whether it completed:
// every key this node holds is held by all its copy holders.
func (s *Server) rebalance(ctx context.Context, r *ring.Ring, reason string) bool {
	if r.Len() == 0 {
		return true
	}
	if !slices.ContainsFunc(r.Members(), func(m ring.Member) bool { return m.ID == s.cfg.ID }) {
		// The node's own heartbeats went unseen for a while (a starved
		// process): it is still a member, and drops nothing until its ring
		// says so again.
		return false
	}
	start := time.Now()
	epoch := s.reb.changes.Load()
	s.pruneTombs(start)
	parts := s.partitions(0)
	held := len(parts)
	// Until a pass completes after the node's start, the partitions it
	// holds and has no key of are compared too: their digest is empty, and
	// a holder that has keys of them sends them (see digest), as to a node
	// that restarted before the others' rings saw it go.
	if s.reb.rebalanced.Load() == 0 {
		R := min(s.cfg.Replicas, r.Len())
		for p := range r.Partitions() {
			if parts[p] == nil && slices.Contains(r.PartitionOwners(p, R), s.cfg.ID) {
				parts[p] = &part{}
			}
		}
	}
	var f passFigures
	begin := func() {
		if !f.started {
			f.started = true
			s.emit("rebalance_started", map[string]any{"node": s.cfg.ID, "reason": reason,
				"ring_version": formatVersion(r), "members": r.Len(), "keys": s.store.items()})
		}
	}
	if reason != "anti_entropy" {
		begin()
	}
	s.handOff(ctx, r, parts, true, begin, &f)
	under := f.failed
	if r.Len() < s.cfg.Replicas {
		under = int64(held)
	}
	s.reb.underRep.Store(under)
	complete := !f.aborted && f.failed == 0
	if complete {
		s.reb.rebalancedRing.Store(r.Version())
		s.reb.rebalanced.Store(epoch)
	}
	if f.started || f.failed > 0 {
		d := time.Since(start)
		s.reb.lastMs.Store(d.Milliseconds())
		s.emit("rebalance_finished", map[string]any{"node": s.cfg.ID, "reason": reason,
			"ring_version": formatVersion(r), "complete": complete, "handed_off": f.handedOff,
			"dropped": f.dropped, "received": s.reb.received.Load(), "under_replicated": under,
			"duration_ms": d.Milliseconds()})
	}
	return complete || f.aborted
}

// handOff makes sure that the holders of each partition under r hold the
// keys parts has of it: it asks each holder for the digests of its
// partitions, all holders at once, and sends the keys of a partition to the
// holders whose digest differs from this node's, many partitions a batch.
// With drop, a copy of a partition this node does not hold is dropped once
// every holder has it (unless it was written again meanwhile). begin is
// called before the first key is sent. The pass stops short when ctx ends,
// or with drop, when the node's ring is no longer r.
func (s *Server) handOff(ctx context.Context, r *ring.Ring, parts map[int]*part, drop bool, begin func(), f *passFigures) {
	R := min(s.cfg.Replicas, r.Len())
	asks := map[string][]int{}
	order := make([]int, 0, len(parts))
	for p, pt := range parts {
		order = append(order, p)
		holders := r.PartitionOwners(p, R)
		pt.stray = !slices.Contains(holders, s.cfg.ID)
		pt.targets = withoutSelf(holders, s.cfg.ID)
		for _, h := range pt.targets {
			asks[h] = append(asks[h], p)
		}
	}
	slices.Sort(order)
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for peer, ps := range asks {
		slices.Sort(ps)
		wg.Go(func() {
			req := DigestRequest{Partitions: ps, Digests: make([]Digest, len(ps))}
			for i, p := range ps {
				req.Digests[i] = parts[p].dig
			}
			var rep DigestReply
			err := s.askWithin(ctx, peer, OpDigest, hopHandoff, 0, s.batchTimeout(), req, &rep)
			if err == nil && len(rep.Digests) != len(ps) {
				err = errors.New("digests do not match the partitions asked")
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				s.log.Debug().Err(err).Str("peer", peer).Msg("hand-off: no digest")
			}
			for i, p := range ps {
				switch pt := parts[p]; {
				case err != nil:
					pt.failed = true
				case rep.Digests[i] != pt.dig:
					pt.need = append(pt.need, peer)
				}
			}
		})
	}
	wg.Wait()

	// The partitions whose keys are in the batch being sent.
	var (
		batch []int
		size  int
	)
	flush := func() {
		to := map[string][]PutItem{}
		for _, p := range batch {
			for _, h := range parts[p].need {
				to[h] = append(to[h], parts[p].items...)
			}
		}
		failed := map[string]bool{}
		for h, items := range to {
			wg.Go(func() {
				err := s.putTo(ctx, h, items)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					s.log.Debug().Err(err).Str("to", h).Msg("hand-off failed")
					failed[h] = true
					return
				}
				f.handedOff += int64(len(items))
			})
		}
		wg.Wait()
		for _, p := range batch {
			pt := parts[p]
			for _, h := range pt.need {
				pt.failed = pt.failed || failed[h]
			}
			if !pt.failed && drop && pt.stray {
				s.dropPart(pt, f)
			}
		}
		batch, size = batch[:0], 0
	}
	for _, p := range order {
		if f.aborted = ctx.Err() != nil || drop && s.ring() != r; f.aborted {
			break
		}
		pt := parts[p]
		if pt.failed || len(pt.keys) == 0 {
			continue
		}
		if len(pt.need) == 0 {
			if drop && pt.stray {
				s.dropPart(pt, f)
			}
			continue
		}
		begin()
		pt.items = s.snapshot(pt)
		batch = append(batch, p)
		size += len(pt.items) * len(pt.need)
		if size >= MaxBatch {
			flush()
		}
	}
	if !f.aborted {
		flush()
	}
	for _, pt := range parts {
		if pt.failed && len(pt.keys) > 0 {
			f.failed++
		}
	}
}

// snapshot reads the partition's keys as they are now, to send them.
func (s *Server) snapshot(pt *part) []PutItem {
	items := make([]PutItem, 0, len(pt.keys))
	now := time.Now().UnixNano()
	for _, k := range pt.keys {
		st, ok := s.store.getItem(k)
		if !ok {
			continue
		}
		it := PutItem{Key: k, Value: st.value, Version: st.ver}
		if st.exp != 0 {
			it.TTLms = max((st.exp-now+int64(time.Millisecond)-1)/int64(time.Millisecond), 1)
		}
		items = append(items, it)
	}
	return items
}

// dropPart drops the copies of a stray partition that its holders have:
// those whose version is still the one the digests compared (and, for the
// keys sent, the one sent).
func (s *Server) dropPart(pt *part, f *passFigures) {
	sent := map[string]uint64{}
	for _, it := range pt.items {
		sent[it.Key] = it.Version
	}
	for i, k := range pt.keys {
		if v, ok := sent[k]; pt.items != nil && (!ok || v != pt.vers[i]) {
			continue // written since the digests were compared
		}
		if s.store.delIf(k, pt.vers[i]) {
			f.dropped++
		}
	}
}

func (s *Server) batchTimeout() time.Duration { return 5 * s.cfg.AttemptTimeout }

// putTo hands items off to node id in batches of at most MaxBatch items,
// half the server's max payload and 50 ms of Config.HandoffRate, paced to
// that rate.
func (s *Server) putTo(ctx context.Context, id string, items []PutItem) error {
	most := max(int(s.nc.MaxPayload()/2), 64<<10)
	count := min(MaxBatch, max(s.cfg.HandoffRate/20, 1))
	for len(items) > 0 {
		n, size := 0, 0
		for n < len(items) && n < count {
			size += len(items[n].Key) + len(items[n].Value) + 32
			if n > 0 && size > most {
				break
			}
			n++
		}
		if err := s.pace(ctx, n); err != nil {
			return err
		}
		var rep PutReply
		err := s.askWithin(ctx, id, OpPut, hopHandoff, 0, s.batchTimeout(), PutRequest{Items: items[:n]}, &rep)
		if errors.Is(err, bus.ErrTimeout) && ctx.Err() == nil {
			err = s.askWithin(ctx, id, OpPut, hopHandoff, 0, s.batchTimeout(), PutRequest{Items: items[:n]}, &rep)
		}
		if err != nil {
			return err
		}
		s.reb.handedOff.Add(int64(n))
		items = items[n:]
	}
	return nil
}

// pace waits until n more keys may be sent within Config.HandoffRate.
func (s *Server) pace(ctx context.Context, n int) error {
	s.reb.mu.Lock()
	now := time.Now()
	at := s.reb.next
	if at.Before(now) {
		at = now
	}
	s.reb.next = at.Add(time.Duration(n) * time.Second / time.Duration(s.cfg.HandoffRate))
	wait := at.Sub(now)
	s.reb.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// put stores the copies another node hands off, each unless this node
// holds the key at the same or a later version or deleted it since.
func (s *Server) put(_ context.Context, req *PutRequest) (PutReply, error) {
	for _, it := range req.Items {
		if len(it.Value) > s.cfg.MaxValueBytes {
			return PutReply{}, ErrValueTooLarge.With("value of %q: %d bytes exceeds %d", it.Key, len(it.Value), s.cfg.MaxValueBytes)
		}
	}
	n := 0
	for _, it := range req.Items {
		s.clock.observe(it.Version)
		if s.tombed(it.Key, it.Version) {
			continue
		}
		if s.store.put(it.Key, it.Value, expiry(time.Duration(it.TTLms)*time.Millisecond), it.Version) {
			n++
		}
	}
	s.reb.received.Add(int64(n))
	return PutReply{Stored: n}, nil
}

// digest answers the digests of the partitions asked.
func (s *Server) digest(_ context.Context, req *DigestRequest) (DigestReply, error) {
	want := map[int]int{}
	for i, p := range req.Partitions {
		want[p] = i
	}
	rep := DigestReply{Digests: make([]Digest, len(req.Partitions))}
	if len(want) == 0 {
		return rep, nil
	}
	for k, st := range s.store.all() {
		if i, ok := want[s.parts.Partition(k)]; ok {
			d := &rep.Digests[i]
			d.Keys++
			d.Hash ^= hashOf(k, st.ver)
		}
	}
	// A partition asked twice has the same digest at each place.
	for i, p := range req.Partitions {
		rep.Digests[i] = rep.Digests[want[p]]
	}
	// The asker has no key of a partition this node has keys of: it is
	// new, or restarted before the ring saw it go; this node's next pass
	// sends them.
	if len(req.Digests) == len(req.Partitions) {
		for i := range req.Partitions {
			if req.Digests[i].Keys == 0 && rep.Digests[i].Keys > 0 {
				s.reb.kick(false)
				break
			}
		}
	}
	return rep, nil
}

// leave hands off the keys of versions since or later to the nodes that
// hold them once this node is gone.
func (s *Server) leave(ctx context.Context, since uint64) {
	if s.nc.IsClosed() {
		return
	}
	r := s.ringWithout(s.ring())
	if r.Len() == 0 {
		return
	}
	// At most half the time Stop has left, so that the leave itself and the
	// rest of the stop still fit in it.
	budget := s.cfg.LeaveTimeout
	if dl, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(dl)/2)
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	start := time.Now()
	parts := s.partitions(since)
	if since > 0 && len(parts) == 0 {
		return
	}
	s.emit("rebalance_started", map[string]any{"node": s.cfg.ID, "reason": "leave",
		"ring_version": formatVersion(r), "members": r.Len(), "keys": s.store.items()})
	var f passFigures
	s.handOff(ctx, r, parts, false, func() {}, &f)
	d := time.Since(start)
	s.reb.lastMs.Store(d.Milliseconds())
	s.emit("rebalance_finished", map[string]any{"node": s.cfg.ID, "reason": "leave",
		"ring_version": formatVersion(r), "complete": ctx.Err() == nil && f.failed == 0,
		"handed_off": f.handedOff, "under_replicated": f.failed, "duration_ms": d.Milliseconds()})
}

// raced asks for a pass when the ring changed since a write read it: the
// pass of that change may have missed the write.
func (s *Server) raced(r *ring.Ring) {
	if s.ring() != r {
		s.reb.kick(false)
	}
}

// strayCheck asks for a pass when a copy reaches a node that does not hold
// its key by its ring (sent by a node whose ring differs).
func (s *Server) strayCheck(key string) {
	r := s.ring()
	if r.Len() == 0 {
		return
	}
	var buf [4]string
	if !slices.Contains(s.owners(r, key, buf[:0]), s.cfg.ID) {
		s.reb.kick(false)
	}
}

// tomb remembers a delete for the grace period.
func (s *Server) tomb(key string, ver uint64) {
	s.reb.mu.Lock()
	defer s.reb.mu.Unlock()
	if len(s.reb.tombs) < maxTombs {
		s.reb.tombs[key] = tombstone{ver, time.Now()}
	}
}

// tombed reports whether key was deleted at ver or later.
func (s *Server) tombed(key string, ver uint64) bool {
	s.reb.mu.Lock()
	defer s.reb.mu.Unlock()
	t, ok := s.reb.tombs[key]
	return ok && t.ver >= ver
}

func (s *Server) pruneTombs(now time.Time) {
	s.reb.mu.Lock()
	defer s.reb.mu.Unlock()
	for k, t := range s.reb.tombs {
		if now.Sub(t.at) > s.cfg.Grace {
			delete(s.reb.tombs, k)
		}
	}
}
