package cache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

// The handlers run Inline: a hit, a miss and a write without replicas are
// answered from memory in the subscription's callback; whatever waits on
// another node (a forward, a replica write, a hand-off, a loader) continues
// on a worker.

func hopOf(m *bus.Msg) string { return m.Header.Get(HeaderHop) }

func formatVersion(r *ring.Ring) string {
	if r.Len() == 0 {
		return ""
	}
	return membership.FormatVersion(r.Version())
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

func (s *Server) get(_ context.Context, m *bus.Msg) (any, error) {
	var req GetRequest
	key, fast := "", false
	if m.Codec == bus.MsgPack {
		key, fast = parseGetRequest(m.Data)
	}
	if fast {
		if err := CheckKey(key); err != nil {
			return nil, err
		}
		req.Key = key
	} else if err := m.Decode(&req); err != nil {
		return nil, err
	}
	via := hopOf(m)
	if via == hopHandoff { // a new owner asks what this node has
		rep, _ := s.lookup(req.Key)
		return rep, nil
	}
	var buf [4]string
	owners := s.owners(s.ring(), req.Key, buf[:0])
	mine := slices.Index(owners, s.cfg.ID)
	if mine >= 0 || via != "" {
		if rep, ok := s.hit(req.Key); ok {
			if m.Codec == bus.MsgPack {
				return pooledReply(32+len(rep.Value), func(b []byte) []byte { return appendGetReply(b, rep) }), nil
			}
			return rep, nil
		}
	}
	if mine == 0 || via != "" { // a miss at the owner (or where the owner sent it)
		return s.miss(req.Key, owners), nil
	}
	return s.forward(m, OpGet, withoutSelf(owners, s.cfg.ID)), nil
}

// miss answers a miss at the owner: at once when there is nobody to ask,
// else on a worker that asks the previous owners or the loader.
func (s *Server) miss(key string, owners []string) any {
	from := s.handoffSources(key, owners)
	if len(from) == 0 && s.loader(key) == "" {
		s.misses.Add(1)
		return GetReply{}
	}
	return bus.Continue(func(ctx context.Context) (any, error) { return s.fill(ctx, key, from) })
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
	for _, o := range prev {
		if now.After(o.until) {
			continue
		}
		if was := s.owners(o.r, key, nil); !slices.Contains(was, s.cfg.ID) {
			add(was)
		}
	}
	if now.Sub(s.started) < s.cfg.Grace {
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
	s.mu.Lock()
	if c, ok := s.calls[key]; ok {
		s.mu.Unlock()
		select {
		case <-c.done:
			return c.rep, c.err
		case <-ctx.Done():
			return GetReply{}, ctx.Err()
		}
	}
	c := &call{done: make(chan struct{})}
	s.calls[key] = c
	s.mu.Unlock()
	c.rep, c.err = s.resolve(ctx, key, from)
	s.mu.Lock()
	delete(s.calls, key)
	s.mu.Unlock()
	close(c.done)
	return c.rep, c.err
}

func (s *Server) resolve(ctx context.Context, key string, from []string) (GetReply, error) {
	// A write may have landed since the miss was seen.
	if rep, ok := s.hit(key); ok {
		return rep, nil
	}
	for _, id := range from {
		var rep GetReply
		if err := s.ask(ctx, id, OpGet, hopHandoff, GetRequest{Key: key}, &rep); err != nil {
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

func (s *Server) set(_ context.Context, m *bus.Msg) (any, error) {
	var req SetRequest
	if err := m.Decode(&req); err != nil {
		return nil, err
	}
	if len(req.Value) > s.cfg.MaxValueBytes {
		return nil, ErrValueTooLarge.With("value of %d bytes exceeds %d", len(req.Value), s.cfg.MaxValueBytes)
	}
	via := hopOf(m)
	ttl := time.Duration(req.TTLms) * time.Millisecond
	if via == hopReplica {
		s.store.put(req.Key, req.Value, expiry(ttl), s.versionOf(m.Header))
		s.strayCheck(req.Key)
		return SetReply{Copies: 1}, nil
	}
	var buf [4]string
	r := s.ring()
	owners := s.owners(r, req.Key, buf[:0])
	if owners[0] == s.cfg.ID || via != "" {
		return s.own(m, &req, r, owners, true)
	}
	owners = slices.Clone(owners)
	return bus.Continue(func(ctx context.Context) (any, error) {
		holder := slices.Contains(owners, s.cfg.ID)
		to := owners[:1]
		if !holder {
			to = withoutSelf(owners, s.cfg.ID)
		}
		rep, err := s.relay(ctx, m, OpSet, to)
		if err == nil || !unreachable(err) || !holder {
			return rep, err
		}
		// The owner does not answer and this node holds a copy: it takes
		// the write as the owner would.
		rep, err = s.own(m, &req, s.ring(), owners, false)
		if cont, ok := rep.(bus.Continue); ok && err == nil {
			return cont(ctx)
		}
		return rep, err
	}), nil
}

// own stores a set as the key's owner and writes the copies. In the
// subscription's callback (callback true), the copy to a single replica is
// answered from its reply (bus.Deferred); elsewhere, on a worker.
func (s *Server) own(m *bus.Msg, req *SetRequest, r *ring.Ring, owners []string, callback bool) (any, error) {
	ver := s.clock.next()
	s.store.put(req.Key, req.Value, expiry(time.Duration(req.TTLms)*time.Millisecond), ver)
	s.raced(r)
	others := withoutSelf(owners, s.cfg.ID)
	if len(others) == 0 {
		return SetReply{Copies: 1}, nil
	}
	copies := bus.Continue(func(ctx context.Context) (any, error) {
		n, err := s.copyTo(ctx, req.Key, others, OpSet, ver, nil, m)
		if err != nil {
			return nil, err
		}
		return SetReply{Copies: 1 + n}, nil
	})
	if len(others) > 1 || !callback {
		return copies, nil
	}
	// One replica (R = 2): answered from its reply, unless it fails to
	// give one; then the copy is written as above (asked again, or to a
	// stand-in for a replica gone).
	return bus.Deferred(func(reply func(any, error)) {
		cm := passOn(m, others[0], OpSet, hopReplica)
		setVersion(cm.Header, ver)
		s.replies.send(cm, s.cfg.AttemptTimeout, func(_ *nats.Msg, err error) {
			if err != nil {
				reply(copies, nil)
				return
			}
			reply(SetReply{Copies: 2}, nil)
		})
	}), nil
}

func (s *Server) del(_ context.Context, m *bus.Msg) (any, error) {
	var req DelRequest
	if err := m.Decode(&req); err != nil {
		return nil, err
	}
	via := hopOf(m)
	if via == hopReplica {
		s.tomb(req.Key, s.versionOf(m.Header))
		return DelReply{Deleted: s.store.del(req.Key)}, nil
	}
	var buf [4]string
	owners := s.owners(s.ring(), req.Key, buf[:0])
	if owners[0] != s.cfg.ID && via == "" {
		return s.forward(m, OpDel, withoutSelf(owners, s.cfg.ID)), nil
	}
	ver := s.clock.next()
	s.tomb(req.Key, ver)
	deleted := s.store.del(req.Key)
	// The previous owners lose their copy too, or a hand-off would bring
	// the key back.
	others := withoutSelf(owners, s.cfg.ID)
	prev := s.handoffSources(req.Key, nil)
	if len(others) == 0 && len(prev) == 0 {
		return DelReply{Deleted: deleted}, nil
	}
	return bus.Continue(func(ctx context.Context) (any, error) {
		for _, id := range prev {
			if !slices.Contains(others, id) {
				var r DelReply
				_ = s.askVersion(ctx, id, OpDel, hopReplica, ver, req, &r)
			}
		}
		if _, err := s.copyTo(ctx, req.Key, others, OpDel, ver, nil, m); err != nil {
			return nil, err
		}
		return DelReply{Deleted: deleted}, nil
	}), nil
}

// passOn is request body passed on to node id with hop: a copy for a
// replica (hopReplica), or forwarded to an owner (hopForward), which must
// not pass it on again.
func passOn(body *bus.Msg, id, op, hop string) *nats.Msg {
	m := &nats.Msg{Subject: NodeSubject(id, op), Header: nats.Header{HeaderHop: []string{hop}}, Data: body.Data}
	if ct := body.Header.Get(bus.HeaderContentType); ct != "" {
		m.Header.Set(bus.HeaderContentType, ct)
	}
	return m
}

// copyTo sends a write of key to replicas, all at once, and returns how
// many stored it; it fails unless all did. A request the owner received is
// passed on as it came (body is its body, in its codec); req is encoded
// otherwise. A replica that no longer listens (it crashed or stopped, and
// the ring has not dropped it yet) is replaced by the member that takes its
// place once it is dropped; when there is none (every other node holds a
// copy already), the write counts one copy fewer instead of failing.
func (s *Server) copyTo(ctx context.Context, key string, nodes []string, op string, ver uint64, req any, body *bus.Msg) (int, error) {
	var m *nats.Msg
	if body != nil {
		m = passOn(body, "", op, hopReplica)
	} else {
		data, err := bus.MsgPack.Marshal(req)
		if err != nil {
			return 0, err
		}
		m = &nats.Msg{Header: nats.Header{HeaderHop: []string{hopReplica}}, Data: data}
	}
	setVersion(m.Header, ver)
	try := func(id string) error {
		cm := *m
		cm.Subject = NodeSubject(id, op)
		_, err := bus.RequestMsgWithin(ctx, s.nc, &cm, s.cfg.AttemptTimeout)
		return err
	}
	// send returns 1 for a copy written, 0 for a replica gone without a
	// stand-in, or an error.
	send := func(id string) (int, error) {
		err := try(id)
		if errors.Is(err, bus.ErrTimeout) && ctx.Err() == nil {
			// The replica may have died holding the request: ask once more
			// (a copy is written the same way twice); a node gone by then
			// has no responders, and is stood in for below.
			err = try(id)
		}
		if errors.Is(err, nats.ErrNoResponders) {
			alt := s.spare(key, nodes)
			if alt == "" {
				return 0, nil
			}
			id, err = alt, try(alt)
		}
		if err != nil {
			return 0, ErrUnavailable.With("replica %s: %v", id, err)
		}
		return 1, nil
	}
	if len(nodes) == 1 {
		return send(nodes[0])
	}
	n := make([]int, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, id := range nodes {
		wg.Go(func() { n[i], errs[i] = send(id) })
	}
	wg.Wait()
	copies := 0
	for _, c := range n {
		copies += c
	}
	return copies, errors.Join(errs...)
}

// spare returns the first member in key's ring order after its copy
// holders (this node and taken), or "" when there is none.
func (s *Server) spare(key string, taken []string) string {
	r := s.ring()
	for _, id := range r.Owners(key, r.Len()) {
		if id != s.cfg.ID && !slices.Contains(taken, id) {
			return id
		}
	}
	return ""
}

// relay passes a request as it came to the first of nodes that answers,
// marked so that it is not passed on again.
func (s *Server) relay(ctx context.Context, m *bus.Msg, op string, nodes []string) (any, error) {
	var last error = ErrUnavailable.With("no node holds the key")
	for _, id := range nodes {
		s.forwards.Add(1)
		rep, err := bus.RequestMsgWithin(ctx, s.nc, passOn(m, id, op, hopForward), s.cfg.AttemptTimeout)
		if err == nil {
			return bus.Raw(rep.Data), nil
		}
		if !unreachable(err) {
			return nil, err
		}
		last = ErrUnavailable.With("node %s: %v", id, err)
	}
	return nil, last
}

// forward is relay answered from the first node's reply in the callback
// that receives it (bus.Deferred), without a goroutine waiting for it; if
// that node cannot be reached, the others are asked on a worker.
func (s *Server) forward(m *bus.Msg, op string, nodes []string) any {
	if len(nodes) == 0 {
		return bus.Continue(func(ctx context.Context) (any, error) { return s.relay(ctx, m, op, nodes) })
	}
	return bus.Deferred(func(reply func(any, error)) {
		s.forwards.Add(1)
		s.replies.send(passOn(m, nodes[0], op, hopForward), s.cfg.AttemptTimeout, func(rep *nats.Msg, err error) {
			switch {
			case err == nil:
				reply(bus.Raw(rep.Data), nil)
			case !unreachable(err):
				reply(nil, err)
			case len(nodes) == 1:
				reply(nil, ErrUnavailable.With("node %s: %v", nodes[0], err))
			default:
				reply(bus.Continue(func(ctx context.Context) (any, error) { return s.relay(ctx, m, op, nodes[1:]) }), nil)
			}
		})
	})
}

// ask sends a request in msgpack to one node.
func (s *Server) ask(ctx context.Context, id, op, via string, req, resp any) error {
	return s.askVersion(ctx, id, op, via, 0, req, resp)
}

// askVersion is ask with the version of the write it copies (0: none).
func (s *Server) askVersion(ctx context.Context, id, op, via string, ver uint64, req, resp any) error {
	return s.askWithin(ctx, id, op, via, ver, s.cfg.AttemptTimeout, req, resp)
}

func (s *Server) askWithin(ctx context.Context, id, op, via string, ver uint64, d time.Duration, req, resp any) error {
	data, err := bus.MsgPack.Marshal(req)
	if err != nil {
		return err
	}
	m := &nats.Msg{Subject: NodeSubject(id, op), Header: nats.Header{HeaderHop: []string{via}}, Data: data}
	if ver != 0 {
		setVersion(m.Header, ver)
	}
	rep, err := bus.RequestMsgWithin(ctx, s.nc, m, d)
	if err != nil {
		return err
	}
	return bus.MsgPack.Unmarshal(rep.Data, resp)
}

func unreachable(err error) bool {
	return errors.Is(err, bus.ErrUnavailable) || errors.Is(err, bus.ErrTimeout)
}

func withoutSelf(ids []string, self string) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if id != self {
			out = append(out, id)
		}
	}
	return out
}

func (s *Server) mget(_ context.Context, m *bus.Msg) (any, error) {
	r := s.ring()
	via := hopOf(m)
	if m.Codec == bus.MsgPack {
		if rep, ok := s.mgetHits(m.Data, r, via != ""); ok {
			return rep, nil
		}
	}
	var req MGetRequest
	fast := false
	if m.Codec == bus.MsgPack {
		req.Keys, fast = parseMGetRequest(m.Data)
	}
	if fast {
		if err := req.Validate(); err != nil {
			return nil, err
		}
	} else if err := m.Decode(&req); err != nil {
		return nil, err
	}
	reply := func(rep MGetReply) any {
		if m.Codec != bus.MsgPack {
			return rep
		}
		return mgetReply(rep.Values)
	}
	rep := MGetReply{Values: make([]GetReply, len(req.Keys))}
	var rest []int
	var buf [4]string
	for i, k := range req.Keys {
		if via != "" || slices.Contains(s.owners(r, k, buf[:0]), s.cfg.ID) {
			if v, ok := s.hit(k); ok {
				rep.Values[i] = v
				continue
			}
		}
		rest = append(rest, i)
	}
	if len(rest) == 0 {
		return reply(rep), nil
	}
	return bus.Continue(func(ctx context.Context) (any, error) {
		if err := s.mgetRest(ctx, r, req.Keys, rest, via != "", rep.Values); err != nil {
			return nil, err
		}
		return reply(rep), nil
	}), nil
}

// mgetHits answers a msgpack MGET of at most 16 keys that this node holds
// copies of and has (or was sent, any): the request is read and the reply
// written with no copy of a key or value in between. ok false: the request
// is malformed, or a key invalid, missing or elsewhere; it then takes the
// general path, which says which.
func (s *Server) mgetHits(data []byte, r *ring.Ring, sent bool) (any, bool) {
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
		return nil, false
	}
	s.hits.Add(int64(n))
	return mgetReply(vals[:n]), true
}

// mgetReply is the msgpack reply of an MGET.
func mgetReply(vals []GetReply) any {
	size := 16
	for _, v := range vals {
		size += 32 + len(v.Value)
	}
	return pooledReply(size, func(b []byte) []byte { return appendMGetReply(b, vals) })
}

// hitBufs are the buffers of msgpack replies (GET hits, MGETs) up to
// maxPooled bytes: reused, they spare the allocation and its garbage
// collection.
var hitBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

const maxPooled = 64 << 10

// pooledReply is the reply that write appends to an empty buffer of at
// least size bytes: a pooled one when size is at most maxPooled.
func pooledReply(size int, write func([]byte) []byte) any {
	if size > maxPooled {
		return bus.Raw(write(make([]byte, 0, size)))
	}
	b := hitBufs.Get().(*[]byte)
	*b = write((*b)[:0])
	return bus.Pooled{Buf: b, Pool: &hitBufs}
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
			switch v := s.miss(keys[i], owners).(type) {
			case GetReply:
				out[i] = v
			case bus.Continue:
				wg.Go(func() {
					rep, err := v(ctx)
					if err != nil {
						mu.Lock()
						loadErr = err
						mu.Unlock()
						return
					}
					out[i] = rep.(GetReply)
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

func (s *Server) mset(_ context.Context, m *bus.Msg) (any, error) {
	var req MSetRequest
	if err := m.Decode(&req); err != nil {
		return nil, err
	}
	for _, it := range req.Items {
		if len(it.Value) > s.cfg.MaxValueBytes {
			return nil, ErrValueTooLarge.With("value of %q: %d bytes exceeds %d", it.Key, len(it.Value), s.cfg.MaxValueBytes)
		}
	}
	via := hopOf(m)
	if via == hopReplica {
		ver := s.versionOf(m.Header)
		for _, it := range req.Items {
			s.store.put(it.Key, it.Value, expiry(time.Duration(it.TTLms)*time.Millisecond), ver)
			s.strayCheck(it.Key)
		}
		return MSetReply{Stored: len(req.Items)}, nil
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
		return MSetReply{Stored: len(req.Items)}, nil
	}
	return bus.Continue(func(ctx context.Context) (any, error) {
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
			return nil, err
		}
		return MSetReply{Stored: len(req.Items)}, nil
	}), nil
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
