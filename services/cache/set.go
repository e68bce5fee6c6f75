package cache

import (
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
)

func (s *Server) set(_ context.Context, c *bus.Call) {
	var req SetRequest
	if err := c.Decode(&req); err != nil {
		c.Reply(nil, err)
		return
	}
	if len(req.Value) > s.cfg.MaxValueBytes {
		c.Reply(nil, ErrValueTooLarge.With("value of %d bytes exceeds %d", len(req.Value), s.cfg.MaxValueBytes))
		return
	}
	via := hopOf(c)
	if via == hopReplica {
		s.store.put(req.Key, req.Value, expiry(time.Duration(req.TTLms)*time.Millisecond), s.versionOf(c.Header()))
		s.strayCheck(req.Key)
		c.Reply(SetReply{Copies: 1}, nil)
		return
	}
	var buf [4]string
	r := s.ring()
	owners := s.owners(r, req.Key, buf[:0])
	if owners[0] == s.cfg.ID || via != "" {
		ver, others := s.own(&req, r, owners)
		switch len(others) {
		case 0:
			c.Reply(SetReply{Copies: 1}, nil)
		case 1:
			s.copyOne(c, req.Key, others[0], ver)
		default:
			c.Go(func(ctx context.Context) { c.Reply(s.copySet(ctx, c, req.Key, others, ver)) })
		}
		return
	}
	owners = slices.Clone(owners)
	c.Go(func(ctx context.Context) { s.setVia(ctx, c, &req, owners) })
}

// setVia passes a set on to the key's owner or, when the owner does not
// answer and this node holds a copy, takes the write as the owner would.
func (s *Server) setVia(ctx context.Context, c *bus.Call, req *SetRequest, owners []string) {
	holder := slices.Contains(owners, s.cfg.ID)
	to := owners[:1]
	if !holder {
		to = withoutSelf(owners, s.cfg.ID)
	}
	rep, err := s.relay(ctx, c, OpSet, to)
	switch {
	case err == nil:
		c.ReplyRaw(rep)
	case !unreachable(err) || !holder:
		c.Reply(nil, err)
	default:
		ver, others := s.own(req, s.ring(), owners)
		c.Reply(s.copySet(ctx, c, req.Key, others, ver))
	}
}

// own stores a set as the key's owner, and returns the write's version
// and the other holders of a copy.
func (s *Server) own(req *SetRequest, r *ring.Ring, owners []string) (uint64, []string) {
	ver := s.clock.next()
	s.store.put(req.Key, req.Value, expiry(time.Duration(req.TTLms)*time.Millisecond), ver)
	s.raced(r)
	return ver, withoutSelf(owners, s.cfg.ID)
}

// copySet writes the copies of a set the owner stored (see copyTo).
func (s *Server) copySet(ctx context.Context, c *bus.Call, key string, others []string, ver uint64) (SetReply, error) {
	if len(others) == 0 {
		return SetReply{Copies: 1}, nil
	}
	n, err := s.copyTo(ctx, key, others, OpSet, ver, nil, c)
	if err != nil {
		return SetReply{}, err
	}
	return SetReply{Copies: 1 + n}, nil
}

// copyOne writes the copy of a set to its one replica (R = 2) and answers
// from the replica's reply, in the callback that receives it, with no
// worker; if the replica gives none, the copy is written as copySet writes
// it (asked again, or to a stand-in for a replica gone), on a worker.
func (s *Server) copyOne(c *bus.Call, key, id string, ver uint64) {
	cm := passOn(c, id, OpSet, hopReplica)
	setVersion(cm.Header, ver)
	s.replies.send(cm, s.cfg.AttemptTimeout, func(_ *nats.Msg, err error) {
		if err != nil {
			c.Go(func(ctx context.Context) { c.Reply(s.copySet(ctx, c, key, []string{id}, ver)) })
			return
		}
		c.Reply(SetReply{Copies: 2}, nil)
	})
}

func (s *Server) del(_ context.Context, c *bus.Call) {
	var req DelRequest
	if err := c.Decode(&req); err != nil {
		c.Reply(nil, err)
		return
	}
	via := hopOf(c)
	if via == hopReplica {
		s.tomb(req.Key, s.versionOf(c.Header()))
		c.Reply(DelReply{Deleted: s.store.del(req.Key)}, nil)
		return
	}
	var buf [4]string
	owners := s.owners(s.ring(), req.Key, buf[:0])
	if owners[0] != s.cfg.ID && via == "" {
		s.forward(c, OpDel, withoutSelf(owners, s.cfg.ID))
		return
	}
	ver := s.clock.next()
	s.tomb(req.Key, ver)
	deleted := s.store.del(req.Key)
	// The previous owners lose their copy too, or a hand-off would bring
	// the key back.
	others := withoutSelf(owners, s.cfg.ID)
	prev := s.handoffSources(req.Key, nil)
	if len(others) == 0 && len(prev) == 0 {
		c.Reply(DelReply{Deleted: deleted}, nil)
		return
	}
	c.Go(func(ctx context.Context) {
		for _, id := range prev {
			if !slices.Contains(others, id) {
				var r DelReply
				_ = s.askVersion(ctx, id, OpDel, hopReplica, ver, req, &r)
			}
		}
		if _, err := s.copyTo(ctx, req.Key, others, OpDel, ver, nil, c); err != nil {
			c.Reply(nil, err)
			return
		}
		c.Reply(DelReply{Deleted: deleted}, nil)
	})
}
