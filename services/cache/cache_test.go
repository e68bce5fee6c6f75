package cache_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
	"github.com/meshkit/mesh/services/cache"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	// hb is the heartbeat interval of the tests' nodes, scaled by
	// MESH_TEST_TIME_SCALE (bustest.Scale): a crash is seen within 4 of
	// them, and a live node is dropped only if its heartbeats, or a
	// watcher, stall for 3 of them, which a loaded machine must not do.
	// Tests that wait for a crash to be seen wait on the rings' changes.
	hb = bustest.Scale(250 * time.Millisecond)
	// patience bounds a wait for something that must happen, however
	// slow the machine: not a bound under test.
	patience = bustest.Scale(30 * time.Second)
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

type node struct {
	*cache.Server
	nc *nats.Conn
}

// startNode starts a cache node on its own connection.
func startNode(t *testing.T, url, id string, cfg cache.Config) node {
	t.Helper()
	nc := bustest.Connect(t, url)
	cfg.ID, cfg.Heartbeat = id, hb
	s, err := cache.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	return node{s, nc}
}

// startClient starts a client; cfg.Heartbeat zero: the nodes' hb.
func startClient(t *testing.T, url string, cfg cache.ClientConfig) *cache.Client {
	t.Helper()
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = hb
	}
	c, err := cache.NewClient(bustest.Connect(t, url), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// watched is a ring that signals its changes: a node's or a client's.
type watched interface {
	Changed() <-chan struct{}
	Ring() *ring.Ring
}

// members returns the ids of r's members, sorted.
func members(r *ring.Ring) []string {
	var out []string
	for _, m := range r.Members() {
		out = append(out, m.ID)
	}
	slices.Sort(out)
	return out
}

// waitMembers waits until every watcher's ring has exactly the members
// want, on its change notifications: a ring that has the right number of
// members but not the right ones (a live node dropped for a while) does
// not do.
func waitMembers(t *testing.T, want []string, ws ...watched) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	deadline := time.After(patience)
	for _, w := range ws {
		for {
			ch := w.Changed()
			if slices.Equal(members(w.Ring()), want) {
				break
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("ring has members %v, want %v", members(w.Ring()), want)
			}
		}
	}
}

// steady returns a function that reports whether any of the rings ws
// changed since steady was called.
func steady(ws ...watched) func() bool {
	var chs []<-chan struct{}
	for _, w := range ws {
		chs = append(chs, w.Changed())
	}
	return func() bool {
		for _, ch := range chs {
			select {
			case <-ch:
				return false
			default:
			}
		}
		return true
	}
}

// keyOwnedBy returns a key that r gives to member id.
func keyOwnedBy(r *ring.Ring, id string) string {
	for i := 0; ; i++ {
		if k := fmt.Sprintf("key-%d", i); r.Owner(k) == id {
			return k
		}
	}
}

func cluster(t *testing.T, n int, cfg cache.Config) (*bustest.Server, []node, *cache.Client) {
	s := bustest.RunServer(t)
	var nodes []node
	for i := range n {
		nodes = append(nodes, startNode(t, s.URL(), fmt.Sprintf("n%d", i), cfg))
	}
	c := startClient(t, s.URL(), cache.ClientConfig{})
	waitMembers(t, ids(nodes...), rings(c, nodes...)...)
	return s, nodes, c
}

func TestSetGetDelete(t *testing.T) {
	_, _, c := cluster(t, 1, cache.Config{})
	if _, err := c.Get(ctx(t), "a"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("get of a missing key = %v, want ErrNotFound", err)
	}
	if err := c.Set(ctx(t), "a", []byte("one"), 0); err != nil {
		t.Fatal(err)
	}
	v, err := c.Get(ctx(t), "a")
	if err != nil || string(v) != "one" {
		t.Fatalf("get = %q, %v", v, err)
	}
	if ok, err := c.Delete(ctx(t), "a"); err != nil || !ok {
		t.Fatalf("delete = %v, %v", ok, err)
	}
	if ok, err := c.Delete(ctx(t), "a"); err != nil || ok {
		t.Fatalf("second delete = %v, %v; want false", ok, err)
	}
	if _, err := c.Get(ctx(t), "a"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("get after delete = %v", err)
	}
}

