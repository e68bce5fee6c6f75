// Package bustest starts nats-servers with JetStream inside a test: one
// server, or a cluster of routed servers on loopback whose nodes can be
// stopped and restarted with their stores kept. Everything started is torn
// down by t.Cleanup. Scale stretches the time bounds tests assert by the
// factor in MESH_TEST_TIME_SCALE, for slow machines.
package bustest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus/embed"
)

// Server is a running test server.
type Server struct {
	*embed.Server
	t testing.TB
}

// RunServer starts a server with JetStream on 127.0.0.1, a free port and a
// temporary store.
func RunServer(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := embed.Start(ctx, embed.Config{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("bustest: %v", err)
	}
	t.Cleanup(func() { shutdown(t, s) })
	return &Server{Server: s, t: t}
}

func shutdown(t testing.TB, s *embed.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("bustest: %v", err)
	}
}

// URL is the server's client URL.
func (s *Server) URL() string { return s.ClientURL() }

// Connect returns a connection to the server, closed at cleanup.
func (s *Server) Connect(opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	return Connect(s.t, s.URL(), opts...)
}

// JetStream returns a JetStream context on a new connection.
func (s *Server) JetStream() jetstream.JetStream {
	s.t.Helper()
	return JetStream(s.t, s.Connect())
}

// Connect connects to url (several separated by commas); the connection is
// closed at cleanup.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("bustest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on nc.
func JetStream(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("bustest: jetstream: %v", err)
	}
	return js
}

// StreamAway makes stream take no message, as while it elects a leader
// after a node's loss: a write to it gets no responders. Its subjects are
// replaced by one nothing publishes to; back puts them back.
func StreamAway(t testing.TB, js jetstream.JetStream, stream string) (back func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("bustest: %v", err)
	}
	cfg := st.CachedInfo().Config
	away := cfg
	away.Subjects = []string{"bustest.away." + stream}
	if _, err := js.UpdateStream(ctx, away); err != nil {
		t.Fatalf("bustest: %v", err)
	}
	return func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatalf("bustest: %v", err)
		}
	}
}

// Cluster is a cluster of test servers routed on loopback.
type Cluster struct {
	t     testing.TB
	opts  []*server.Options
	nodes []*embed.Server // nil while stopped
}

// RunCluster starts n servers with JetStream, routed to each other on
// loopback, and returns once they have elected a JetStream meta leader that
// can place a stream on all n of them.
func RunCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, opts: make([]*server.Options, n), nodes: make([]*embed.Server, n)}
	// The stores first: cleanups run last registered first, and a store
	// must outlive its node.
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	t.Cleanup(func() {
		for i, s := range c.nodes {
			if s != nil {
				shutdown(t, s)
				c.nodes[i] = nil
			}
		}
	})
	// A clustered JetStream server refuses to start without routes, so the
	// route ports are chosen before any node starts; the client ports too,
	// as a restarted node takes its own again.
	ports := freePorts(t, 2*n)
	for i := range n {
		cfg := embed.Config{
			Name:    fmt.Sprintf("n%d", i),
			Listen:  fmt.Sprintf("127.0.0.1:%d", ports[n+i]),
			DataDir: dirs[i],
			Cluster: &embed.Cluster{Name: "mesh-test", Listen: fmt.Sprintf("127.0.0.1:%d", ports[i])},
		}
		o, err := cfg.Options()
		if err != nil {
			t.Fatalf("bustest: %v", err)
		}
		c.opts[i] = o
	}
	for i := range n {
		c.start(i)
	}
	c.WaitLeader()
	c.waitPlacement()
	return c
}

// waitPlacement waits (up to 20 s) until the cluster can place a stream on
// every node: a meta leader may be elected before it knows that every peer
// is up, and a stream created then fails with "no suitable peers for
// placement".
func (c *Cluster) waitPlacement() {
	c.t.Helper()
	nc, err := nats.Connect(c.URL())
	if err != nil {
		c.t.Fatalf("bustest: %v", err)
	}
	defer nc.Close()
	js := JetStream(c.t, nc)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BUSTEST_PLACEMENT", Subjects: []string{"bustest.placement"}, Replicas: len(c.nodes), Storage: jetstream.MemoryStorage})
		if err == nil {
			err = js.DeleteStream(ctx, "BUSTEST_PLACEMENT")
			cancel()
			if err != nil {
				c.t.Fatalf("bustest: %v", err)
			}
			return
		}
		cancel()
		if time.Now().After(deadline) {
			c.t.Fatalf("bustest: the cluster cannot place a stream on %d replicas: %v", len(c.nodes), err)
		}
		time.Sleep(50 * time.Millisecond) // the cluster exposes no event for its peers coming up
	}
}

