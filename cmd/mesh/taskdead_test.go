package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// mesh task submit --id, then mesh task dead ls|requeue|rm on a task that
// died.
func TestTaskDeadCommands(t *testing.T) {
	s := bustest.RunServer(t)
	srv, err := scheduler.New(s.Connect(), scheduler.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{NATS: s.URL(), Timeout: 5 * time.Second}}
	sub := &taskSubmitCmd{Queue: "cli", Type: "boom", ID: "cli-1", retryFlags: retryFlags{MaxRetries: 0}}
	if err := sub.Run(a); err != nil || !strings.Contains(out.String(), "cli-1") {
		t.Fatalf("submit --id: %v\n%s", err, out)
	}
	w, err := scheduler.NewWorker(s.Connect(), scheduler.WorkerConfig{Queues: map[string]int{"cli": 1}})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("boom", func(context.Context, *scheduler.Task) error { return errors.New("boom") })
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Stop(context.Background())
	c := scheduler.NewClient(s.Connect())
	if info, err := c.Wait(ctx, "cli-1"); err != nil || info.State != scheduler.StateDead {
		t.Fatalf("cli-1 = %+v, %v", info, err)
	}
	run := func(cmd interface{ Run(*app) error }) string {
		t.Helper()
		o := &syncBuffer{}
		a.out = o
		if err := cmd.Run(a); err != nil {
			t.Fatalf("%T: %v", cmd, err)
		}
		return o.String()
	}
	if got := run(&taskDeadLsCmd{Queue: "cli"}); !strings.Contains(got, "cli-1") || !strings.Contains(got, "boom") {
		t.Fatalf("dead ls:\n%s", got)
	}
	if got := run(&taskDeadRequeueCmd{deadTarget{ID: "cli-1"}}); got != "requeued cli-1\n" {
		t.Fatalf("dead requeue: %q", got)
	}
	// It dies again (its dead letter is written before its state), and is
	// removed.
	if info, err := c.Wait(ctx, "cli-1"); err != nil || info.State != scheduler.StateDead || info.Attempts != 1 {
		t.Fatalf("cli-1 after requeue = %+v, %v", info, err)
	}
	if got := run(&taskDeadLsCmd{Queue: "cli"}); !strings.Contains(got, "cli-1") {
		t.Fatalf("dead ls after it died again:\n%s", got)
	}
	if got := run(&taskDeadRmCmd{deadTarget{Queue: "cli", All: true}}); got != "removed cli-1\n" {
		t.Fatalf("dead rm: %q", got)
	}
	if got := run(&taskDeadLsCmd{}); got != "no dead tasks\n" {
		t.Fatalf("dead ls after rm: %q", got)
	}
	if err := (&taskDeadRmCmd{deadTarget{Queue: "cli"}}).Run(a); err == nil || !strings.Contains(err.Error(), "--all") {
		t.Fatalf("rm --queue without --all: %v", err)
	}
}