// Every node and the client compute the same owners, and a key is stored on
// exactly its R owners.
func TestOwnershipAgreesAndReplicas(t *testing.T) {
	_, nodes, c := cluster(t, 3, cache.Config{})
	// cluster waited until every ring has the 3 nodes: same members, so
	// the same ring version everywhere.
	for _, n := range nodes[1:] {
		if n.Ring().Version() != nodes[0].Ring().Version() {
			t.Fatalf("the nodes' rings differ: %v %v / %v %v", n.Ring().Members(), n.Ring().Version(), nodes[0].Ring().Members(), nodes[0].Ring().Version())
		}
	}
	if c.Ring().Version() != nodes[0].Ring().Version() {
		t.Fatal("the client's ring differs from the nodes'")
	}
	unchanged := steady(rings(c, nodes...)...)
	for i := range 60 {
		k := fmt.Sprintf("k%d", i)
		if err := c.Set(ctx(t), k, []byte(k), 0); err != nil {
			t.Fatal(err)
		}
	}
	// The stores count their entries lazily (an estimate, settled by their
	// maintenance): poll, for less than the 30 s grace period after which
	// a stray third copy would be dropped.
	var st cache.StatsReply
	deadline := time.Now().Add(bustest.Scale(10 * time.Second))
	for {
		var err error
		if st, err = c.Stats(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if (st.Total.Items == 120 && len(st.Nodes) == 3) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Total.Items != 120 || len(st.Nodes) != 3 {
		if !unchanged() {
			t.Errorf("a ring changed during the writes: a node missed %d heartbeats of %v (raise %s on a machine this slow)", membership.DefaultMisses, hb, bustest.ScaleEnv)
		}
		t.Fatalf("stats = %+v: want 120 items (60 keys × 2 copies) on 3 nodes", st.Total)
	}
}

// A plain request to the service subject lands on any node, which forwards
// it once to the owner.
func TestForwardedRequests(t *testing.T) {
	s, nodes, _ := cluster(t, 3, cache.Config{})
	nc := bustest.Connect(t, s.URL())
	for i := range 30 {
		req := fmt.Sprintf(`{"key":"f%d","value":"v%d","ttl_ms":60000}`, i, i)
		if _, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: cache.SubjectSet, Data: []byte(req)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: cache.SubjectGet, Data: fmt.Appendf(nil, `{"key":"f%d"}`, i)})
		if err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Found bool   `json:"found"`
			Value string `json:"value"`
			TTLms int64  `json:"ttl_ms"`
		}
		if err := json.Unmarshal(m.Data, &rep); err != nil || !rep.Found || rep.Value != fmt.Sprintf("v%d", i) || rep.TTLms <= 0 || rep.TTLms > 60000 {
			t.Fatalf("get f%d = %s, %v", i, m.Data, err)
		}
	}
	var forwards int64
	for _, n := range nodes {
		var st cache.NodeStats
		if err := bus.MsgPack.Unmarshal(request(t, nc, cache.NodeSubject(n.ID(), "stats"), nil).Data, &st); err != nil {
			t.Fatal(err)
		}
		forwards += st.Forwards
	}
	if forwards == 0 {
		t.Fatal("no request was forwarded")
	}
}

