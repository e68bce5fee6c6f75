package cache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/meshkit/mesh/pkg/bus"
)

func (s *Server) get(_ context.Context, c *bus.Call) {
	key, err := getKey(c)
	if err != nil {
		c.Reply(nil, err)
		return
	}
	via := hopOf(c)
	if via == hopHandoff { // a new owner asks what this node has
		rep, _ := s.lookup(key)
		c.Reply(rep, nil)
		return
	}
	var buf [4]string
	owners := s.owners(s.ring(), key, buf[:0])
	mine := slices.Index(owners, s.cfg.ID)
	if mine >= 0 || via != "" {
		if rep, ok := s.hit(key); ok {
			replyGet(c, rep)
			return
		}
	}
	if mine == 0 || via != "" { // a miss at the owner (or where the owner sent it)
		s.miss(c, key, owners)
		return
	}
	s.forward(c, OpGet, withoutSelf(owners, s.cfg.ID))
}

// getKey reads the key of a GET, from a msgpack body without decoding it
// when it can.
func getKey(c *bus.Call) (string, error) {
	if c.Codec() == bus.MsgPack {
		if key, ok := parseGetRequest(c.Data()); ok {
			return key, CheckKey(key)
		}
	}
	var req GetRequest
	if err := c.Decode(&req); err != nil {
		return "", err
	}
	return req.Key, nil
}

// replyGet answers a GET with rep: in msgpack, written straight into a
// pooled buffer.
func replyGet(c *bus.Call, rep GetReply) {
	if c.Codec() != bus.MsgPack {
		c.Reply(rep, nil)
		return
	}
	appendReply(32+len(rep.Value), func(b []byte) []byte { return appendGetReply(b, rep) }).send(c)
}

// lookup reads a key from the store.
func (s *Server) lookup(key string) (GetReply, bool) {
	v, left, ok := s.store.get(key)
	if !ok {
		return GetReply{}, false
	}
	rep := GetReply{Found: true, Value: v}
	if left > 0 {
		rep.TTLms = max(left.Milliseconds(), 1)
	}
	return rep, true
}

func (s *Server) hit(key string) (GetReply, bool) {
	rep, ok := s.lookup(key)
	if ok {
		s.hits.Add(1)
	}
	return rep, ok
}

// miss answers a miss at the owner: at once when there is nobody to ask,
// else on a worker that asks the previous owners or the loader.
func (s *Server) miss(c *bus.Call, key string, owners []string) {
	from, ask := s.missFrom(key, owners)
	if !ask {
		c.Reply(GetReply{}, nil)
		return
	}
	c.Go(func(ctx context.Context) { c.Reply(s.fill(ctx, key, from)) })
}

// missFrom returns the nodes that a miss at the owner asks (see
// handoffSources), and whether there is anyone to ask, the loader
// included; when there is not, the miss is counted.
func (s *Server) missFrom(key string, owners []string) ([]string, bool) {
	from := s.handoffSources(key, owners)
	if len(from) == 0 && s.loader(key) == "" {
		s.misses.Add(1)
		return nil, false
	}
	return from, true
}

// handoffSources lists the nodes that may hold a key this owner misses: the
// key's owners under the rings replaced within the grace period when this
// node held no copy then, and while the node is new, the owners the key had
// before the node joined (the other nodes may have routed by that ring while
// this node's ring already had it) and its current replicas.
func (s *Server) handoffSources(key string, owners []string) []string {
	now := time.Now()
	s.mu.Lock()
	prev := s.prev
	s.mu.Unlock()
	var out []string
	add := func(ids []string) {
		for _, id := range ids {
			if id != s.cfg.ID && !slices.Contains(out, id) {
				out = append(out, id)
			}
		}
	}
	// The window lasts the grace period, and as long as keys keep coming
	// by hand-off (a put within the last 4 heartbeats, or 2 s): a hand-off
	// that outlasts the grace period is still under way.
	streaming := now.UnixNano()-s.reb.lastPut.Load() < int64(max(4*s.heartbeat(), 2*time.Second))
	for _, o := range prev {
		if now.After(o.until) && !streaming {
			continue
		}
		if was := s.owners(o.r, key, nil); !slices.Contains(was, s.cfg.ID) {
			add(was)
		}
	}
	if now.Sub(s.started) < s.cfg.Grace || streaming {
		if r := s.ring(); r.Len() > 1 {
			if w := s.ringWithout(r); w.Len() > 0 {
				add(w.Owners(key, min(s.cfg.Replicas, w.Len())))
			}
		}
		add(owners)
	}
	return out
}

