package scheduler_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// Dead letters can be listed, requeued (the same id, attempts reset, an
// event; a requeued task that fails again dies again) and deleted.
func TestDeadLetters(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	var healed atomic.Bool
	var runs atomic.Int32
	work(t, s.URL(), map[string]int{"d": 2, "e": 2}, map[string]scheduler.Handler{
		"job": func(_ context.Context, task *scheduler.Task) error {
			runs.Add(1)
			if healed.Load() {
				return nil
			}
			return fmt.Errorf("attempt %d of %s failed", task.Attempt, task.Payload)
		},
	})
	submit := func(queue, payload string) string {
		t.Helper()
		id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: queue, Type: "job", Payload: []byte(payload), MaxRetries: intp(0)})
		if err != nil {
			t.Fatal(err)
		}
		if info := waitDone(t, c, id); info.State != scheduler.StateDead || info.Attempts != 1 {
			t.Fatalf("%s = %+v", payload, info)
		}
		return id
	}
	a, b, other := submit("d", "a"), submit("d", "b"), submit("e", "x")
	deadIDs := func(queue string, limit int) []string {
		t.Helper()
		var ids []string
		req := scheduler.DeadListRequest{Queue: queue, Limit: limit}
		for {
			page, err := c.DeadList(ctx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range page.Tasks {
				if d.Queue == "" || d.DiedAt.IsZero() || d.Seq == 0 {
					t.Fatalf("dead task %+v", d)
				}
				ids = append(ids, d.ID)
			}
			if page.NextCursor == "" {
				return ids
			}
			req.Cursor = page.NextCursor
		}
	}
	if got := deadIDs("d", 1); !slices.Equal(got, []string{a, b}) {
		t.Fatalf("dead of d, a page of 1 at a time = %v, want %v", got, []string{a, b})
	}
	if got := deadIDs("", 0); !slices.Equal(got, []string{a, b, other}) {
		t.Fatalf("every dead task = %v", got)
	}
	page, err := c.DeadList(ctx(t), scheduler.DeadListRequest{Queue: "d", Limit: 1})
	if err != nil || page.Tasks[0].LastError != "attempt 1 of a failed" || page.Tasks[0].Type != "job" || page.Tasks[0].PayloadBytes != 1 {
		t.Fatalf("dead list = %+v, %v", page, err)
	}

	// Requeued, it fails again and dies again, its attempts counted anew.
	ids, err := c.DeadRequeue(ctx(t), scheduler.DeadRequest{ID: a})
	if err != nil || !slices.Equal(ids, []string{a}) {
		t.Fatalf("requeue a = %v, %v", ids, err)
	}
	ev.wait(t, "task.requeued", a)
	eventually(t, func() (bool, string) {
		info, err := c.Status(ctx(t), a)
		return err == nil && info.State == scheduler.StateDead && runs.Load() == 4, fmt.Sprintf("a = %+v, %v; %d runs", info, err, runs.Load())
	})
	if info, _ := c.Status(ctx(t), a); info.Attempts != 1 || info.LastError != "attempt 1 of a failed" {
		t.Fatalf("a after dying again = %+v", info)
	}
	if got := deadIDs("d", 0); !slices.Equal(got, []string{b, a}) {
		t.Fatalf("dead of d after a died again = %v", got)
	}

	// Requeued once the handler works, every dead task of d succeeds.
	healed.Store(true)
	ids, err = c.DeadRequeue(ctx(t), scheduler.DeadRequest{Queue: "d", All: true})
	if err != nil || !slices.Equal(ids, []string{b, a}) {
		t.Fatalf("requeue all of d = %v, %v", ids, err)
	}
	for _, id := range []string{a, b} {
		if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded || info.Attempts != 1 || info.ID != id {
			t.Fatalf("%s after requeue = %+v", id, info)
		}
	}
	if got := deadIDs("d", 0); len(got) != 0 {
		t.Fatalf("dead of d after requeue = %v", got)
	}

	// Deleted, it leaves the dead letters; its state stays dead.
	ids, err = c.DeadDelete(ctx(t), scheduler.DeadRequest{ID: other})
	if err != nil || !slices.Equal(ids, []string{other}) {
		t.Fatalf("delete = %v, %v", ids, err)
	}
	if got := deadIDs("", 0); len(got) != 0 {
		t.Fatalf("dead letters after delete = %v", got)
	}
	if info, err := c.Status(ctx(t), other); err != nil || info.State != scheduler.StateDead {
		t.Fatalf("deleted = %+v, %v", info, err)
	}
	eventually(t, func() (bool, string) {
		qs, err := c.Queues(ctx(t))
		ok := err == nil && len(qs) == 2
		for _, q := range qs {
			ok = ok && q.Dead == 0 && q.Depth == 0 && q.InFlight == 0
		}
		return ok, fmt.Sprintf("queues = %+v, %v", qs, err)
	})

	// Refusals change nothing.
	if _, err := c.DeadRequeue(ctx(t), scheduler.DeadRequest{ID: a}); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("requeue of a task not dead: %v", err)
	}
	if _, err := c.DeadDelete(ctx(t), scheduler.DeadRequest{ID: "nope"}); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("delete of an unknown id: %v", err)
	}
	for _, bad := range []scheduler.DeadRequest{{}, {Queue: "d"}, {ID: a, Queue: "d", All: true}, {ID: "a.b"}} {
		if _, err := c.DeadRequeue(ctx(t), bad); !errors.Is(err, scheduler.ErrInvalid) {
			t.Fatalf("requeue %+v: %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := c.DeadList(ctx(t), scheduler.DeadListRequest{Cursor: "x"}); !errors.Is(err, scheduler.ErrInvalid) {
		t.Fatalf("list with a bad cursor: %v", err)
	}
	if n := runs.Load(); n != 6 {
		t.Fatalf("%d runs, want 6 (3, a again, then a and b)", n)
	}
}

// A task delivered MaxDeliver times without an outcome (a worker that
// does not speak the protocol, or keeps dying) goes to the dead letters
// when the server's max-deliveries advisory comes: its record says dead,
// and it leaves the queue. One whose record says it succeeded (its worker
// died between the record and the ack) keeps its outcome and leaves the
// queue, with no dead letter.
func TestMaxDeliveriesAdvisory(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{AckWait: 200 * time.Millisecond, MaxDeliver: 2})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	lost, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "raw", Type: "x", Payload: []byte("lost soul")})
	if err != nil {
		t.Fatal(err)
	}
	done, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "raw", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	js := s.JetStream()
	cons, err := js.Consumer(ctx(t), scheduler.Stream, "raw")
	if err != nil {
		t.Fatal(err)
	}
	pull := func() int {
		t.Helper()
		batch, err := cons.Fetch(2, jetstream.FetchMaxWait(bustest.Scale(time.Second)))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range batch.Messages() {
			n++ // never acknowledged
		}
		return n
	}
	if n := pull(); n != 2 {
		t.Fatalf("first delivery: %d messages", n)
	}
	// done's worker wrote its outcome, and died before acknowledging.
	info, err := c.Status(ctx(t), done)
	if err != nil || info.State != scheduler.StateRunning {
		t.Fatalf("done = %+v, %v", info, err)
	}
	info.State, info.Attempts, info.FinishedAt = scheduler.StateSucceeded, 1, bus.Time{Time: time.Now()}
	b, _ := json.Marshal(info)
	if _, err := js.Publish(ctx(t), scheduler.HistorySubjectPrefix+"raw."+done, b); err != nil {
		t.Fatal(err)
	}
	// The second delivery, then pulls that find both out of deliveries.
	eventually(t, func() (bool, string) {
		pull()
		pending, inFlight, _ := queueHolds(t, s.URL(), "raw")
		return pending == 0 && inFlight == 0, fmt.Sprintf("queue holds %d waiting, %d delivered", pending, inFlight)
	})
	ev.wait(t, "task.dead", lost)
	info, err = c.Status(ctx(t), lost)
	if err != nil || info.State != scheduler.StateDead || info.Attempts != 2 || info.LastError != "delivered 2 times without an outcome" || info.FinishedAt.IsZero() {
		t.Fatalf("lost = %+v, %v", info, err)
	}
	if info, err := c.Status(ctx(t), done); err != nil || info.State != scheduler.StateSucceeded {
		t.Fatalf("done = %+v, %v", info, err)
	}
	eventually(t, func() (bool, string) {
		page, err := c.DeadList(ctx(t), scheduler.DeadListRequest{})
		return err == nil && len(page.Tasks) == 1 && page.Tasks[0].ID == lost && page.Tasks[0].PayloadBytes == len("lost soul"),
			fmt.Sprintf("dead letters = %+v, %v", page, err)
	})
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.seen {
		if data, _ := e.Data.(map[string]any); e.Type == "task.dead" && data["id"] == done {
			t.Fatalf("a task that had succeeded died: %+v", e)
		}
	}
}

