package scheduler_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// A submit whose reply was lost, sent again with the same id (as the
// Client does), makes one task, which runs once.
func TestSubmitSentAgainMakesOneTask(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	// The first submit's reply goes to an inbox nobody reads: lost.
	body := []byte(`{"id":"order-42","queue":"orders","type":"ship","payload":"p","unique_key":"order 42"}`)
	if err := nc.PublishRequest(scheduler.SubjectSubmit, nc.NewRespInbox(), body); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		_, err := c.Status(ctx(t), "order-42")
		return err == nil, "the first submit's task"
	})
	req := scheduler.SubmitRequest{ID: "order-42", Queue: "orders", Type: "ship", Payload: []byte("p"), UniqueKey: "order 42"}
	id, err := c.Submit(ctx(t), req)
	if err != nil || id != "order-42" {
		t.Fatalf("submit again = %q, %v; want order-42, nil", id, err)
	}
	var runs atomic.Int64
	work(t, s.URL(), map[string]int{"orders": 2}, map[string]scheduler.Handler{
		"ship": func(context.Context, *scheduler.Task) error { runs.Add(1); return nil },
	})
	if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded || info.Attempts != 1 {
		t.Fatalf("status = %+v", info)
	}
	// Sent again once finished: still the same task, not run again.
	if id, err := c.Submit(ctx(t), req); err != nil || id != "order-42" {
		t.Fatalf("submit after it ran = %q, %v", id, err)
	}
	// The worker acknowledges the message after its outcome is recorded:
	// the queue empties once that acknowledgement lands, and no second
	// message stays behind.
	queueEmpty(t, s.URL(), "orders")
	if n := runs.Load(); n != 1 {
		t.Fatalf("ran %d times, want 1", n)
	}

	// The same id for another queue or type is another task's: refused.
	other := req
	other.Queue, other.UniqueKey = "returns", ""
	got, err := c.Submit(ctx(t), other)
	if !errors.Is(err, scheduler.ErrDuplicate) || !errors.Is(err, bus.ErrConflict) || got != "order-42" {
		t.Fatalf("same id, other queue = %q, %v; want ErrDuplicate naming order-42", got, err)
	}
	// An id that is not a subject token is refused.
	bad := req
	bad.ID = "order.42"
	if _, err := c.Submit(ctx(t), bad); !errors.Is(err, scheduler.ErrInvalid) {
		t.Fatalf("id with a dot: %v, want ErrInvalid", err)
	}
	if _, err := c.Status(ctx(t), "order-43"); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("no other task: %v", err)
	}
}

// submits counts the submits a service served.
type submits struct{ n atomic.Int64 }

func (o *submits) ObserveRequest(_, endpoint string, _ time.Duration, _ *bus.Error) {
	if endpoint == "submit" {
		o.n.Add(1)
	}
}

// A client WithDirect stores the tasks it may itself, after its first
// submit to the queue through the service: no request to the service. A
// submit sent again (its reply lost) with the same id makes one task; the
// same id for another type is refused, as the service refuses it.
func TestDirectSubmit(t *testing.T) {
	s := bustest.RunServer(t)
	var served submits
	serve(t, s.URL(), scheduler.Config{Observer: &served})
	c := scheduler.NewClient(bustest.Connect(t, s.URL()), scheduler.WithDirect())
	var mu sync.Mutex
	runs := map[string]int{}
	work(t, s.URL(), map[string]int{"direct": 4}, map[string]scheduler.Handler{
		"d": func(_ context.Context, task *scheduler.Task) error {
			mu.Lock()
			runs[task.ID]++
			mu.Unlock()
			if string(task.Payload) != "p" || task.MaxRetries != 1 {
				return scheduler.SkipRetry(errors.New("not the task submitted"))
			}
			return nil
		},
	})
	req := scheduler.SubmitRequest{Queue: "direct", Type: "d", Payload: []byte("p"), MaxRetries: intp(1)}
	first, err := c.Submit(ctx(t), req)
	if err != nil || served.n.Load() != 1 {
		t.Fatalf("first submit = %v, %d submits served (want 1: it creates the queue)", err, served.n.Load())
	}
	var ids []string
	for range 20 {
		id, err := c.Submit(ctx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if n := served.n.Load(); n != 1 {
		t.Fatalf("%d submits went through the service, want only the first", n)
	}
	for _, id := range append(ids, first) {
		if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded || info.MaxRetries != 1 {
			t.Fatalf("task %s = %+v", id, info)
		}
	}
	// Sent again with its id: the same task, not run again.
	again := req
	again.ID = ids[0]
	if id, err := c.Submit(ctx(t), again); err != nil || id != ids[0] {
		t.Fatalf("sent again = %q, %v", id, err)
	}
	other := again
	other.Type = "e"
	if _, err := c.Submit(ctx(t), other); !errors.Is(err, scheduler.ErrDuplicate) {
		t.Fatalf("same id, other type = %v, want ErrDuplicate", err)
	}
	// Bad input is refused by the client, as the service refuses it.
	bad := req
	bad.Type = "a b"
	if _, err := c.Submit(ctx(t), bad); !errors.Is(err, scheduler.ErrInvalid) {
		t.Fatalf("bad type: %v", err)
	}
	queueEmpty(t, s.URL(), "direct")
	mu.Lock()
	defer mu.Unlock()
	for id, n := range runs {
		if n != 1 {
			t.Fatalf("task %s ran %d times", id, n)
		}
	}
	if len(runs) != 21 {
		t.Fatalf("%d tasks ran, want 21", len(runs))
	}
}

// A delayed submit whose id names a task still in its queue is that task:
// another task's (other type) is refused, the same submit is answered with
// the task in the queue, alone or in a batch; no schedule is stored.
func TestDelayedSubmitOfQueuedID(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	req := scheduler.SubmitRequest{ID: "job-7", Queue: "jobs", Type: "build"}
	if _, err := c.Submit(ctx(t), req); err != nil {
		t.Fatal(err)
	}
	later := req
	later.DelayMs = 60_000
	other := later
	other.Type = "deploy"
	if got, err := c.Submit(ctx(t), other); !errors.Is(err, scheduler.ErrDuplicate) || got != "job-7" {
		t.Fatalf("delayed, same id, other type = %q, %v; want ErrDuplicate naming job-7", got, err)
	}
	if got, err := c.Submit(ctx(t), later); err != nil || got != "job-7" {
		t.Fatalf("delayed, same id and type = %q, %v; want job-7, nil", got, err)
	}
	res, err := c.SubmitMany(ctx(t), []scheduler.SubmitRequest{later, other})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].ID != "job-7" || res[0].Error != nil || res[0].State != scheduler.StateQueued {
		t.Fatalf("batch, same task = %+v", res[0])
	}
	if res[1].Error == nil || !errors.Is(res[1].Error, scheduler.ErrDuplicate) {
		t.Fatalf("batch, other type = %+v", res[1])
	}
	if info, err := c.Status(ctx(t), "job-7"); err != nil || info.State != scheduler.StateQueued || info.Type != "build" {
		t.Fatalf("status = %+v, %v", info, err)
	}
	qs, err := c.Queues(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Name == "jobs" && q.Scheduled != 0 {
			t.Fatalf("queue %+v: a schedule was stored", q)
		}
	}
}