func request(t *testing.T, nc *nats.Conn, subject string, h nats.Header) *nats.Msg {
	t.Helper()
	data, _ := bus.MsgPack.Marshal(struct{}{})
	m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: subject, Header: h, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A request that already made its hop is answered where it lands, even by a
// node that does not own the key: two nodes whose rings disagree cannot
// bounce it.
func TestHopIsNeverForwarded(t *testing.T) {
	s, nodes, c := cluster(t, 2, cache.Config{Replicas: 1})
	nc := bustest.Connect(t, s.URL())
	key := "bounce"
	owner := c.Ring().Owner(key)
	other := nodes[0].ID()
	if other == owner {
		other = nodes[1].ID()
	}
	data, _ := bus.MsgPack.Marshal(cache.GetRequest{Key: key})
	m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: cache.NodeSubject(other, "get"), Header: nats.Header{cache.HeaderHop: {"forward"}}, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	var rep cache.GetReply
	if err := bus.MsgPack.Unmarshal(m.Data, &rep); err != nil || rep.Found {
		t.Fatalf("reply = %+v, %v", rep, err)
	}
	st, err := c.Stats(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Forwards != 0 {
		t.Fatalf("forwards = %d, want 0", st.Total.Forwards)
	}
}

// A node that crashes (no leave) loses no key with R = 2: once the ring has
// dropped it, every key is still readable.
func TestCrashLosesNoKey(t *testing.T) {
	_, nodes, c := cluster(t, 3, cache.Config{})
	const n = 300
	for i := range n {
		if err := c.Set(ctx(t), fmt.Sprintf("key-%d", i), fmt.Appendf(nil, "v%d", i), 0); err != nil {
			t.Fatal(err)
		}
	}
	nodes[1].nc.Close() // gone without a leave
	waitMembers(t, ids(nodes[0], nodes[2]), rings(c, nodes[0], nodes[2])...)
	for i := range n {
		v, err := c.Get(ctx(t), fmt.Sprintf("key-%d", i))
		if err != nil || string(v) != fmt.Sprintf("v%d", i) {
			t.Fatalf("key-%d after the crash: %q, %v", i, v, err)
		}
	}
}

// Writes go on while a crashed node is still in the rings: its copies go to
// the member that takes its place, and every acknowledged key stays
// readable once the ring has dropped it.
func TestWritesDuringCrash(t *testing.T) {
	s, nodes, c := cluster(t, 3, cache.Config{})
	nodes[1].nc.Close() // gone without a leave; the rings still have it
	const n = 100
	for i := range n {
		if err := c.Set(ctx(t), fmt.Sprintf("key-%d", i), fmt.Appendf(nil, "v%d", i), 0); err != nil {
			t.Fatalf("set key-%d with a node down: %v", i, err)
		}
	}
	// Each write made both copies itself, on the two live nodes, before
	// any hand-off for the crash could: asked as a hand-off asks (hop
	// "handoff"), a node answers from its own store alone.
	nc := bustest.Connect(t, s.URL())
	for i := range n {
		k := fmt.Sprintf("key-%d", i)
		for _, nd := range []node{nodes[0], nodes[2]} {
			data, _ := bus.MsgPack.Marshal(cache.GetRequest{Key: k})
			m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: cache.NodeSubject(nd.ID(), cache.OpGet), Header: nats.Header{cache.HeaderHop: {"handoff"}}, Data: data})
			var rep cache.GetReply
			if err == nil {
				err = bus.MsgPack.Unmarshal(m.Data, &rep)
			}
			if err != nil || !rep.Found {
				t.Fatalf("%s has no copy of %s after the writes: %+v, %v", nd.ID(), k, rep, err)
			}
		}
	}
	waitMembers(t, ids(nodes[0], nodes[2]), rings(c, nodes[0], nodes[2])...)
	for i := range n {
		v, err := c.Get(ctx(t), fmt.Sprintf("key-%d", i))
		if err != nil || string(v) != fmt.Sprintf("v%d", i) {
			t.Fatalf("key-%d: %q, %v", i, v, err)
		}
	}
	// No copy more: the stores count lazily (an estimate), so poll.
	waitLong(t, func() bool { return items(t, nc, nodes[0].ID(), nodes[2].ID()) == 2*n })
}

// With two nodes and R = 2, a set while one is dead (and still in the
// rings) is acknowledged with the one copy the live node holds.
func TestWriteWithNoStandIn(t *testing.T) {
	s, nodes, c := cluster(t, 2, cache.Config{})
	nodes[0].nc.Close()
	nc := bustest.Connect(t, s.URL())
	for i := range 20 {
		k := fmt.Sprintf("alone-%d", i)
		rep, err := bus.Request[cache.SetRequest, cache.SetReply](ctx(t), nc, cache.NodeSubject(nodes[1].ID(), "set"), cache.SetRequest{Key: k, Value: []byte("v")})
		if err != nil || rep.Copies != 1 {
			t.Fatalf("set %s with the other node dead: %+v, %v", k, rep, err)
		}
		if v, err := c.Get(ctx(t), k); err != nil || string(v) != "v" {
			t.Fatalf("get %s: %q, %v", k, v, err)
		}
	}
}

