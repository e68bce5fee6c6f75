package scheduler_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// An attempt longer than the consumer's AckWait keeps its delivery (the
// worker reports progress at a third of the AckWait); one longer than its
// timeout_ms has its context cancelled and fails. The slow task spans
// several AckWaits, so a worker that reported no progress would see it
// delivered again (a second start, attempt 2) after the first AckWait. The
// AckWait is a bound that load stretches (a progress report late by two
// thirds of it is a redelivery), so it is scaled (bustest.Scale).
func TestLongTaskAndTimeout(t *testing.T) {
	t.Parallel() // waits on timers mostly
	ackWait := bustest.Scale(time.Second)
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{AckWait: ackWait})
	c := client(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "long", Type: "warmup"}); err != nil {
		t.Fatal(err) // creates the queue with the short AckWait
	}
	var slowRuns atomic.Int32
	work(t, s.URL(), map[string]int{"long": 2}, map[string]scheduler.Handler{
		"warmup": func(ctx context.Context, task *scheduler.Task) error { return nil },
		"slow": func(ctx context.Context, task *scheduler.Task) error {
			slowRuns.Add(1)
			select {
			case <-time.After(5 * ackWait / 2):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		"stuck": func(ctx context.Context, task *scheduler.Task) error {
			<-ctx.Done()
			return ctx.Err()
		},
	})
	slow, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "long", Type: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	stuck, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "long", Type: "stuck", TimeoutMs: 100, MaxRetries: intp(0)})
	if err != nil {
		t.Fatal(err)
	}
	if info := waitDone(t, c, slow); info.State != scheduler.StateSucceeded || info.Attempts != 1 || slowRuns.Load() != 1 {
		t.Fatalf("slow = %+v, run %d times; want succeeded at its first attempt, run once", info, slowRuns.Load())
	}
	if info := waitDone(t, c, stuck); info.State != scheduler.StateDead || !strings.Contains(info.LastError, "timed out after 100ms") {
		t.Fatalf("stuck = %+v", info)
	}
}

// Stop lets a task in flight finish within the grace; a task still running
// when the grace is over has its context cancelled and runs again on
// another worker. The delivery given back does not count as an attempt
// (its record counts it as returned): a task without retries runs again,
// as attempt 1.
func TestWorkerGracefulStop(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "g", Type: "warmup"}); err != nil {
		t.Fatal(err)
	}
	started := make(chan string, 10)
	var finished, interrupted atomic.Int32
	release := make(chan struct{})
	handlers := map[string]scheduler.Handler{
		"warmup": func(ctx context.Context, task *scheduler.Task) error { return nil },
		"short": func(ctx context.Context, task *scheduler.Task) error {
			started <- task.ID
			<-release
			finished.Add(1)
			return nil
		},
		"endless": func(ctx context.Context, task *scheduler.Task) error {
			started <- task.ID
			<-ctx.Done()
			interrupted.Add(1)
			return ctx.Err()
		},
	}
	w, err := scheduler.NewWorker(bustest.Connect(t, s.URL()), scheduler.WorkerConfig{Queues: map[string]int{"g": 2}, ShutdownGrace: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for typ, h := range handlers {
		w.Handle(typ, h)
	}
	if err := w.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	short, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "g", Type: "short"})
	if err != nil {
		t.Fatal(err)
	}
	endless, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "g", Type: "endless", MaxRetries: intp(0)})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- w.Stop(context.Background()) }()
	close(release) // the short task finishes within the grace
	if err := <-stopped; err == nil || finished.Load() != 1 || interrupted.Load() != 1 {
		t.Fatalf("stop = %v; finished %d, interrupted %d", err, finished.Load(), interrupted.Load())
	}
	if info := waitDone(t, c, short); info.State != scheduler.StateSucceeded {
		t.Fatalf("short = %+v", info)
	}
	// The interrupted task was given back, not failed: another worker runs
	// it, as attempt 1.
	var attempt atomic.Int32
	work(t, s.URL(), map[string]int{"g": 1}, map[string]scheduler.Handler{
		"endless": func(ctx context.Context, task *scheduler.Task) error { attempt.Store(int32(task.Attempt)); return nil },
	})
	info := waitDone(t, c, endless)
	if info.State != scheduler.StateSucceeded || attempt.Load() != 1 || info.Attempts != 1 || info.Returned != 1 {
		t.Fatalf("endless = %+v (attempt %d)", info, attempt.Load())
	}
}