// A requeue finishes one that died halfway: a dead task whose record has
// gone (evicted) gets a new one; one whose record already says queued (a
// requeue that died before publishing) is published with that record.
func TestRequeueHalfDone(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	var failed sync.Map
	work(t, s.URL(), map[string]int{"r": 2}, map[string]scheduler.Handler{
		"once": func(_ context.Context, task *scheduler.Task) error {
			if _, again := failed.LoadOrStore(task.ID, true); !again {
				return errors.New("first run fails")
			}
			return nil
		},
	})
	js := s.JetStream()
	history, err := js.Stream(ctx(t), scheduler.HistoryStream)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "r", Type: "once", MaxRetries: intp(0)})
		if err != nil {
			t.Fatal(err)
		}
		if info := waitDone(t, c, id); info.State != scheduler.StateDead {
			t.Fatalf("%s = %+v", id, info)
		}
		ids = append(ids, id)
	}
	evicted, halfway := ids[0], ids[1]
	if err := history.Purge(ctx(t), jetstream.WithPurgeSubject(scheduler.HistorySubjectPrefix+"r."+evicted)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(ctx(t), evicted); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("status without a record: %v", err)
	}
	rec, err := history.GetLastMsgForSubject(ctx(t), scheduler.HistorySubjectPrefix+"r."+halfway)
	if err != nil {
		t.Fatal(err)
	}
	var info scheduler.TaskInfo
	if err := json.Unmarshal(rec.Data, &info); err != nil {
		t.Fatal(err)
	}
	info.State, info.Attempts, info.LastError, info.FinishedAt = scheduler.StateQueued, 0, "", bus.Time{}
	b, _ := json.Marshal(info)
	if _, err := js.Publish(ctx(t), rec.Subject, b, jetstream.WithExpectLastSequencePerSubject(rec.Sequence)); err != nil {
		t.Fatal(err)
	}
	got, err := c.DeadRequeue(ctx(t), scheduler.DeadRequest{Queue: "r", All: true})
	if err != nil || !slices.Equal(got, ids) {
		t.Fatalf("requeue = %v, %v", got, err)
	}
	for _, id := range ids {
		if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded || info.Attempts != 1 {
			t.Fatalf("%s after requeue = %+v", id, info)
		}
	}
	if page, err := c.DeadList(ctx(t), scheduler.DeadListRequest{}); err != nil || len(page.Tasks) != 0 {
		t.Fatalf("dead letters after requeue = %+v, %v", page, err)
	}
}