// A replica that dies holding a copy request (delivered, never answered,
// then nobody listens) costs the set its copy, not its acknowledgement.
func TestReplicaDiesHoldingTheCopy(t *testing.T) {
	s := bustest.RunServer(t)
	owner := startNode(t, s.URL(), "n0", cache.Config{AttemptTimeout: 200 * time.Millisecond})
	// The replica: a member that heartbeats, takes one copy request without
	// answering, and is gone.
	ghost := bustest.Connect(t, s.URL())
	sub, err := ghost.SubscribeSync(cache.NodeSubject("n1", cache.OpSet))
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.AutoUnsubscribe(1); err != nil {
		t.Fatal(err)
	}
	ann, err := membership.NewAnnouncer(ghost, membership.AnnouncerConfig{Service: cache.Service, ID: "n1", Interval: hb, IdentitySubject: cache.NodeSubject("n1", cache.OpIdentity)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ann.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ann.Stop(context.Background()) })
	waitMembers(t, []string{"n0", "n1"}, owner)
	key := keyOwnedBy(owner.Ring(), "n0")
	nc := bustest.Connect(t, s.URL())
	rep, err := bus.Request[cache.SetRequest, cache.SetReply](ctx(t), nc, cache.NodeSubject("n0", cache.OpSet), cache.SetRequest{Key: key, Value: []byte("v")})
	if err != nil || rep.Copies != 1 {
		t.Fatalf("set while the replica dies: %+v, %v", rep, err)
	}
	if _, err := sub.NextMsg(patience); err != nil {
		t.Fatalf("the copy request never reached the replica: %v", err)
	}
}

// When every node the client's ring names for a key is gone, and the nodes'
// rings already know it, requests go to any node.
func TestClientFallsBackToAnyNode(t *testing.T) {
	s, nodes, _ := cluster(t, 2, cache.Config{Replicas: 1})
	c := lateClient(t, s.URL(), cache.ClientConfig{Replicas: 1})
	waitMembers(t, ids(nodes...), c)
	dead := nodes[1]
	dead.nc.Close()
	waitMembers(t, ids(nodes[0]), nodes[0])
	key := keyOwnedBy(c.Ring(), dead.ID())
	if err := c.Set(ctx(t), key, []byte("v"), 0); err != nil {
		t.Fatalf("set with its only holder gone: %v", err)
	}
	if v, err := c.Get(ctx(t), key); err != nil || string(v) != "v" {
		t.Fatalf("get with its only holder gone: %q, %v", v, err)
	}
	if c.Ring().Len() != 2 {
		t.Fatal("the client's ring dropped the dead node already: the test proves nothing")
	}
}

// lateClient starts a client that notices crashes late: its watcher
// checks for silent members every tenth of its heartbeat interval, here a
// minute (scaled), so its ring keeps a crashed node for seconds after the
// nodes' rings dropped it.
func lateClient(t *testing.T, url string, cfg cache.ClientConfig) *cache.Client {
	t.Helper()
	cfg.Heartbeat = bustest.Scale(time.Minute)
	return startClient(t, url, cfg)
}

// While the crashed node is still in the client's ring, reads fall back to a
// replica.
func TestReadFallsBackToReplica(t *testing.T) {
	s, nodes, _ := cluster(t, 2, cache.Config{})
	c := lateClient(t, s.URL(), cache.ClientConfig{})
	waitMembers(t, ids(nodes...), c)
	key := "fallback"
	if err := c.Set(ctx(t), key, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID() == c.Ring().Owner(key) {
			n.nc.Close()
		}
	}
	v, err := c.Get(ctx(t), key)
	if err != nil || string(v) != "x" {
		t.Fatalf("get = %q, %v", v, err)
	}
	if c.Ring().Len() != 2 {
		t.Fatal("the client's ring dropped the owner already: the read did not fall back")
	}
}