// FreeAddr returns an address on 127.0.0.1 whose port was free a moment
// ago, for a server that must listen on a port known before it starts (or
// take it again when it restarts). See freePorts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePorts(t, 1)[0]))
}

// freePorts returns n ports free on 127.0.0.1 a moment ago, picked below
// the kernel's range of ephemeral ports (from 32768 on Linux, 49152 on
// others): a port from that range, once closed, may be given to an outgoing
// connection of any process before the node binds it, which two test
// binaries running at once showed. A port is given out once per process,
// so that two picked before either is bound differ.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	given.Lock()
	defer given.Unlock()
	var ports []int
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt == 1000 {
			t.Fatalf("bustest: no %d free ports between 20000 and 32000", n)
		}
		p := 20000 + rand.IntN(12000)
		if given.ports[p] {
			continue
		}
		given.ports[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // in use
		}
		l.Close()
		ports = append(ports, p)
	}
	return ports
}

// given holds the ports freePorts gave out.
var given = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// start starts node i, routed to every other node.
func (c *Cluster) start(i int) {
	c.t.Helper()
	o := c.opts[i].Clone()
	o.Routes = nil
	for j, other := range c.opts {
		if j != i {
			o.Routes = append(o.Routes, &url.URL{Scheme: "nats", Host: net.JoinHostPort(other.Cluster.Host, strconv.Itoa(other.Cluster.Port))})
		}
	}
	// A restarted node recovers its JetStream store before it listens,
	// which takes a while under -race on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := embed.StartOptions(ctx, o, zerolog.Logger{}, false)
	if err != nil {
		c.t.Fatalf("bustest: node %d: %v", i, err)
	}
	c.nodes[i] = s
}

// N is the number of nodes, running or stopped.
func (c *Cluster) N() int { return len(c.nodes) }

// Node returns node i, or nil while it is stopped.
func (c *Cluster) Node(i int) *embed.Server { return c.nodes[i] }

// URL lists the client URLs of every node, running or not, separated by
// commas, for a client that must survive the loss of any one node.
func (c *Cluster) URL() string {
	var urls []string
	for _, o := range c.opts {
		urls = append(urls, fmt.Sprintf("nats://%s", net.JoinHostPort(o.Host, strconv.Itoa(o.Port))))
	}
	return strings.Join(urls, ",")
}

// Connect returns a connection to the cluster, closed at cleanup.
func (c *Cluster) Connect(opts ...nats.Option) *nats.Conn {
	c.t.Helper()
	return Connect(c.t, c.URL(), opts...)
}

// Stop shuts node i down; its store is kept for Restart.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if c.nodes[i] == nil {
		c.t.Fatalf("bustest: node %d is not running", i)
	}
	shutdown(c.t, c.nodes[i])
	c.nodes[i] = nil
}

// Restart starts node i again, on its ports and with its store, and waits
// until the cluster has a meta leader and the node has caught up.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if c.nodes[i] != nil {
		c.t.Fatalf("bustest: node %d is running", i)
	}
	c.start(i)
	c.WaitLeader()
}

// WaitLeader waits (up to 30 s) until a running node is the JetStream meta
// leader and every running node is current with it.
func (c *Cluster) WaitLeader() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, current := false, true
		for _, s := range c.nodes {
			if s == nil {
				continue
			}
			leader = leader || s.NATS().JetStreamIsLeader()
			current = current && s.NATS().JetStreamIsCurrent()
		}
		if leader && current {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("bustest: no JetStream meta leader after 30s")
		}
		time.Sleep(10 * time.Millisecond) // no event to await: the server exposes leadership by polling only
	}
}

// Leader returns the index of the meta leader, or -1.
func (c *Cluster) Leader() int {
	for i, s := range c.nodes {
		if s != nil && s.NATS().JetStreamIsLeader() {
			return i
		}
	}
	return -1
}
