package schemas_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// A task's message, its record and its dead letter, as the scheduler and a
// worker write them, match task.message.json and task.record.json: what a
// worker in another language reads and writes.
func TestTaskStoreMatchesSchemas(t *testing.T) {
	sch := compile(t)
	ctx, nc := startServices(t, 30*time.Second)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	tasks := scheduler.NewClient(nc)
	const queue = "schema-store"
	one := 1
	fast := &scheduler.Backoff{Kind: "constant", InitialMs: 10}
	ok, err := tasks.Submit(ctx, scheduler.SubmitRequest{Queue: queue, Type: "ok", Payload: []byte("in"), UniqueKey: "schema-store-1", Backoff: fast})
	if err != nil {
		t.Fatal(err)
	}
	failing, err := tasks.Submit(ctx, scheduler.SubmitRequest{Queue: queue, Type: "fail", MaxRetries: &one, Backoff: fast})
	if err != nil {
		t.Fatal(err)
	}
	idle, err := tasks.Submit(ctx, scheduler.SubmitRequest{Queue: "schema-idle", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}

	// The queued tasks' messages, before any worker takes them.
	tasksStream, err := js.Stream(ctx, scheduler.Stream)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range []struct{ queue, id string }{{queue, ok}, {queue, failing}, {"schema-idle", idle}} {
		m, err := tasksStream.GetLastMsgForSubject(ctx, scheduler.TaskSubjectPrefix+task.queue+"."+task.id)
		if err != nil {
			t.Fatalf("the message of task %s: %v", task.id, err)
		}
		validate(t, sch["task.message.json"], "the message of task "+task.id, headerJSON(t, m.Header))
	}

	// A cancel writes the record of a queued task; a worker those of the
	// tasks it runs, and a dead letter.
	if _, err := tasks.Cancel(ctx, idle); err != nil {
		t.Fatal(err)
	}
	w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: map[string]int{queue: 2}, Name: "schema-worker"})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("ok", func(_ context.Context, task *scheduler.Task) error {
		task.SetResult([]byte("out"))
		return nil
	})
	w.Handle("fail", func(context.Context, *scheduler.Task) error { return errors.New("no such file") })
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop(context.Background()) }()
	history, err := js.Stream(ctx, scheduler.HistoryStream)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ queue, id, state string }{{queue, ok, "succeeded"}, {queue, failing, "dead"}, {"schema-idle", idle, "cancelled"}} {
		if info, err := tasks.Wait(ctx, want.id); err != nil || info.State != want.state {
			t.Fatalf("task %s: %+v, %v; want %s", want.id, info, err, want.state)
		}
		m, err := history.GetLastMsgForSubject(ctx, scheduler.HistorySubjectPrefix+want.queue+"."+want.id)
		if err != nil {
			t.Fatalf("the record of task %s: %v", want.id, err)
		}
		validate(t, sch["task.record.json"], "the record of task "+want.id, m.Data)
		var rec scheduler.TaskInfo
		if err := json.Unmarshal(m.Data, &rec); err != nil || rec.ID != want.id || rec.State != want.state {
			t.Fatalf("the record of task %s: %+v, %v; want %s", want.id, rec, err, want.state)
		}
	}
	dead, err := js.Stream(ctx, scheduler.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dead.GetLastMsgForSubject(ctx, scheduler.DeadSubjectPrefix+queue)
	if err != nil {
		t.Fatal(err)
	}
	validate(t, sch["task.message.json"], "the dead letter of task "+failing, headerJSON(t, m.Header))
	if m.Header.Get(scheduler.HeaderID) != failing || m.Header.Get(scheduler.HeaderLastError) == "" {
		t.Fatalf("the dead letter: %v", m.Header)
	}
}

// headerJSON is a message's headers as the JSON object task.message.json
// describes: each header's (first) value by name.
func headerJSON(t *testing.T, h nats.Header) []byte {
	t.Helper()
	out := map[string]string{}
	for k, v := range h {
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startServices runs every service on an in-process server (its node named
// schema-test: the examples name its node subjects) and returns a context
// that ends after timeout and a connection of the test's own. The services
// stop when the test ends.
func startServices(t *testing.T, timeout time.Duration) (context.Context, *nats.Conn) {
	t.Helper()
	srv := bustest.RunServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	n, err := node.Start(ctx, srv.Connect(), nil, node.Env{Node: "schema-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return ctx, srv.Connect()
}
