package cache

import (
	"context"
	"sync"

	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

func formatVersion(r *ring.Ring) string {
	if r.Len() == 0 {
		return ""
	}
	return membership.FormatVersion(r.Version())
}

func (s *Server) stats() NodeStats {
	r := s.ring()
	st := NodeStats{
		Node: s.cfg.ID, Hits: s.hits.Load(), Misses: s.misses.Load(), Loads: s.loads.Load(),
		Handoffs: s.handoffs.Load(), Forwards: s.forwards.Load(), Evictions: s.store.evicted(),
		Items: s.store.items(), Bytes: s.store.bytes(), MaxBytes: s.store.maxBytes,
		Members: r.Len(), Ring: formatVersion(r),
		HandedOff: s.reb.handedOff.Load(), Received: s.reb.received.Load(),
		UnderReplicated: s.reb.underRep.Load(), LastHandoffMs: s.reb.lastMs.Load(),
	}
	// The ring a pass completed for is the current one when no change
	// came since that pass started.
	if s.reb.rebalanced.Load() == s.reb.changes.Load() && s.reb.rebalancedRing.Load() == r.Version() && r.Len() > 0 {
		st.Rebalanced = st.Ring
	}
	return st
}

func (s *Server) nodeStats(context.Context, *StatsRequest) (NodeStats, error) { return s.stats(), nil }

// allStats asks every member of the ring for its figures and sums them.
func (s *Server) allStats(ctx context.Context, _ *StatsRequest) (StatsReply, error) {
	members := s.ring().Members()
	nodes := make([]NodeStats, len(members))
	ok := make([]bool, len(members))
	var wg sync.WaitGroup
	for i, mem := range members {
		wg.Go(func() {
			if mem.ID == s.cfg.ID {
				nodes[i], ok[i] = s.stats(), true
				return
			}
			ok[i] = s.ask(ctx, mem.ID, OpStats, hopForward, StatsRequest{}, &nodes[i]) == nil
		})
	}
	wg.Wait()
	var rep StatsReply
	for i, n := range nodes {
		if !ok[i] {
			continue
		}
		rep.Nodes = append(rep.Nodes, n)
		t := &rep.Total
		t.Hits += n.Hits
		t.Misses += n.Misses
		t.Loads += n.Loads
		t.Handoffs += n.Handoffs
		t.Forwards += n.Forwards
		t.Evictions += n.Evictions
		t.Items += n.Items
		t.Bytes += n.Bytes
		t.MaxBytes += n.MaxBytes
		t.HandedOff += n.HandedOff
		t.Received += n.Received
		t.UnderReplicated += n.UnderReplicated
		t.LastHandoffMs = max(t.LastHandoffMs, n.LastHandoffMs)
	}
	if len(rep.Nodes) == 0 {
		rep.Nodes = append(rep.Nodes, s.stats())
		rep.Total = rep.Nodes[0]
		rep.Total.Node = ""
	}
	rep.Total.Members = len(members)
	return rep, nil
}
