package cache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Replicas must match the nodes' Config.Replicas: it tells the client
	// where the copies of a key are. Zero: 2.
	Replicas int
	// AttemptTimeout bounds the wait for one node before the client tries
	// the next copy holder. Zero: 1s.
	AttemptTimeout time.Duration
	// Heartbeat is the nodes' membership interval H. Zero: 1s.
	Heartbeat time.Duration
	Logger    zerolog.Logger // zero: no logs
}

// Client is the Go SDK of the cache. It keeps the ring from the nodes'
// heartbeats and sends each request straight to the key's owner (a batch, to
// as few copy holders as possible), falling back to a replica when the owner
// does not answer in time, and to any node when no copy holder does. Start
// it before use; it is safe for concurrent use.
type Client struct {
	nc      *nats.Conn
	cfg     ClientConfig
	watcher *membership.Watcher
}

// NewClient returns a client ready to Start.
func NewClient(nc *nats.Conn, cfg ClientConfig) (*Client, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 2
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = time.Second
	}
	w, err := membership.NewWatcher(nc, membership.WatcherConfig{Service: Service, Interval: cfg.Heartbeat, IdentitySubject: identitySubject, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	return &Client{nc: nc, cfg: cfg, watcher: w}, nil
}

// Start learns the nodes (it asks them to announce themselves) and follows
// their joins and leaves until Close.
func (c *Client) Start(ctx context.Context) error { return c.watcher.Start(ctx) }

// Close stops following the nodes.
func (c *Client) Close(ctx context.Context) error { return c.watcher.Stop(ctx) }

// Ring is the client's current view of the nodes.
func (c *Client) Ring() *ring.Ring { return c.watcher.Ring() }

// Changed returns a channel closed at the next change of the client's ring.
func (c *Client) Changed() <-chan struct{} { return c.watcher.Changed() }

func (c *Client) owners(r *ring.Ring, key string) []string {
	return r.Owners(key, min(c.cfg.Replicas, r.Len()))
}

// do sends one request to the first node of nodes that answers, or to the
// service subject (any node) when the client knows no node.
func (c *Client) do(ctx context.Context, nodes []string, op string, req, resp any) error {
	data, err := bus.MsgPack.Marshal(req)
	if err != nil {
		return err
	}
	return c.send(ctx, nodes, op, data, func(b []byte) error { return bus.MsgPack.Unmarshal(b, resp) })
}

// send is do with the request encoded and the reply decoded by the caller.
// With more than one node, each gets AttemptTimeout before the next is tried.
func (c *Client) send(ctx context.Context, nodes []string, op string, data []byte, decode func([]byte) error) error {
	if len(nodes) == 0 {
		m, err := bus.RequestMsg(ctx, c.nc, &nats.Msg{Subject: "mesh.cache." + op, Data: data})
		if err != nil {
			return mapError(err)
		}
		return decode(m.Data)
	}
	var err error
	for i, id := range nodes {
		var m *nats.Msg
		msg := &nats.Msg{Subject: NodeSubject(id, op), Data: data}
		if len(nodes) > 1 {
			m, err = bus.RequestMsgWithin(ctx, c.nc, msg, c.cfg.AttemptTimeout)
		} else {
			m, err = bus.RequestMsg(ctx, c.nc, msg)
		}
		if err == nil {
			return decode(m.Data)
		}
		if err = mapError(err); !unreachable(err) || ctx.Err() != nil || i == len(nodes)-1 {
			break
		}
	}
	if unreachable(err) && ctx.Err() == nil {
		// Every node the ring names for the key failed: the ring may not
		// know yet that they are gone, while the nodes' rings may. Any node
		// will do.
		return c.send(ctx, nil, op, data, decode)
	}
	return err
}

// mapError returns the package's sentinel for a coded error, so that
// errors.Is(err, cache.ErrValueTooLarge) works after a round trip.
func mapError(err error) error {
	var e *bus.Error
	if !errors.As(err, &e) {
		return err
	}
	for _, s := range sentinels {
		if errors.Is(e, s) {
			return s.With("%s", e.Message)
		}
	}
	return err
}

// Get returns a key's value, or ErrNotFound.
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	var buf [4]string
	r := c.Ring()
	rep, err := c.get(ctx, r.AppendOwners(buf[:0], key, min(c.cfg.Replicas, r.Len())), key)
	if err != nil {
		return nil, err
	}
	if !rep.Found {
		return nil, ErrNotFound.With("%q not found", key)
	}
	return rep.value(), nil
}

// get is do for a GetRequest, with the hand-written codec.
func (c *Client) get(ctx context.Context, nodes []string, key string) (GetReply, error) {
	var rep GetReply
	err := c.send(ctx, nodes, OpGet, appendGetRequest(make([]byte, 0, 8+len(key)), key), func(b []byte) error {
		var ok bool
		if rep, ok = parseGetReply(b); ok {
			return nil
		}
		return bus.MsgPack.Unmarshal(b, &rep)
	})
	return rep, err
}

// Set stores a value on the key's owner and replicas; ttl 0 keeps it until
// it is evicted or deleted. It returns once every copy is written.
func (c *Client) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	req := SetRequest{Key: key, Value: present(value), TTLms: ttl.Milliseconds()}
	if err := req.Validate(); err != nil {
		return err
	}
	var rep SetReply
	return c.do(ctx, c.owners(c.Ring(), key), OpSet, req, &rep)
}

