package lock_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// TestFailoverServiceNode: the node a lock service is connected to, which
// leads JetStream, stops. The service reconnects to another node and makes
// its mirror a new consumer as soon as a new meta leader can make one:
// acquires answer again within failoverBound, the point of the test, a
// bound scaled by MESH_TEST_TIME_SCALE (bustest.Scale). (With nats.go's
// ordered consumer, whose request for a new consumer, sent before there was
// a new meta leader, waited out a fixed 10 s, they answered again after
// 11 s.)
func TestFailoverServiceNode(t *testing.T) {
	failoverBound := bustest.Scale(6 * time.Second)
	c := bustest.RunCluster(t, 3)
	victim := c.Leader()
	other := c.Node((victim + 1) % c.N()).ClientURL()
	// The victim's URL first: the service is on the node the test stops.
	serveWith(t, c.Node(victim).ClientURL()+","+other, lock.Config{Replicas: 3}, nats.DontRandomize())

	locks := reach(t, other)
	cycle := func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		l, err := locks.TryAcquire(ctx, fmt.Sprintf("failover.%d", i), lock.Options{TTL: time.Minute})
		if err != nil {
			return err
		}
		return l.Release(ctx)
	}
	if err := cycle(0); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	c.Stop(victim)
	for i := 1; cycle(i) != nil; i++ {
		if time.Since(stopped) > 3*failoverBound {
			t.Fatalf("no acquire %v after the stop", time.Since(stopped))
		}
	}
	d := time.Since(stopped)
	t.Logf("answering again %v after the stop", d.Round(time.Millisecond))
	if d > failoverBound {
		t.Errorf("acquires failed for %v after the node stopped, more than %v (%s)", d.Round(time.Millisecond), failoverBound, bustest.ScaleEnv)
	}
}

// TestAwayPastMarkers: a lock is released while the only instance that saw
// it held is cut off from the cluster, and the release's marker expires
// before the instance is back. The instance must not keep the released
// holder in its mirror (resuming after the last message it saw, it would,
// and refuse the lock for good): it grants the lock.
func TestAwayPastMarkers(t *testing.T) {
	c := bustest.RunCluster(t, 3)
	cfg := lock.Config{Replicas: 3, MarkerTTL: time.Second}
	serveWith(t, c.Node(1).ClientURL(), cfg, nats.IgnoreDiscoveredServers()) // no other node to reconnect to
	locks := reach(t, c.Node(0).ClientURL())
	l, err := locks.TryAcquire(ctx(t), "away", lock.Options{TTL: time.Minute}) // no renewal during the test
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())                                     // ends its renewals; the lock is released below
	if info, err := locks.Inspect(ctx(t), "away"); err != nil || !info.Held { // after the mirror
		t.Fatalf("inspect = %+v, %v", info, err)
	}
	stay := serveWith(t, c.Node(0).ClientURL(), cfg)
	c.Stop(1)
	// A request sent at once may still go to the stopped node's instance.
	for release := 0; ; release++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := locks.Release(ctx, "away", l.Token())
		cancel()
		if err == nil || release > 0 && errors.Is(err, lock.ErrNotHeld) { // the first went through
			break
		}
		if release == 10 {
			t.Fatal(err)
		}
	}
	waitEmptied(t, bustest.JetStream(t, bustest.Connect(t, c.Node(0).ClientURL())))
	stopService(t, stay)
	c.Restart(1)
	restarted := time.Now()
	for { // until the instance that was away answers
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := locks.Inspect(ctx, "away")
		cancel()
		if err == nil {
			if info.Held {
				t.Fatalf("the instance back from away shows a released lock held: %+v", info)
			}
			break
		}
		if time.Since(restarted) > reachWithin {
			t.Fatalf("the instance back from away did not answer in %v: %v", reachWithin, err)
		}
	}
	l, err = locks.TryAcquire(ctx(t), "away", opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

// reachWithin bounds the waits for a service to answer on a node: a
// generous deadline, so that a service that never answers fails the test
// with a message instead of hanging it.
const reachWithin = 30 * time.Second

// reach returns a client on url once the service started on another node
// answers there (its interest reaches the other nodes a moment later), or
// fails the test after reachWithin.
func reach(t *testing.T, url string) *lock.Client {
	t.Helper()
	locks := lock.NewClient(bustest.Connect(t, url))
	deadline := time.Now().Add(reachWithin)
	for {
		_, err := locks.Inspect(ctx(t), "reach")
		if err == nil {
			return locks
		}
		if !errors.Is(err, bus.ErrUnavailable) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lock service did not answer on %s in %v: %v", url, reachWithin, err)
		}
		time.Sleep(10 * time.Millisecond) // interest travels between servers unannounced
	}
}

// TestExpiredWhileAway: a key expires while the only lock service instance
// is cut off from the cluster. Back, the instance loads the bucket again,
// finds the server's marker and tells the expiry (before, the new view
// dropped the key without a word).
func TestExpiredWhileAway(t *testing.T) {
	c := bustest.RunCluster(t, 3)
	serveWith(t, c.Node(1).ClientURL(), lock.Config{Replicas: 3}, nats.IgnoreDiscoveredServers())
	nc := bustest.Connect(t, c.Node(0).ClientURL())
	locks := reach(t, c.Node(0).ClientURL())
	events, err := nc.SubscribeSync(bus.EventSubject("lock", "expired"))
	if err != nil {
		t.Fatal(err)
	}
	// A bare request: nobody renews the lease.
	granted, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx(t), nc, lock.SubjectAcquire,
		lock.AcquireRequest{Name: "gone", Owner: "me", TTLms: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := locks.Inspect(ctx(t), "gone"); err != nil || !info.Held { // in the instance's view
		t.Fatalf("inspect = %+v, %v", info, err)
	}
	st, err := bustest.JetStream(t, nc).Stream(ctx(t), "KV_"+lock.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	c.Stop(1)
	// Until the server marks the key expired: its TTL runs out on the
	// server, which tells no one but consumers, and the stream may be
	// electing a leader after the stop meanwhile, so its last message is
	// read again until it is the marker.
	stopped := time.Now()
	for {
		gctx, cancel := context.WithTimeout(context.Background(), time.Second)
		m, err := st.GetLastMsgForSubject(gctx, "$KV."+lock.Bucket+".w.gone.*")
		cancel()
		if err == nil && m.Header.Get(jetstream.MarkerReasonHeader) != "" {
			break
		}
		if time.Since(stopped) > 60*time.Second {
			t.Fatalf("no expiry marker in 60 s: last message %v, %v", m, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("marker seen %v after the stop", time.Since(stopped))
	c.Restart(1)
	m, err := events.NextMsg(30 * time.Second)
	if err != nil {
		t.Fatalf("no expired event after the instance came back: %v", err)
	}
	var ev struct {
		Data struct {
			Name  string `json:"name"`
			Owner string `json:"owner"`
			Token uint64 `json:"token"`
		} `json:"data"`
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Data.Name != "gone" || ev.Data.Owner != "me" || ev.Data.Token != granted.Token {
		t.Fatalf("event %s, want lock gone, owner me, token %d", m.Data, granted.Token)
	}
}
