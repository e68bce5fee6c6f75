package scheduler_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// schedules.add and schedules.list answer when a schedule fires next, and
// an interval schedule's first tick comes when list said.
func TestScheduleNextRunAt(t *testing.T) {
	t.Parallel() // waits on a tick mostly
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ticks := make(chan struct{}, 1)
	nc := bustest.Connect(t, s.URL())
	if _, err := nc.Subscribe("mesh.events.task.>", func(*nats.Msg) {
		select {
		case ticks <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// A cron schedule in a time zone: the next 03:00 in Paris.
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	nightly, err := c.AddSchedule(ctx(t), scheduler.ScheduleRequest{Name: "nightly", Queue: "night", Type: "x", Cron: "0 0 3 * * *", TimeZone: "Europe/Paris"})
	if err != nil {
		t.Fatal(err)
	}
	at := nightly.NextRunAt.In(paris)
	if !at.After(before) || at.Sub(before) > 25*time.Hour || at.Hour() != 3 || at.Minute() != 0 || at.Second() != 0 {
		t.Fatalf("nightly: next run at %v (%v in Paris), asked at %v", nightly.NextRunAt, at, before)
	}

	// An interval of 3 s.
	const every = 3 * time.Second
	added, err := c.AddSchedule(ctx(t), scheduler.ScheduleRequest{Name: "beat", Queue: "beats", Type: "beat", EveryMs: every.Milliseconds()})
	if err != nil {
		t.Fatal(err)
	}
	if d := added.NextRunAt.Sub(added.CreatedAt.Time); d < every-time.Second || d > every+time.Second || added.NextRunAt.Nanosecond() != 0 {
		t.Fatalf("add: next run at %v, created at %v", added.NextRunAt, added.CreatedAt)
	}
	listedAt := time.Now()
	scheds, err := c.ListSchedules(ctx(t))
	if err != nil || len(scheds) != 2 || scheds[0].Name != "beat" || scheds[1].Name != "nightly" {
		t.Fatalf("list = %+v, %v", scheds, err)
	}
	if !scheds[1].NextRunAt.Equal(nightly.NextRunAt.Time) {
		t.Errorf("nightly: listed next run %v, added %v", scheds[1].NextRunAt, nightly.NextRunAt)
	}
	next := scheds[0].NextRunAt.Time
	// Counted from the creation rounded to the second: the first tick may
	// be up to half a second more than an interval away.
	if !next.After(listedAt) || next.Sub(listedAt) > every+time.Second/2 {
		t.Fatalf("beat: listed next run %v at %v", next, listedAt)
	}

	// The first tick made after the list is the one at next: the stream
	// fires on time (a loaded machine may store it late, never early),
	// and the tick after it is a whole interval later.
	deadline := time.After(10 * every)
	for {
		list, err := c.List(ctx(t), scheduler.ListRequest{Queue: "beats"})
		if err != nil {
			t.Fatal(err)
		}
		var first time.Time
		for _, task := range list.Tasks {
			if made := task.CreatedAt.Time; made.After(listedAt) && (first.IsZero() || made.Before(first)) {
				first = made
			}
		}
		if !first.IsZero() {
			if first.Before(next.Add(-100*time.Millisecond)) || first.After(next.Add(every/2)) {
				t.Fatalf("listed next run %v, the tick came at %v", next, first)
			}
			break
		}
		select {
		case <-ticks:
		case <-deadline:
			t.Fatalf("no tick in %v", 10*every)
		}
	}
}