// A stopping worker gives back the tasks it pulled ahead and did not start,
// and the one it interrupts: none counts as an attempt, so tasks without
// retries run on the next worker (first version's rule) instead of going
// dead unrun. Before the status and list of the tasks given back, none
// shows as finished (their records say queued beside their messages).
func TestGiveBackAtStop(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "gb", Type: "warmup"}); err != nil {
		t.Fatal(err) // creates the queue
	}
	started := make(chan string, 10)
	w, err := scheduler.NewWorker(bustest.Connect(t, s.URL()), scheduler.WorkerConfig{Queues: map[string]int{"gb": 1},
		Prefetch: 4, ShutdownGrace: bustest.Scale(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("warmup", func(ctx context.Context, task *scheduler.Task) error { return nil })
	w.Handle("block", func(ctx context.Context, task *scheduler.Task) error {
		started <- task.ID
		<-ctx.Done() // until interrupted
		return ctx.Err()
	})
	if err := w.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 3 {
		id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "gb", Type: "block", MaxRetries: intp(0)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	<-started
	eventually(t, func() (bool, string) { // the other two pulled ahead
		_, inFlight, _ := queueHolds(t, s.URL(), "gb")
		return inFlight == 3, fmt.Sprintf("%d delivered, want 3", inFlight)
	})
	if err := w.Stop(context.Background()); err == nil {
		t.Fatal("stop: no error; want the grace passed")
	}
	for _, id := range ids {
		if info, err := c.Status(ctx(t), id); err != nil || info.State == scheduler.StateDead || info.State == scheduler.StateSucceeded || info.Returned != 1 {
			t.Fatalf("status of %s given back = %+v, %v; want live, returned once", id, info, err)
		}
	}
	page, err := c.List(ctx(t), scheduler.ListRequest{Queue: "gb", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	listed := 0
	for _, info := range page.Tasks {
		if info.Type == "block" {
			listed++
			if info.State != scheduler.StateQueued && info.State != scheduler.StateRunning {
				t.Fatalf("list shows %+v, given back", info)
			}
		}
	}
	if listed != 3 {
		t.Fatalf("list shows %d of the 3 tasks given back: %+v", listed, page.Tasks)
	}
	var attempts sync.Map
	work(t, s.URL(), map[string]int{"gb": 1}, map[string]scheduler.Handler{
		"block": func(ctx context.Context, task *scheduler.Task) error {
			attempts.Store(task.ID, task.Attempt)
			return nil
		},
	})
	for _, id := range ids {
		info := waitDone(t, c, id)
		if a, _ := attempts.Load(id); info.State != scheduler.StateSucceeded || info.Attempts != 1 || a != 1 {
			t.Fatalf("%s = %+v (attempt %v); want succeeded at attempt 1", id, info, a)
		}
	}
}

// BenchmarkWorkerDrain drains a queue of b.N tasks already submitted with
// a worker of concurrency 8, by prefetch: as many as the concurrency,
// twice that (the default, 0), and more.
func BenchmarkWorkerDrain(b *testing.B) {
	for _, prefetch := range []int{8, 0, 128, 256, 1000} {
		b.Run(fmt.Sprintf("prefetch=%d", prefetch), func(b *testing.B) {
			s := bustest.RunServer(b)
			srv, err := scheduler.New(bustest.Connect(b, s.URL()), scheduler.Config{})
			if err != nil {
				b.Fatal(err)
			}
			if err := srv.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer srv.Stop(context.Background())
			c := scheduler.NewClient(bustest.Connect(b, s.URL()))
			reqs := make([]scheduler.SubmitRequest, b.N)
			for i := range reqs {
				reqs[i] = scheduler.SubmitRequest{Queue: "drain", Type: "x"}
			}
			if _, err := c.SubmitMany(context.Background(), reqs); err != nil {
				b.Fatal(err)
			}
			// Done once recorded: the success is told after its record's
			// write is acknowledged.
			var done counter
			sub, err := bustest.Connect(b, s.URL()).Subscribe("mesh.events.task.succeeded", func(*nats.Msg) { done.add() })
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Unsubscribe()
			w, err := scheduler.NewWorker(bustest.Connect(b, s.URL()), scheduler.WorkerConfig{Queues: map[string]int{"drain": 8}, Prefetch: prefetch})
			if err != nil {
				b.Fatal(err)
			}
			w.Handle("x", func(context.Context, *scheduler.Task) error { return nil })
			b.ResetTimer()
			start := time.Now()
			if err := w.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			<-done.reached(int64(b.N))
			elapsed := time.Since(start)
			b.StopTimer()
			_ = w.Stop(context.Background())
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "tasks/s")
		})
	}
}