// Delete removes a key from every copy holder and reports whether the owner
// had it.
func (c *Client) Delete(ctx context.Context, key string) (bool, error) {
	if err := CheckKey(key); err != nil {
		return false, err
	}
	var rep DelReply
	err := c.do(ctx, c.owners(c.Ring(), key), OpDel, DelRequest{Key: key}, &rep)
	return rep.Deleted, err
}

// MGet reads several keys at once: the values in the order of keys, nil for
// a miss (an empty value is empty, not nil). Each key goes to one of its
// copy holders, chosen so that the batch takes as few requests as possible;
// they run in parallel.
func (c *Client) MGet(ctx context.Context, keys ...string) ([][]byte, error) {
	req := MGetRequest{Keys: keys}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	out := make([][]byte, len(keys))
	groups := c.cover(c.Ring(), keys)
	fetch := func(g group) error {
		sub := keys // a group of all the keys, in order
		if len(g.idx) < len(keys) {
			sub = make([]string, len(g.idx))
			for j, i := range g.idx {
				sub[j] = keys[i]
			}
		}
		var nodes []string
		if g.node != "" {
			nodes = []string{g.node}
		}
		// The node passes on what it holds no copy of; when it does not
		// answer, send asks any node.
		return c.mget(ctx, nodes, sub, func(j int, v []byte) { out[g.idx[j]] = v })
	}
	if len(groups) == 1 {
		return out, fetch(groups[0])
	}
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for gi, g := range groups {
		wg.Go(func() { errs[gi] = fetch(g) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// mget is do for an MGetRequest, with the hand-written codec: set(j, v)
// receives the value of keys[j], nil for a miss.
func (c *Client) mget(ctx context.Context, nodes, keys []string, set func(j int, v []byte)) error {
	size := 16
	for _, k := range keys {
		size += 5 + len(k)
	}
	return c.send(ctx, nodes, OpMGet, appendMGetRequest(make([]byte, 0, size), keys), func(b []byte) error {
		if _, ok := eachGetReply(b, func(n, j int, r GetReply) bool {
			if n != len(keys) {
				return false
			}
			set(j, r.value())
			return true
		}); ok {
			return nil
		}
		var rep MGetReply
		if err := bus.MsgPack.Unmarshal(b, &rep); err != nil {
			return err
		}
		if len(rep.Values) != len(keys) {
			return bus.ErrInternal.With("mget: %d values for %d keys", len(rep.Values), len(keys))
		}
		for j, r := range rep.Values {
			set(j, r.value())
		}
		return nil
	})
}

type group struct {
	node string
	idx  []int
}

// cover assigns each key to one of its copy holders, greedily taking the
// node that holds the most unassigned keys first.
func (c *Client) cover(r *ring.Ring, keys []string) []group {
	n := min(c.cfg.Replicas, r.Len())
	if n == r.Len() {
		// No node known (any will do), or every node holds every key: the
		// first key's owner takes them all, as the greedy choice below would.
		g := group{node: r.Owner(keys[0]), idx: make([]int, len(keys))}
		for i := range g.idx {
			g.idx[i] = i
		}
		return []group{g}
	}
	holders := make([]string, 0, n*len(keys)) // key i's holders: [i*n, (i+1)*n)
	for _, k := range keys {
		holders = r.AppendOwners(holders, k, n)
	}
	assigned := make([]bool, len(keys))
	left := len(keys)
	var groups []group
	type tally struct {
		id string
		n  int
	}
	var counts []tally // few nodes: a slice beats a map
	for left > 0 {
		counts = counts[:0]
		for i := range keys {
			if assigned[i] {
				continue
			}
		next:
			for _, h := range holders[i*n : (i+1)*n] {
				for j := range counts {
					if counts[j].id == h {
						counts[j].n++
						continue next
					}
				}
				counts = append(counts, tally{h, 1})
			}
		}
		// Ties go to the first one counted, the owner of the first key
		// left: keys spread the batches over the nodes as they spread.
		best := counts[0]
		for _, t := range counts[1:] {
			if t.n > best.n {
				best = t
			}
		}
		g := group{node: best.id, idx: make([]int, 0, best.n)}
		for i := range keys {
			if !assigned[i] && slices.Contains(holders[i*n:(i+1)*n], best.id) {
				assigned[i] = true
				g.idx = append(g.idx, i)
				left--
			}
		}
		groups = append(groups, g)
	}
	return groups
}

// MSet writes several keys with one TTL (0: none), through their owners.
func (c *Client) MSet(ctx context.Context, items map[string][]byte, ttl time.Duration) error {
	req := MSetRequest{}
	for k, v := range items {
		req.Items = append(req.Items, SetRequest{Key: k, Value: present(v), TTLms: ttl.Milliseconds()})
	}
	if err := req.Validate(); err != nil {
		return err
	}
	r := c.Ring()
	byOwner := map[string][]SetRequest{}
	for _, it := range req.Items {
		owner := ""
		if r.Len() > 0 {
			owner = r.Owner(it.Key)
		}
		byOwner[owner] = append(byOwner[owner], it)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for owner, items := range byOwner {
		wg.Go(func() {
			var nodes []string
			if owner != "" {
				nodes = []string{owner}
			}
			var rep MSetReply
			// An owner that does not answer: send asks any node.
			if err := c.do(ctx, nodes, OpMSet, MSetRequest{Items: items}, &rep); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Stats returns the figures of every node and their sum.
func (c *Client) Stats(ctx context.Context) (StatsReply, error) {
	var rep StatsReply
	err := c.do(ctx, nil, OpStats, StatsRequest{}, &rep)
	return rep, err
}
