package lock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// TestFailoverServiceNode: the node a lock service is connected to, which
// leads JetStream, stops. The service reconnects to another node and makes
// its mirror a new consumer as soon as a new meta leader can make one:
// acquires answer again within failoverBound. (With nats.go's ordered
// consumer, whose request for a new consumer, sent before there was a new
// meta leader, waited out a fixed 10 s, they answered again after 11 s.)
func TestFailoverServiceNode(t *testing.T) {
	const failoverBound = 6 * time.Second
	c := bustest.RunCluster(t, 3)
	victim := c.Leader()
	other := c.Node((victim + 1) % c.N()).ClientURL()
	svc := failoverStart(t, c.Node(victim).ClientURL()+","+other)
	t.Cleanup(func() { stopService(t, svc) })

	locks := lock.NewClient(bustest.Connect(t, other))
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
		t.Errorf("acquires failed for %v after the node stopped, more than %v", d.Round(time.Millisecond), failoverBound)
	}
}

func failoverStart(t *testing.T, url string) *lock.Server {
	t.Helper()
	// The first URL first: the service is on the node the test stops.
	s, err := lock.New(bustest.Connect(t, url, nats.DontRandomize()), lock.Config{Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

func stopService(t *testing.T, s *lock.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("stopping a lock service: %v", err)
	}
}
