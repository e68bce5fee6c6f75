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
	rebalanced                            atomic.Uint64 // ring version of the last complete pass

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

// part is the keys of one partition this node holds, and their digest.
type part struct {
	keys []string
	dig  Digest
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
		pt.dig.Keys++
		pt.dig.Hash ^= hashOf(k, st.ver)
	}
	return parts
}

// passFigures are what a pass did.
type passFigures struct {
	handedOff, dropped int64
	failed             map[int]bool
	aborted            bool
}

// rebalance runs one pass over ring r and reports whether it completed:
// every key this node holds is held by all its copy holders.
func (s *Server) rebalance(ctx context.Context, r *ring.Ring, reason string) bool {
	if r.Len() == 0 {
		return true
	}
	start := time.Now()
	s.pruneTombs(start)
	R := min(s.cfg.Replicas, r.Len())
	parts := s.partitions(0)
	var strays []int
	peers := map[string][]int{} // the partitions this node holds with each other holder
	for p := range parts {
		holders := r.PartitionOwners(p, R)
		if !slices.Contains(holders, s.cfg.ID) {
			strays = append(strays, p)
			continue
		}
		for _, h := range holders {
			if h != s.cfg.ID {
				peers[h] = append(peers[h], p)
			}
		}
	}
	started := false
	begin := func() {
		if !started {
			started = true
			s.emit("rebalance_started", map[string]any{"node": s.cfg.ID, "reason": reason,
				"ring_version": formatVersion(r), "members": r.Len(), "keys": s.store.items()})
		}
	}
	if reason != "anti_entropy" {
		begin()
	}
	f := passFigures{failed: map[int]bool{}}
	slices.Sort(strays)
	for _, p := range strays {
		if f.aborted = ctx.Err() != nil || s.ring() != r; f.aborted {
			break
		}
		begin()
		s.pushPartition(ctx, r.PartitionOwners(p, R), p, parts[p].keys, true, &f)
	}
	for peer, ps := range peers {
		if f.aborted = f.aborted || ctx.Err() != nil || s.ring() != r; f.aborted {
			break
		}
		slices.Sort(ps)
		var rep DigestReply
		err := s.askWithin(ctx, peer, OpDigest, hopHandoff, 0, s.batchTimeout(), DigestRequest{Partitions: ps}, &rep)
		if err == nil && len(rep.Digests) != len(ps) {
			err = errors.New("digests do not match the partitions asked")
		}
		if err != nil {
			s.log.Debug().Err(err).Str("peer", peer).Msg("hand-off: no digest")
			for _, p := range ps {
				f.failed[p] = true
			}
			continue
		}
		for i, p := range ps {
			if rep.Digests[i] == parts[p].dig {
				continue
			}
			if f.aborted = ctx.Err() != nil || s.ring() != r; f.aborted {
				break
			}
			begin()
			s.pushPartition(ctx, []string{peer}, p, parts[p].keys, false, &f)
		}
	}
	under := int64(len(f.failed))
	if r.Len() < s.cfg.Replicas {
		under = int64(len(parts))
	}
	s.reb.underRep.Store(under)
	complete := !f.aborted && len(f.failed) == 0
	if complete {
		s.reb.rebalanced.Store(r.Version())
	}
	if started || len(f.failed) > 0 {
		d := time.Since(start)
		s.reb.lastMs.Store(d.Milliseconds())
		s.emit("rebalance_finished", map[string]any{"node": s.cfg.ID, "reason": reason,
			"ring_version": formatVersion(r), "complete": complete, "handed_off": f.handedOff,
			"dropped": f.dropped, "received": s.reb.received.Load(), "under_replicated": under,
			"duration_ms": d.Milliseconds()})
	}
	return complete || f.aborted
}

// pushPartition sends the keys of partition p to holders. stray: this node
// is not one of them, and drops each copy all of them acknowledged, unless
// it was written again since.
func (s *Server) pushPartition(ctx context.Context, holders []string, p int, keys []string, stray bool, f *passFigures) {
	items := make([]PutItem, 0, len(keys))
	now := time.Now().UnixNano()
	for _, k := range keys {
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
	ok := true
	for _, h := range holders {
		if err := s.putTo(ctx, h, items); err != nil {
			s.log.Debug().Err(err).Str("to", h).Int("partition", p).Msg("hand-off failed")
			ok = false
			continue
		}
		f.handedOff += int64(len(items))
	}
	if !ok {
		f.failed[p] = true
		return
	}
	if stray {
		for _, it := range items {
			if s.store.delIf(it.Key, it.Version) {
				f.dropped++
			}
		}
	}
}

func (s *Server) batchTimeout() time.Duration { return 5 * s.cfg.AttemptTimeout }

// putTo hands items off to node id in batches of at most MaxBatch items
// and half the server's max payload, paced to Config.HandoffRate.
func (s *Server) putTo(ctx context.Context, id string, items []PutItem) error {
	most := max(int(s.nc.MaxPayload()/2), 64<<10)
	for len(items) > 0 {
		n, size := 0, 0
		for n < len(items) && n < MaxBatch {
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
	return rep, nil
}

// leave hands off the keys of versions above since to the nodes that hold
// them once this node is gone.
func (s *Server) leave(ctx context.Context, since uint64) {
	if s.nc.IsClosed() {
		return
	}
	cur := s.ring()
	r := s.ringWithout(cur)
	if r.Len() == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LeaveTimeout)
	defer cancel()
	start := time.Now()
	R := min(s.cfg.Replicas, r.Len())
	parts := s.partitions(since)
	if since == 0 {
		s.emit("rebalance_started", map[string]any{"node": s.cfg.ID, "reason": "leave",
			"ring_version": formatVersion(r), "members": r.Len(), "keys": s.store.items()})
	} else if len(parts) == 0 {
		return
	}
	f := passFigures{failed: map[int]bool{}}
	for p, pt := range parts {
		if ctx.Err() != nil {
			break
		}
		s.pushPartition(ctx, r.PartitionOwners(p, R), p, pt.keys, false, &f)
	}
	d := time.Since(start)
	s.reb.lastMs.Store(d.Milliseconds())
	s.emit("rebalance_finished", map[string]any{"node": s.cfg.ID, "reason": "leave",
		"ring_version": formatVersion(r), "complete": ctx.Err() == nil && len(f.failed) == 0,
		"handed_off": f.handedOff, "under_replicated": len(f.failed), "duration_ms": d.Milliseconds()})
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
