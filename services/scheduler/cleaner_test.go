package scheduler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// Finished tasks never block new work or outcomes: with the state bucket
// bounded far below what the tasks' results add up to, every submit is
// accepted, every outcome is recorded (its event sent, nothing left
// running), the oldest finished states are deleted and the newest kept.
func TestFullStateStore(t *testing.T) {
	s := bustest.RunServer(t)
	const bound = 128 << 10
	serve(t, s.URL(), scheduler.Config{StateMaxBytes: bound, CleanEvery: 100 * time.Millisecond,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	c := client(t, s.URL())
	result := bytes.Repeat([]byte("r"), 2<<10)
	work(t, s.URL(), map[string]int{"full": 4}, map[string]scheduler.Handler{
		"r": func(_ context.Context, task *scheduler.Task) error {
			task.SetResult(result)
			return nil
		},
	})
	// Each task's succeeded event, awaited by the producer that made it.
	var done sync.Map // id -> chan struct{}
	nc := bustest.Connect(t, s.URL())
	if _, err := nc.Subscribe("mesh.events.task.succeeded", func(m *nats.Msg) {
		var e bus.Event
		if json.Unmarshal(m.Data, &e) != nil {
			return
		}
		data, _ := e.Data.(map[string]any)
		id, _ := data["id"].(string)
		if ch, ok := done.Load(id); ok {
			close(ch.(chan struct{}))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// A task holding a unique key is kept while the key names it: a state
	// gone would let the next submit take the key over.
	uch := make(chan struct{})
	done.Store("uniq", uch)
	unique := scheduler.SubmitRequest{ID: "uniq", Queue: "full", Type: "r", UniqueKey: "k"}
	if _, err := c.Submit(ctx(t), unique); err != nil {
		t.Fatal(err)
	}
	select {
	case <-uch:
	case <-time.After(20 * time.Second):
		t.Fatal("the task with a unique key did not succeed in 20s")
	}
	// 4 producers, each waiting for its task's outcome before the next
	// one, as a steady load: 240 results of 2 KiB, almost four times the
	// bound.
	const n = 240
	var next atomic.Int64
	var mu sync.Mutex
	var ids []string
	var refused []error
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := 0; next.Add(1) <= n; j++ {
				id := fmt.Sprintf("full-%d-%03d", i, j)
				ch := make(chan struct{})
				done.Store(id, ch)
				if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{ID: id, Queue: "full", Type: "r"}); err != nil {
					mu.Lock()
					refused = append(refused, err)
					mu.Unlock()
					continue
				}
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
				select {
				case <-ch:
				case <-time.After(20 * time.Second):
					t.Errorf("no succeeded event for %s in 20s", id)
				}
			}
		})
	}
	wg.Wait()
	if len(refused) > 0 || len(ids) != n {
		t.Fatalf("%d submits refused (first: %v), %d accepted", len(refused), refused[0], len(ids))
	}
	// Every outcome was recorded: its event was sent (waited for above)
	// and nothing is left in the queue.
	eventually(t, func() (bool, string) {
		qs, err := c.Queues(ctx(t))
		return err == nil && len(qs) == 1 && qs[0].Depth == 0 && qs[0].InFlight == 0, fmt.Sprintf("queues = %+v, %v", qs, err)
	})
	// The newest states are kept with their results; the oldest went.
	last := ids[len(ids)-1]
	if info, err := c.Status(ctx(t), last); err != nil || info.State != scheduler.StateSucceeded || len(info.Result) != len(result) {
		t.Fatalf("the last task = %+v, %v", info, err)
	}
	if _, err := c.Status(ctx(t), ids[0]); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("the first task's state is still kept: %v", err)
	}
	if info, err := c.Status(ctx(t), "uniq"); err != nil || info.State != scheduler.StateSucceeded {
		t.Fatalf("the task holding a unique key = %+v, %v", info, err)
	}
	unique.ID = "uniq-2"
	if id, err := c.Submit(ctx(t), unique); !errors.Is(err, scheduler.ErrDuplicate) || id != "uniq" {
		t.Fatalf("the unique key again = %q, %v; want ErrDuplicate naming uniq", id, err)
	}
	r, err := bus.Request[scheduler.QueuesRequest, scheduler.QueuesReply](ctx(t), bustest.Connect(t, s.URL()), scheduler.SubjectQueues, scheduler.QueuesRequest{})
	if err != nil || r.States == nil || r.States.MaxBytes != bound || r.States.Cleaned == 0 {
		t.Fatalf("queues: states %+v, %v", r.States, err)
	}
	js := s.JetStream()
	st, err := js.Stream(ctx(t), "KV_"+scheduler.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx(t))
	if err != nil || info.State.Bytes > bound {
		t.Fatalf("the bucket holds %d bytes (bound %d), %v", info.State.Bytes, bound, err)
	}
}
