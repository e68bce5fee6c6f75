package cache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
)

func (s *Server) mget(_ context.Context, c *bus.Call) {
	r := s.ring()
	via := hopOf(c)
	if c.Codec() == bus.MsgPack {
		if rep, ok := s.mgetHits(c.Data(), r, via != ""); ok {
			rep.send(c)
			return
		}
	}
	keys, err := mgetKeys(c)
	if err != nil {
		c.Reply(nil, err)
		return
	}
	vals := make([]GetReply, len(keys))
	var rest []int
	var buf [4]string
	for i, k := range keys {
		if via != "" || slices.Contains(s.owners(r, k, buf[:0]), s.cfg.ID) {
			if v, ok := s.hit(k); ok {
				vals[i] = v
				continue
			}
		}
		rest = append(rest, i)
	}
	if len(rest) == 0 {
		replyMGet(c, vals)
		return
	}
	c.Go(func(ctx context.Context) {
		if err := s.mgetRest(ctx, r, keys, rest, via != "", vals); err != nil {
			c.Reply(nil, err)
			return
		}
		replyMGet(c, vals)
	})
}

// mgetKeys reads the keys of an MGET, from a msgpack body without the
// general decoder when it can.
func mgetKeys(c *bus.Call) ([]string, error) {
	var req MGetRequest
	fast := false
	if c.Codec() == bus.MsgPack {
		req.Keys, fast = parseMGetRequest(c.Data())
	}
	if fast {
		if err := req.Validate(); err != nil {
			return nil, err
		}
	} else if err := c.Decode(&req); err != nil {
		return nil, err
	}
	return req.Keys, nil
}

// replyMGet answers an MGET with vals: in msgpack, written straight into a
// pooled buffer.
func replyMGet(c *bus.Call, vals []GetReply) {
	if c.Codec() != bus.MsgPack {
		c.Reply(MGetReply{Values: vals}, nil)
		return
	}
	mgetReply(vals).send(c)
}

// mgetHits answers a msgpack MGET of at most 16 keys that this node holds
// copies of and has (or was sent, any): the request is read and the reply
// written with no copy of a key or value in between. ok false: the request
// is malformed, or a key invalid, missing or elsewhere; it then takes the
// general path, which says which.
func (s *Server) mgetHits(data []byte, r *ring.Ring, sent bool) (appended, bool) {
	const most = 16
	var (
		vals [most]GetReply
		buf  [4]string
	)
	n, ok := eachMGetKey(data, func(n, i int, k []byte) bool {
		if n > most || len(k) == 0 {
			return false
		}
		key := unsafe.String(&k[0], len(k)) // only looked up
		if CheckKey(key) != nil || !sent && !slices.Contains(s.owners(r, key, buf[:0]), s.cfg.ID) {
			return false
		}
		var hit bool
		vals[i], hit = s.lookup(key)
		return hit
	})
	if !ok || n == 0 {
		return appended{}, false
	}
	s.hits.Add(int64(n))
	return mgetReply(vals[:n]), true
}

// mgetReply is the msgpack reply of an MGET.
func mgetReply(vals []GetReply) appended {
	size := 16
	for _, v := range vals {
		size += 32 + len(v.Value)
	}
	return appendReply(size, func(b []byte) []byte { return appendMGetReply(b, vals) })
}

// mgetRest fills the values of the keys at rest: a miss this node owns (or
// was sent) is resolved here; the others are asked of their owners, then of
// their replicas, one request per node.
func (s *Server) mgetRest(ctx context.Context, r *ring.Ring, keys []string, rest []int, owner bool, out []GetReply) error {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		loadErr error
	)
	groups := map[string][]int{}
	for _, i := range rest {
		owners := s.owners(r, keys[i], nil)
		if owner || owners[0] == s.cfg.ID {
			if from, ask := s.missFrom(keys[i], owners); ask {
				wg.Go(func() {
					rep, err := s.fill(ctx, keys[i], from)
					if err != nil {
						mu.Lock()
						loadErr = err
						mu.Unlock()
						return
					}
					out[i] = rep
				})
			}
			continue
		}
		groups[owners[0]] = append(groups[owners[0]], i)
	}
	err := s.askGroups(ctx, r, keys, groups, out)
	wg.Wait()
	return errors.Join(err, loadErr)
}