// A node that joins answers for the keys it now owns by asking their
// previous owners: no key set before the join misses after it, with one copy
// or two.
func TestJoinCausesNoMiss(t *testing.T) {
	for _, r := range []int{1, 2} {
		t.Run(fmt.Sprintf("R=%d", r), func(t *testing.T) { testJoin(t, r) })
	}
}

func testJoin(t *testing.T, replicas int) {
	s, nodes, c := cluster(t, 2, cache.Config{Replicas: replicas})
	const n = 300
	for i := range n {
		if err := c.Set(ctx(t), fmt.Sprintf("key-%d", i), fmt.Appendf(nil, "v%d", i), 10*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	added := startNode(t, s.URL(), "n9", cache.Config{Replicas: replicas})
	waitMembers(t, ids(nodes[0], nodes[1], added), rings(c, nodes[0], nodes[1], added)...)
	moved := 0
	for i := range n {
		k := fmt.Sprintf("key-%d", i)
		if c.Ring().Owner(k) == "n9" {
			moved++
		}
		v, err := c.Get(ctx(t), k)
		if err != nil || string(v) != fmt.Sprintf("v%d", i) {
			t.Fatalf("%s after the join: %q, %v", k, v, err)
		}
	}
	st, err := c.Stats(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	// Each moved key reached the new node by the active hand-off or by a
	// read asking the previous owners; none missed.
	if moved == 0 || st.Total.Misses != 0 {
		t.Fatalf("%d keys moved to the new node; stats: %d read hand-offs, %d received, %d misses", moved, st.Total.Handoffs, st.Total.Received, st.Total.Misses)
	}
}

func TestTTLExpiry(t *testing.T) {
	_, _, c := cluster(t, 1, cache.Config{})
	// Long enough that the read below comes before it, on a slow machine.
	ttl := bustest.Scale(time.Second)
	began := time.Now()
	if err := c.Set(ctx(t), "short", []byte("x"), ttl); err != nil {
		t.Fatal(err)
	}
	// The node set the deadline within [began, set] + ttl.
	set := time.Now()
	if err := c.Set(ctx(t), "long", []byte("y"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx(t), "short"); err != nil {
		t.Fatalf("before expiry (%v after the set began, TTL %v): %v", time.Since(began), ttl, err)
	}
	// Expiry is the point of the test: the key must be gone once its
	// deadline has passed.
	time.Sleep(time.Until(set.Add(ttl + time.Millisecond)))
	if _, err := c.Get(ctx(t), "short"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("after expiry: %v, want ErrNotFound", err)
	}
	if _, err := c.Get(ctx(t), "long"); err != nil {
		t.Fatalf("a key with a long TTL: %v", err)
	}
}

// A write flood far beyond the bound leaves the store within a few percent
// of it, evicting.
func TestMemoryBound(t *testing.T) {
	const maxBytes = 1 << 20
	_, _, c := cluster(t, 1, cache.Config{MaxBytes: maxBytes})
	value := bytes.Repeat([]byte("v"), 1000)
	items := map[string][]byte{}
	var peak int64
	for i := range 5000 { // 5 MB of values
		items[fmt.Sprintf("flood-%d", i)] = value
		if len(items) == 100 {
			if err := c.MSet(ctx(t), items, 0); err != nil {
				t.Fatal(err)
			}
			clear(items)
			st, err := c.Stats(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			peak = max(peak, st.Total.Bytes)
		}
	}
	st, err := c.Stats(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if peak > maxBytes*103/100 {
		t.Fatalf("store reached %d bytes, bound %d", peak, maxBytes)
	}
	if st.Total.Evictions == 0 || st.Total.Items == 0 {
		t.Fatalf("stats = %+v: want evictions and a non-empty store", st.Total)
	}
}

// Bad input gets a coded error and stores nothing.
func TestBadInput(t *testing.T) {
	s, _, c := cluster(t, 1, cache.Config{MaxValueBytes: 100})
	nc := bustest.Connect(t, s.URL())
	cases := []struct {
		subject, body string
		want          *bus.Error
	}{
		{cache.SubjectSet, `{"key":"","value":"x"}`, cache.ErrInvalidKey},
		{cache.SubjectSet, `{"key":"k","value":"x","ttl_ms":-1}`, cache.ErrInvalidTTL},
		{cache.SubjectSet, fmt.Sprintf(`{"key":"k","value":"%0101d"}`, 0), cache.ErrValueTooLarge},
		{cache.SubjectSet, fmt.Sprintf(`{"key":"%01025d","value":"x"}`, 0), cache.ErrInvalidKey},
		{cache.SubjectSet, `{"key":"k","value":5}`, bus.ErrInvalid},
		{cache.SubjectGet, `{"key":7}`, bus.ErrInvalid},
		{cache.SubjectGet, `{"key":"k"`, bus.ErrInvalid},
		{cache.SubjectMGet, `{"keys":[]}`, cache.ErrInvalid},
		{cache.SubjectMSet, `{"items":[{"key":"k","value":"x"},{"key":"","value":"y"}]}`, cache.ErrInvalidKey},
	}
	for _, tc := range cases {
		_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: tc.subject, Data: []byte(tc.body)})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s %s: %v, want %v", tc.subject, tc.body, err, tc.want)
		}
	}
	if _, err := c.Get(ctx(t), "k"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("bad input stored something: %v", err)
	}
	if err := c.Set(ctx(t), "k", make([]byte, 101), 0); !errors.Is(err, cache.ErrValueTooLarge) {
		t.Fatalf("SDK set of an oversized value = %v, want ErrValueTooLarge", err)
	}
	if _, err := nc.Request("mesh.cache.nope", nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("unknown op = %v, want no responders", err)
	}
}

// Binary values survive JSON as {"base64": ...}; text values are strings.
func TestJSONValues(t *testing.T) {
	s, _, c := cluster(t, 1, cache.Config{})
	nc := bustest.Connect(t, s.URL())
	bin := []byte{0xff, 0x00, 0xfe}
	if err := c.Set(ctx(t), "bin", bin, 0); err != nil {
		t.Fatal(err)
	}
	m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: cache.SubjectGet, Data: []byte(`{"key":"bin"}`)})
	if err != nil || string(m.Data) != `{"found":true,"value":{"base64":"/wD+"}}` {
		t.Fatalf("json get = %s, %v", m.Data, err)
	}
	if _, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: cache.SubjectSet, Data: []byte(`{"key":"b2","value":{"base64":"/wD+"}}`)}); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx(t), "b2"); err != nil || !bytes.Equal(v, bin) {
		t.Fatalf("get b2 = %v, %v", v, err)
	}
}

