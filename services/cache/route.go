package cache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
)

// The handlers run Inline: a hit, a miss and a write without replicas are
// answered from memory in the subscription's callback, a forward and a
// single replica's write from the reply in the callback that receives it;
// whatever else waits on another node (a forward tried elsewhere, replica
// writes, a hand-off, a loader) continues on a worker (bus.Call.Go).

func hopOf(c *bus.Call) string { return c.Header().Get(HeaderHop) }

// passOn is a request's body passed on to node id with hop: a copy for a
// replica (hopReplica), or forwarded to an owner (hopForward), which must
// not pass it on again.
func passOn(body *bus.Call, id, op, hop string) *nats.Msg {
	m := &nats.Msg{Subject: NodeSubject(id, op), Header: nats.Header{HeaderHop: []string{hop}}, Data: body.Data()}
	if ct := body.Header().Get(bus.HeaderContentType); ct != "" {
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
func (s *Server) copyTo(ctx context.Context, key string, nodes []string, op string, ver uint64, req any, body *bus.Call) (int, error) {
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
// marked so that it is not passed on again, and returns that node's reply.
func (s *Server) relay(ctx context.Context, c *bus.Call, op string, nodes []string) ([]byte, error) {
	var last error = ErrUnavailable.With("no node holds the key")
	for _, id := range nodes {
		s.forwards.Add(1)
		rep, err := bus.RequestMsgWithin(ctx, s.nc, passOn(c, id, op, hopForward), s.cfg.AttemptTimeout)
		if err == nil {
			return rep.Data, nil
		}
		if !unreachable(err) {
			return nil, err
		}
		last = ErrUnavailable.With("node %s: %v", id, err)
	}
	return nil, last
}

// forward answers a request with relay's reply: from the first node's
// reply, in the callback that receives it, with no goroutine waiting for
// it; if that node cannot be reached, the others are asked on a worker.
func (s *Server) forward(c *bus.Call, op string, nodes []string) {
	if len(nodes) == 0 {
		c.Reply(nil, ErrUnavailable.With("no node holds the key"))
		return
	}
	s.forwards.Add(1)
	s.replies.send(passOn(c, nodes[0], op, hopForward), s.cfg.AttemptTimeout, func(rep *nats.Msg, err error) {
		switch {
		case err == nil:
			c.ReplyRaw(rep.Data)
		case !unreachable(err):
			c.Reply(nil, err)
		case len(nodes) == 1:
			c.Reply(nil, ErrUnavailable.With("node %s: %v", nodes[0], err))
		default:
			c.Go(func(ctx context.Context) {
				rep, err := s.relay(ctx, c, op, nodes[1:])
				if err != nil {
					c.Reply(nil, err)
					return
				}
				c.ReplyRaw(rep)
			})
		}
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