// loader returns the loader subject of a key's namespace, if any.
func (s *Server) loader(key string) string {
	if len(s.cfg.Loaders) == 0 {
		return ""
	}
	ns, _, ok := strings.Cut(key, ":")
	if !ok {
		return ""
	}
	return s.cfg.Loaders[ns]
}

// fill resolves a miss at the owner, once per key however many requests
// wait: from the previous owners, else from the loader.
func (s *Server) fill(ctx context.Context, key string, from []string) (GetReply, error) {
	v, err, _ := s.fills.Do(key, func() (any, error) { return s.resolve(ctx, key, from) })
	rep, _ := v.(GetReply)
	return rep, err
}

func (s *Server) resolve(ctx context.Context, key string, from []string) (GetReply, error) {
	// A write may have landed since the miss was seen.
	if rep, ok := s.hit(key); ok {
		return rep, nil
	}
	for _, id := range from {
		var rep GetReply
		err := s.ask(ctx, id, OpGet, hopHandoff, GetRequest{Key: key}, &rep)
		if errors.Is(err, bus.ErrTimeout) && ctx.Err() == nil {
			// A node slow to answer (a loaded machine) is asked once more
			// before its copy counts as missing.
			err = s.ask(ctx, id, OpGet, hopHandoff, GetRequest{Key: key}, &rep)
		}
		if err != nil {
			s.log.Debug().Err(err).Str("from", id).Msg("hand-off failed")
			continue
		}
		if rep.Found {
			// Version 0: kept unless a write or a hand-off brought the
			// key meanwhile; a hand-off of the key replaces it.
			s.store.put(key, rep.Value, expiry(time.Duration(rep.TTLms)*time.Millisecond), 0)
			s.handoffs.Add(1)
			return rep, nil
		}
	}
	subj := s.loader(key)
	if subj == "" {
		s.misses.Add(1)
		return GetReply{}, nil
	}
	lctx, cancel := context.WithTimeout(ctx, s.cfg.LoaderTimeout)
	defer cancel()
	lr, err := bus.Request[LoadRequest, LoadReply](lctx, s.nc, subj, LoadRequest{Key: key})
	if err != nil {
		return GetReply{}, ErrLoader.With("loader %s for %q: %v", subj, key, err)
	}
	s.misses.Add(1)
	if !lr.Found {
		return GetReply{}, nil
	}
	if checkTTL(lr.TTLms) != nil || len(lr.Value) > s.cfg.MaxValueBytes {
		return GetReply{}, ErrLoader.With("loader %s for %q: a ttl_ms outside [0, %d] or a value above %d bytes", subj, key, int64(MaxTTLms), s.cfg.MaxValueBytes)
	}
	s.loads.Add(1)
	ttl := time.Duration(lr.TTLms) * time.Millisecond
	ver := s.clock.next()
	s.store.put(key, lr.Value, expiry(ttl), ver)
	// The copies are written as a set would write them; a replica that
	// fails only costs a later miss there.
	var buf [4]string
	if others := withoutSelf(s.owners(s.ring(), key, buf[:0]), s.cfg.ID); len(others) > 0 {
		item := SetRequest{Key: key, Value: present(lr.Value), TTLms: lr.TTLms}
		if _, err := s.copyTo(ctx, key, others, OpSet, ver, item, nil); err != nil {
			s.log.Warn().Err(err).Str("key", key).Msg("loaded value not replicated")
		}
	}
	rep := GetReply{Found: true, Value: lr.Value}
	if lr.TTLms > 0 {
		rep.TTLms = lr.TTLms
	}
	return rep, nil
}
