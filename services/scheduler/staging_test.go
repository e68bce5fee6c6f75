package scheduler_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// While no instance takes ticks, a periodic schedule keeps firing and its
// staging subject holds one tick, the latest; the instance that comes next
// makes one task of it, then one per tick.
func TestTicksWaitOneAtATime(t *testing.T) {
	t.Parallel() // waits on ticks mostly
	s := bustest.RunServer(t)
	first := serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	if _, err := c.AddSchedule(ctx(t), scheduler.ScheduleRequest{Name: "pulse", Queue: "p", Type: "x", EveryMs: 1000}); err != nil {
		t.Fatal(err)
	}
	if err := first.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	js := s.JetStream()
	tasks, err := js.Stream(ctx(t), scheduler.Stream)
	if err != nil {
		t.Fatal(err)
	}
	const tick = "mesh.scheduler.tick.pulse"
	// Three ticks: each replaces the one before.
	var seen []uint64
	eventually(t, func() (bool, string) {
		m, err := tasks.GetLastMsgForSubject(ctx(t), tick)
		if err == nil && (len(seen) == 0 || seen[len(seen)-1] != m.Sequence) {
			seen = append(seen, m.Sequence)
		}
		info, ierr := tasks.Info(ctx(t), jetstream.WithSubjectFilter(tick))
		if ierr != nil || info.State.Subjects[tick] > 1 {
			t.Fatalf("ticks waiting: %+v, %v", info.State.Subjects, ierr)
		}
		return len(seen) >= 3, fmt.Sprintf("ticks seen %v, %v", seen, err)
	})
	if pending, inFlight, _ := queueHolds(t, s.URL(), "p"); pending != 0 || inFlight != 0 {
		t.Fatalf("tasks made with no instance: %d waiting, %d delivered", pending, inFlight)
	}

	restart := time.Now()
	serve(t, s.URL(), scheduler.Config{})
	var made uint64
	eventually(t, func() (bool, string) {
		made, _, _ = queueHolds(t, s.URL(), "p")
		return made >= 2, fmt.Sprintf("%d tasks made since the restart", made)
	})
	// The tick that waited, then at most one a second.
	if most := uint64(time.Since(restart)/time.Second) + 2; made > most {
		t.Fatalf("%d tasks in %v since the restart: at most %d", made, time.Since(restart), most)
	}
	if err := c.RemoveSchedule(ctx(t), "pulse"); err != nil {
		t.Fatal(err)
	}
	if _, err := tasks.GetLastMsgForSubject(ctx(t), tick); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a tick is left after the schedule's removal: %v", err)
	}
}

// A delayed task cancelled while an instance holds it for its run_at is
// not released, even when the cancel has written its record but not yet
// purged its staging message; one held beside them is, at its run_at.
func TestCancelHeldDelayedTask(t *testing.T) {
	t.Parallel() // waits on timers mostly
	s := bustest.RunServer(t)
	// Due too soon for a schedule (1.5 Lead), the tasks are staged at
	// once, and held by the instance as they are due within half the
	// staging ack wait (2.5 s): 2 s leave the test time to cancel.
	serve(t, s.URL(), scheduler.Config{Lead: 5 * time.Second})
	c := client(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	ev := watch(t, s.URL())
	dropped := submitReply(t, nc, scheduler.SubmitRequest{Queue: "h", Type: "x", DelayMs: 2000})
	halfCancelled := submitReply(t, nc, scheduler.SubmitRequest{Queue: "h", Type: "x", DelayMs: 2000})
	kept := submitReply(t, nc, scheduler.SubmitRequest{Queue: "h", Type: "x", DelayMs: 2200})
	staging, err := s.JetStream().Consumer(ctx(t), scheduler.Stream, "scheduler-staging")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		info, err := staging.Info(ctx(t))
		return err == nil && info.NumAckPending == 3, fmt.Sprintf("staging = %+v, %v", info, err)
	})
	if was, err := c.Cancel(ctx(t), dropped.ID); err != nil || was != scheduler.StateScheduled {
		t.Fatalf("cancel = %q, %v", was, err)
	}
	info, err := c.Status(ctx(t), halfCancelled.ID)
	if err != nil {
		t.Fatal(err)
	}
	info.State, info.FinishedAt = scheduler.StateCancelled, bus.Time{Time: time.Now()}
	b, _ := json.Marshal(info)
	if _, err := s.JetStream().Publish(ctx(t), scheduler.HistorySubjectPrefix+"h."+halfCancelled.ID, b); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.queued", kept.ID)
	if time.Now().Before(kept.RunAt.Time) {
		t.Fatalf("released at %v, before its run_at %v", time.Now(), kept.RunAt)
	}
	// The cancelled one was due first: its release has come and gone.
	if pending, _, _ := queueHolds(t, s.URL(), "h"); pending != 1 {
		t.Fatalf("%d tasks in the queue, want the one not cancelled", pending)
	}
	if info, err := c.Status(ctx(t), dropped.ID); err != nil || info.State != scheduler.StateCancelled {
		t.Fatalf("cancelled = %+v, %v", info, err)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.seen {
		if data, _ := e.Data.(map[string]any); e.Type == "task.queued" && (data["id"] == dropped.ID || data["id"] == halfCancelled.ID) {
			t.Fatalf("the cancelled task was released: %+v", e)
		}
	}
}