// askGroups sends each node its keys in one mget; the keys of a node that
// does not answer go to their next copy holder.
func (s *Server) askGroups(ctx context.Context, r *ring.Ring, keys []string, groups map[string][]int, out []GetReply) error {
	for attempt := 1; len(groups) > 0; attempt++ {
		var (
			mu     sync.Mutex
			failed = map[string][]int{}
			wg     sync.WaitGroup
		)
		for id, idx := range groups {
			wg.Go(func() {
				req := MGetRequest{Keys: make([]string, len(idx))}
				for j, i := range idx {
					req.Keys[j] = keys[i]
				}
				var rep MGetReply
				s.forwards.Add(1)
				err := s.ask(ctx, id, OpMGet, hopForward, req, &rep)
				if err == nil && len(rep.Values) == len(idx) {
					for j, i := range idx {
						out[i] = rep.Values[j]
					}
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, i := range idx {
					owners := withoutSelf(s.owners(r, keys[i], nil), s.cfg.ID)
					if attempt >= len(owners) {
						failed[""] = append(failed[""], i)
						continue
					}
					next := owners[attempt]
					failed[next] = append(failed[next], i)
				}
			})
		}
		wg.Wait()
		if lost := failed[""]; len(lost) > 0 {
			return ErrUnavailable.With("no copy holder of %q answered", keys[lost[0]])
		}
		groups = failed
	}
	return nil
}

func (s *Server) mset(_ context.Context, c *bus.Call) {
	var req MSetRequest
	if err := c.Decode(&req); err != nil {
		c.Reply(nil, err)
		return
	}
	for _, it := range req.Items {
		if len(it.Value) > s.cfg.MaxValueBytes {
			c.Reply(nil, ErrValueTooLarge.With("value of %q: %d bytes exceeds %d", it.Key, len(it.Value), s.cfg.MaxValueBytes))
			return
		}
	}
	via := hopOf(c)
	if via == hopReplica {
		ver := s.versionOf(c.Header())
		for _, it := range req.Items {
			s.store.put(it.Key, it.Value, expiry(time.Duration(it.TTLms)*time.Millisecond), ver)
			s.strayCheck(it.Key)
		}
		c.Reply(MSetReply{Stored: len(req.Items)}, nil)
		return
	}
	r := s.ring()
	ver := s.clock.next()               // one version for the items this node stores
	copies := map[string][]SetRequest{} // replica writes of the items stored here
	forward := map[string][]SetRequest{}
	for _, it := range req.Items {
		owners := s.owners(r, it.Key, nil)
		if owners[0] != s.cfg.ID && via == "" {
			forward[owners[0]] = append(forward[owners[0]], it)
			continue
		}
		s.store.put(it.Key, it.Value, expiry(time.Duration(it.TTLms)*time.Millisecond), ver)
		for _, id := range withoutSelf(owners, s.cfg.ID) {
			copies[id] = append(copies[id], it)
		}
	}
	s.raced(r)
	if len(copies) == 0 && len(forward) == 0 {
		c.Reply(MSetReply{Stored: len(req.Items)}, nil)
		return
	}
	c.Go(func(ctx context.Context) {
		errs := make(chan error, len(copies)+len(forward))
		var wg sync.WaitGroup
		send := func(id, via string, items []SetRequest) {
			wg.Go(func() {
				var rep MSetReply
				v := ver
				if via != hopReplica {
					v = 0 // the owner gives its own
				}
				err := s.askVersion(ctx, id, OpMSet, via, v, MSetRequest{Items: items}, &rep)
				if via == hopForward && unreachable(err) {
					// The owner is away: its first replica takes the write.
					err = s.msetVia(ctx, r, items)
				}
				if err != nil {
					errs <- ErrUnavailable.With("node %s: %v", id, err)
				}
			})
		}
		for id, items := range copies {
			send(id, hopReplica, items)
		}
		for id, items := range forward {
			s.forwards.Add(1)
			send(id, hopForward, items)
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			c.Reply(nil, err)
			return
		}
		c.Reply(MSetReply{Stored: len(req.Items)}, nil)
	})
}

// msetVia writes items whose owner did not answer through their next copy
// holders, which act as owners.
func (s *Server) msetVia(ctx context.Context, r *ring.Ring, items []SetRequest) error {
	var last error
	for _, it := range items {
		owners := withoutSelf(s.owners(r, it.Key, nil), s.cfg.ID)
		ok := false
		for _, id := range owners[min(1, len(owners)):] {
			var rep MSetReply
			if last = s.ask(ctx, id, OpMSet, hopForward, MSetRequest{Items: []SetRequest{it}}, &rep); last == nil {
				ok = true
				break
			}
		}
		if !ok {
			return ErrUnavailable.With("no copy holder of %q answered", it.Key)
		}
	}
	return nil
}