// A batch reads back what a batch wrote, a miss as nil and an empty value
// as empty (as Get does): with 3 nodes (the keys spread over several
// requests) and with 2 (every node holds every key: one request).
func TestMGetMSet(t *testing.T) {
	for _, nodes := range []int{3, 2} {
		t.Run(fmt.Sprint(nodes, " nodes"), func(t *testing.T) {
			_, _, c := cluster(t, nodes, cache.Config{})
			items := map[string][]byte{"empty": {}}
			keys := []string{"empty"}
			for i := range 40 {
				k := fmt.Sprintf("m%d", i)
				keys = append(keys, k)
				if i%4 != 0 {
					items[k] = []byte("val-" + k)
				}
			}
			if err := c.MSet(ctx(t), items, time.Minute); err != nil {
				t.Fatal(err)
			}
			if v, err := c.Get(ctx(t), "empty"); err != nil || v == nil || len(v) != 0 {
				t.Fatalf("get empty = %#v, %v", v, err)
			}
			for _, batch := range [][]string{keys, keys[:16]} {
				vals, err := c.MGet(ctx(t), batch...)
				if err != nil {
					t.Fatal(err)
				}
				for i, k := range batch {
					want, found := items[k]
					if !bytes.Equal(vals[i], want) || (vals[i] != nil) != found {
						t.Fatalf("%s = %q, want %q (found %v)", k, vals[i], want, found)
					}
				}
			}
		})
	}
}

