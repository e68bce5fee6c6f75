package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

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
	eventually(t, func() (bool, string) {
		qs, err := c.Queues(ctx(t))
		return err == nil && len(qs) == 1 && qs[0].Depth == 0 && qs[0].InFlight == 0, fmt.Sprintf("an empty queue: %+v, %v", qs, err)
	})
	if n := runs.Load(); n != 1 {
		t.Fatalf("ran %d times, want 1", n)
	}
	list, err := c.List(ctx(t), scheduler.ListRequest{Queue: "orders"})
	if err != nil || len(list.Tasks) != 1 {
		t.Fatalf("list = %+v, %v", list, err)
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
