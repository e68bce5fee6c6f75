package bustest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus/bustest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunServerJetStream(t *testing.T) {
	s := bustest.RunServer(t)
	js := s.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "T"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil || string(e.Value()) != "v" {
		t.Fatalf("get = %v, %v", e, err)
	}
}

// A cluster keeps an R3 stream writable with one node down, and the
// restarted node comes back with its store and catches up.
func TestClusterStopRestart(t *testing.T) {
	c := bustest.RunCluster(t, 3)
	nc := c.Connect()
	js := bustest.JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	// A publish whose ack is lost while the stream elects a leader is sent
	// again, under the same message id so that the stream keeps it once.
	sent := 0
	publish := func(n int) {
		for range n {
			sent++
			id := fmt.Sprint("m", sent)
			for {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := js.Publish(pctx, "s.x", []byte("x"), jetstream.WithMsgID(id))
				cancel()
				if err == nil {
					break
				}
				lost := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoStreamResponse)
				if !lost || ctx.Err() != nil {
					t.Fatalf("publish %s: %v", id, err)
				}
			}
		}
	}
	publish(10)
	victim := c.Leader()
	if victim < 0 {
		t.Fatal("no meta leader")
	}
	c.Stop(victim)
	c.WaitLeader()
	publish(10)
	c.Restart(victim)
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 20 {
		t.Fatalf("stream has %d messages, want 20", info.State.Msgs)
	}
	if c.Node(victim) == nil || c.Leader() < 0 {
		t.Fatal("restarted node not running or no leader")
	}
}