// Many callers that miss the same key at once cause one loader request.
func TestLoaderSingleflight(t *testing.T) {
	s := bustest.RunServer(t)
	loaderNC := bustest.Connect(t, s.URL())
	var calls atomic.Int32
	release := make(chan struct{})
	sub, err := loaderNC.Subscribe("app.users.load", func(m *nats.Msg) {
		calls.Add(1)
		var req cache.LoadRequest
		_ = bus.MsgPack.Unmarshal(m.Data, &req)
		go func() {
			<-release
			data, _ := bus.MsgPack.Marshal(cache.LoadReply{Found: req.Key != "users:none", Value: []byte("loaded " + req.Key), TTLms: 60000})
			_ = m.Respond(data)
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	n := startNode(t, s.URL(), "n0", cache.Config{Loaders: map[string]string{"users": "app.users.load"}})
	c := startClient(t, s.URL(), cache.ClientConfig{})
	waitMembers(t, ids(n), c, n)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			v, err := c.Get(ctx(t), "users:42")
			if err == nil && string(v) != "loaded users:42" {
				err = fmt.Errorf("value %q", v)
			}
			errs <- err
		})
	}
	// Let every request reach the node before the loader answers: the
	// node counts them as they wait.
	waitFor(t, func() bool { return calls.Load() == 1 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("loader called %d times, want 1", calls.Load())
	}
	if _, err := c.Get(ctx(t), "users:42"); err != nil || calls.Load() != 1 {
		t.Fatalf("a loaded value is cached: %v, %d calls", err, calls.Load())
	}
	if _, err := c.Get(ctx(t), "users:none"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("loader without a value = %v, want ErrNotFound", err)
	}
	if _, err := c.Get(ctx(t), "other:1"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("a namespace without a loader = %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Concurrent sets and gets of shared keys from several clients (run with
// -race): every read returns a value some writer wrote.
func TestConcurrentSetGet(t *testing.T) {
	s, _, _ := cluster(t, 3, cache.Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		c := startClient(t, s.URL(), cache.ClientConfig{})
		waitMembers(t, []string{"n0", "n1", "n2"}, c)
		wg.Go(func() {
			for i := range 200 {
				k := fmt.Sprintf("shared-%d", i%10)
				if w%2 == 0 {
					if err := c.Set(ctx(t), k, fmt.Appendf(nil, "w%d-%d", w, i), 0); err != nil {
						errs <- err
						return
					}
					continue
				}
				v, err := c.Get(ctx(t), k)
				if err != nil && !errors.Is(err, cache.ErrNotFound) {
					errs <- err
					return
				}
				if err == nil && !bytes.HasPrefix(v, []byte("w")) {
					errs <- fmt.Errorf("read %q", v)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestEvents(t *testing.T) {
	s := bustest.RunServer(t)
	nc := bustest.Connect(t, s.URL())
	sub, err := nc.SubscribeSync("mesh.events.cache.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a := startNode(t, s.URL(), "a", cache.Config{Grace: 200 * time.Millisecond})
	b := startNode(t, s.URL(), "b", cache.Config{Grace: 200 * time.Millisecond})
	waitMembers(t, ids(a, b), a, b)
	seen := map[string]bool{}
	for !(seen["cache.node_joined"] && seen["cache.rebalance_started"] && seen["cache.rebalance_finished"]) {
		m, err := sub.NextMsg(patience)
		if err != nil {
			t.Fatalf("events seen: %v: %v", seen, err)
		}
		var ev bus.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		seen[ev.Type] = true
	}
	if err := b.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := sub.NextMsg(patience)
		if err != nil {
			t.Fatal("no node_left event")
		}
		if bytes.Contains(m.Data, []byte(`"cache.node_left"`)) {
			if !bytes.Contains(m.Data, []byte(`"node":"b"`)) {
				t.Fatalf("node_left = %s", m.Data)
			}
			break
		}
	}
}
