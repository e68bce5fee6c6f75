package scheduler_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// list walks the queues, then the delayed tasks, then the finished ones,
// each in its store's order, page by page with a cursor, by queue and by
// state, and tells each task's state as status does; queues counts what
// the stores hold.
func TestListAndQueues(t *testing.T) {
	s := bustest.RunServer(t)
	// A long Lead: a task due in 12 s is staged at once and waits there.
	serve(t, s.URL(), scheduler.Config{Lead: 10 * time.Second})
	nc := bustest.Connect(t, s.URL())
	c := scheduler.NewClient(nc)
	js := bustest.JetStream(t, nc)
	submit := func(id string, delay time.Duration) {
		t.Helper()
		if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{ID: id, Queue: "l", Type: "t", DelayMs: delay.Milliseconds()}); err != nil {
			t.Fatal(err)
		}
	}
	writeRecord := func(info scheduler.TaskInfo) uint64 {
		t.Helper()
		b, _ := json.Marshal(info)
		ack, err := js.Publish(ctx(t), scheduler.HistorySubjectPrefix+info.Queue+"."+info.ID, b)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	firstRecord := time.Now()

	// a2 and a3 delivered (a3's attempt failed), then a1 queued and a4
	// requeued from the dead letters (its record says queued).
	submit("a2", 0)
	submit("a3", 0)
	cons, err := js.Consumer(ctx(t), scheduler.Stream, "l")
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(bustest.Scale(5*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	for range batch.Messages() { // never acknowledged
	}
	a3, err := c.Status(ctx(t), "a3")
	if err != nil || a3.State != scheduler.StateRunning {
		t.Fatalf("a3 = %+v, %v", a3, err)
	}
	a3.State, a3.Attempts, a3.LastError = scheduler.StateFailed, 1, "boom"
	writeRecord(a3)
	submit("a1", 0)
	a4 := scheduler.TaskInfo{ID: "a4", Queue: "l", Type: "t", State: scheduler.StateQueued, CreatedAt: bus.Time{Time: time.Now()}}
	m := nats.NewMsg(scheduler.TaskSubjectPrefix + "l.a4")
	m.Header.Set(scheduler.HeaderID, "a4")
	m.Header.Set(scheduler.HeaderQueue, "l")
	m.Header.Set(scheduler.HeaderType, "t")
	m.Header.Set(scheduler.HeaderCreatedAt, a4.CreatedAt.Format(time.RFC3339Nano))
	m.Header.Set(scheduler.HeaderRecordSeq, strconv.FormatUint(writeRecord(a4), 10))
	if _, err := js.PublishMsg(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	// b1 waits for its server schedule, b2 on its staging subject; a
	// periodic schedule of the queue is no task.
	submit("b1", time.Hour)
	submit("b2", 12*time.Second)
	if _, err := c.AddSchedule(ctx(t), scheduler.ScheduleRequest{Name: "hourly", Queue: "l", Type: "t", EveryMs: 3_600_000}); err != nil {
		t.Fatal(err)
	}
	// Finished: c1, c2, c3 of l, c4 of m.
	for i, state := range []string{scheduler.StateSucceeded, scheduler.StateDead, scheduler.StateCancelled} {
		writeRecord(scheduler.TaskInfo{ID: fmt.Sprintf("c%d", i+1), Queue: "l", Type: "t", State: state, Attempts: 1, CreatedAt: bus.Time{Time: time.Now()}})
	}
	writeRecord(scheduler.TaskInfo{ID: "c4", Queue: "m", Type: "t", State: scheduler.StateSucceeded, Attempts: 1, CreatedAt: bus.Time{Time: time.Now()}})

	type row struct{ id, state string }
	all := []row{
		{"a2", scheduler.StateRunning}, {"a3", scheduler.StateFailed}, {"a1", scheduler.StateQueued}, {"a4", scheduler.StateQueued},
		{"b1", scheduler.StateScheduled}, {"b2", scheduler.StateScheduled},
		{"c1", scheduler.StateSucceeded}, {"c2", scheduler.StateDead}, {"c3", scheduler.StateCancelled},
	}
	walk := func(req scheduler.ListRequest) (rows []row, pages int) {
		t.Helper()
		for {
			page, err := c.List(ctx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			if req.Limit > 0 && len(page.Tasks) > req.Limit {
				t.Fatalf("a page of %d tasks, limit %d", len(page.Tasks), req.Limit)
			}
			pages++
			for _, info := range page.Tasks {
				rows = append(rows, row{info.ID, info.State})
				if info.Type != "t" || info.CreatedAt.IsZero() {
					t.Fatalf("listed %+v", info)
				}
			}
			if page.NextCursor == "" {
				return rows, pages
			}
			if page.NextCursor == req.Cursor {
				t.Fatalf("cursor %q again", page.NextCursor)
			}
			req.Cursor = page.NextCursor
		}
	}
	if got, pages := walk(scheduler.ListRequest{Queue: "l"}); !slices.Equal(got, all) || pages != 1 {
		t.Fatalf("list of l = %v in %d pages, want %v in one", got, pages, all)
	}
	if got, pages := walk(scheduler.ListRequest{Queue: "l", Limit: 2}); !slices.Equal(got, all) || pages < 5 {
		t.Fatalf("list of l by 2 = %v in %d pages, want %v", got, pages, all)
	}
	for _, state := range scheduler.States {
		var want []row
		for _, r := range all {
			if r.state == state {
				want = append(want, r)
			}
		}
		if got, _ := walk(scheduler.ListRequest{Queue: "l", State: state, Limit: 1}); !slices.Equal(got, want) {
			t.Fatalf("list of l %s = %v, want %v", state, got, want)
		}
	}
	if got, _ := walk(scheduler.ListRequest{State: scheduler.StateSucceeded}); !slices.Equal(got, []row{{"c1", scheduler.StateSucceeded}, {"c4", scheduler.StateSucceeded}}) {
		t.Fatalf("list of every queue, succeeded = %v", got)
	}
	if got, _ := walk(scheduler.ListRequest{Queue: "m"}); !slices.Equal(got, []row{{"c4", scheduler.StateSucceeded}}) {
		t.Fatalf("list of m = %v", got)
	}
	// A page that ends with the last task of its state has no cursor.
	page, err := c.List(ctx(t), scheduler.ListRequest{Queue: "l", State: scheduler.StateQueued, Limit: 2})
	if err != nil || len(page.Tasks) != 2 || page.Tasks[1].ID != "a4" || page.NextCursor != "" {
		t.Fatalf("queued by 2 = %+v, %v", page, err)
	}
	page, err = c.List(ctx(t), scheduler.ListRequest{Queue: "l", State: scheduler.StateFailed})
	if err != nil || len(page.Tasks) != 1 || page.Tasks[0].Attempts != 1 || page.Tasks[0].LastError != "boom" {
		t.Fatalf("failed = %+v, %v", page, err)
	}
	page, err = c.List(ctx(t), scheduler.ListRequest{Queue: "l", State: scheduler.StateScheduled})
	if err != nil || len(page.Tasks) != 2 || page.Tasks[0].RunAt.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("scheduled = %+v, %v", page, err)
	}
	for _, bad := range []string{"x1", "q", "qq", "h-1", "a2"} {
		if _, err := c.List(ctx(t), scheduler.ListRequest{Cursor: bad}); !errors.Is(err, scheduler.ErrInvalid) {
			t.Fatalf("cursor %q: %v, want ErrInvalid", bad, err)
		}
	}
	if page, err := c.List(ctx(t), scheduler.ListRequest{Cursor: "h1000000"}); err != nil || len(page.Tasks) != 0 || page.NextCursor != "" {
		t.Fatalf("past the end = %+v, %v", page, err)
	}

	r, err := bus.Request[scheduler.QueuesRequest, scheduler.QueuesReply](ctx(t), nc, scheduler.SubjectQueues, scheduler.QueuesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := scheduler.QueueInfo{Name: "l", Depth: 4, InFlight: 2, Scheduled: 2}
	if len(r.Queues) != 1 || r.Queues[0] != want {
		t.Fatalf("queues = %+v, want [%+v]", r.Queues, want)
	}
	h := r.History
	if h == nil || h.Records != 6 || h.Bytes == 0 || h.MaxBytes != 1<<30 || h.Oldest.Before(firstRecord) || h.Oldest.After(time.Now()) {
		t.Fatalf("history = %+v, want 6 records from %v", h, firstRecord)
	}
}
