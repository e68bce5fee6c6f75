package scheduler_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// A task whose outcome's record cannot be written (no stream takes it)
// is not left running: its message goes back to its queue and the task
// runs again, until its record is stored.
func TestRecordWriteFails(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	var runs counter
	work(t, s.URL(), map[string]int{"rw": 1}, map[string]scheduler.Handler{
		"x": func(ctx context.Context, task *scheduler.Task) error { runs.add(); return nil },
	})
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "rw", Type: "x"}); err != nil {
		t.Fatal(err) // the queue exists
	}
	runs.wait(t, 1)
	back := bustest.StreamAway(t, s.JetStream(), scheduler.HistoryStream)
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "rw", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	runs.wait(t, 3) // run, its record refused, run again
	back()
	if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded {
		t.Fatalf("task = %+v", info)
	}
	queueEmpty(t, s.URL(), "rw")
}

// A task that failed once, then the server restarted on the same store:
// its next attempt is recorded as its second. Likewise when the queue's
// delivery count restarts (its consumer made again): the attempts come
// from the task's record.
func TestAttemptsAcrossRestart(t *testing.T) {
	f := startFixed(t)
	serve(t, f.URL(), scheduler.Config{})
	c := client(t, f.URL())
	ev := watch(t, f.URL())
	var mu sync.Mutex
	calls := map[string][]int{}
	nc, err := nats.Connect(f.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: map[string]int{"once": 2}})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("x", func(ctx context.Context, task *scheduler.Task) error {
		mu.Lock()
		calls[task.ID] = append(calls[task.ID], task.Attempt)
		n := len(calls[task.ID])
		mu.Unlock()
		if n == 1 {
			return errors.New("first attempt fails")
		}
		return nil
	})
	if err := w.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	slow := &scheduler.Backoff{Kind: "constant", InitialMs: 1500}
	restarted, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "once", Type: "x", Backoff: slow})
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.failed", restarted)
	f.stop()
	f.start()
	if info := waitDone(t, c, restarted); info.State != scheduler.StateSucceeded || info.Attempts != 2 {
		t.Fatalf("after a server restart: %+v", info)
	}

	// The consumer made again: its delivery count starts over.
	recounted, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "once", Type: "x", Backoff: slow})
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.failed", recounted)
	js := bustest.JetStream(t, bustest.Connect(t, f.URL()))
	cons, err := js.Consumer(ctx(t), scheduler.Stream, "once")
	if err != nil {
		t.Fatal(err)
	}
	cfg := cons.CachedInfo().Config
	if err := js.DeleteConsumer(ctx(t), scheduler.Stream, "once"); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateConsumer(ctx(t), scheduler.Stream, cfg); err != nil {
		t.Fatal(err)
	}
	if info := waitDone(t, c, recounted); info.State != scheduler.StateSucceeded || info.Attempts != 2 {
		t.Fatalf("after the delivery count started over: %+v", info)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := calls[restarted]; len(got) != 2 || got[1] != 2 {
		t.Fatalf("attempts seen by the handler across the restart: %v", got)
	}
}

// Finished history never blocks work: with the records bounded to 64 KiB
// and a 1 KiB result per task, hundreds of tasks are all submitted, run
// and recorded; the oldest records go, none is left running.
func TestFullHistory(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{HistoryMaxBytes: 64 << 10})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	result := bytes.Repeat([]byte("r"), 1<<10)
	var succeeded atomic.Int32
	work(t, s.URL(), map[string]int{"full": 8}, map[string]scheduler.Handler{
		"x": func(ctx context.Context, task *scheduler.Task) error { task.SetResult(result); return nil },
	})
	const n = 400
	reqs := make([]scheduler.SubmitRequest, n)
	for i := range reqs {
		reqs[i] = scheduler.SubmitRequest{Queue: "full", Type: "x"}
	}
	results, err := c.SubmitMany(ctx(t), reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if r.Err() != nil {
			t.Fatalf("task %d refused: %v", i, r.Err())
		}
	}
	// Each success is told once its record is stored.
	for _, r := range results {
		ev.wait(t, "task.succeeded", r.ID)
		succeeded.Add(1)
	}
	queueEmpty(t, s.URL(), "full")
	history, err := s.JetStream().Stream(ctx(t), scheduler.HistoryStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := history.Info(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > 64<<10 || info.State.FirstSeq == 1 || info.State.LastSeq < n {
		t.Fatalf("history: %+v, want at most 64 KiB, the oldest gone, %d written", info.State, n)
	}
	t.Logf("%d tasks recorded; %d records kept (%d bytes)", succeeded.Load(), info.State.Msgs, info.State.Bytes)
	if _, err := c.Status(ctx(t), results[0].ID); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("the oldest task's record: %v, want gone", err)
	}
	last, err := c.Status(ctx(t), results[n-1].ID)
	if err != nil || last.State != scheduler.StateSucceeded || len(last.Result) != len(result) {
		t.Fatalf("the last task: %+v, %v", last, err)
	}
}

// A task delivered again while its first delivery still runs (its worker
// went silent past the ack wait) runs twice but finishes once: the later
// outcome's record is refused and dropped.
func TestTwinDeliveries(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	var runs atomic.Int32
	release := make(chan struct{})
	handler := func(ctx context.Context, task *scheduler.Task) error {
		if runs.Add(1) == 1 {
			<-release
			task.SetResult([]byte("first"))
			return nil
		}
		task.SetResult([]byte("twin"))
		return nil
	}
	a, err := scheduler.NewWorker(bustest.Connect(t, s.URL()), scheduler.WorkerConfig{Queues: map[string]int{"twin": 1}, Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	a.Handle("x", handler)
	if err := a.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "twin", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.started", id)
	// a pulls no more, and reports no progress before the ack wait, now
	// shortened, passes: the task is delivered again, to b.
	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop(context.Background()) }()
	js := s.JetStream()
	cons, err := js.Consumer(ctx(t), scheduler.Stream, "twin")
	if err != nil {
		t.Fatal(err)
	}
	cfg := cons.CachedInfo().Config
	cfg.AckWait = 300 * time.Millisecond
	if _, err := js.UpdateConsumer(ctx(t), scheduler.Stream, cfg); err != nil {
		t.Fatal(err)
	}
	work(t, s.URL(), map[string]int{"twin": 1}, map[string]scheduler.Handler{"x": handler})
	ev.wait(t, "task.succeeded", id)
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	queueEmpty(t, s.URL(), "twin")
	info, err := c.Status(ctx(t), id)
	if err != nil || info.State != scheduler.StateSucceeded || info.Result != "twin" || runs.Load() != 2 {
		t.Fatalf("status = %+v, %v; %d runs", info, err, runs.Load())
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	n := 0
	for _, e := range ev.seen {
		if data, _ := e.Data.(map[string]any); e.Type == "task.succeeded" && data["id"] == id {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d successes told, want 1", n)
	}
}
