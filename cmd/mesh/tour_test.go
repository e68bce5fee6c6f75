package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// help runs mesh with args (a --help) and returns what it printed.
func help(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	func() {
		type exited int
		defer func() {
			if _, ok := recover().(exited); !ok {
				t.Fatalf("%q did not exit", args)
			}
		}()
		var c cli
		parse(newParser(&c, &stdout, &stderr, func(c int) { panic(exited(c)) }), args)
	}()
	return stdout.String()
}

// mesh worker --help tells the command's contract; mesh serve --help names
// the services; version comes last in the commands.
func TestHelpTexts(t *testing.T) {
	worker := help(t, "worker", "--help")
	for _, want := range []string{"exit 0", "stdout", "result", "exit 100", "not retried"} {
		if !strings.Contains(worker, want) {
			t.Errorf("mesh worker --help lacks %q:\n%s", want, worker)
		}
	}
	serve := help(t, "serve", "--help")
	for _, name := range node.Names() {
		if !strings.Contains(serve, "  "+name+" ") {
			t.Errorf("mesh serve --help does not list %s:\n%s", name, serve)
		}
	}
	top := help(t, "--help")
	commands := top[strings.Index(top, "Commands:"):]
	last := ""
	for line := range strings.Lines(commands) {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(line, "  ") {
			last = f[0]
		}
	}
	if last != "version" {
		t.Errorf("the last command of mesh --help is %q, want version:\n%s", last, top)
	}
}

// mesh schedule add names its flags in its errors, not the request's fields.
func TestScheduleAddFlagErrors(t *testing.T) {
	for _, c := range []scheduleAddCmd{
		{Name: "n", Queue: "q", Type: "t"},
		{Name: "n", Queue: "q", Type: "t", Cron: "0 * * * * *", Every: time.Minute},
		{Name: "n", Queue: "q", Type: "t", Every: 1500 * time.Millisecond},
		{Name: "n", Queue: "q", Type: "t", Every: time.Minute, TimeZone: "Europe/Paris"},
	} {
		err := c.Run(&app{log: zerolog.Nop(), out: &syncBuffer{}, conn: connFlags{NATS: "nats://" + bustest.FreeAddr(t), Timeout: time.Second}})
		if err == nil || !strings.Contains(err.Error(), "--") || strings.Contains(err.Error(), "every_ms") || strings.Contains(err.Error(), "time_zone") {
			t.Errorf("cron %q every %v tz %q: err = %v, want one naming the flags", c.Cron, c.Every, c.TimeZone, err)
		}
	}
}

func TestPlural(t *testing.T) {
	if got := plural(1, "copy", "copies"); got != "1 copy" {
		t.Errorf("plural(1) = %q", got)
	}
	if got := plural(2, "copy", "copies"); got != "2 copies" {
		t.Errorf("plural(2) = %q", got)
	}
}

// mesh lock run says on stderr whom it waits for, then runs the command
// once the lock is free.
func TestLockRunTellsWait(t *testing.T) {
	s := bustest.RunServer(t)
	srv, err := lock.New(s.Connect(), lock.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder, err := lock.NewClient(s.Connect()).TryAcquire(ctx, "nightly", lock.Options{TTL: 30 * time.Second, Owner: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	out, stderr := &syncBuffer{}, &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{NATS: s.URL(), Timeout: 5 * time.Second}}
	run := &lockRunCmd{Name: "nightly", Wait: 20 * time.Second, lockFlags: lockFlags{TTL: 5 * time.Second}, Command: []string{"--", "echo", "ran"}, stderr: stderr}
	done := make(chan error, 1)
	go func() { done <- run.Run(a) }()
	stderr.waitFor(t, fmt.Sprintf("waiting for nightly (held by ci, token %d, expires in ", holder.Token()))
	if strings.Contains(out.String(), "ran") {
		t.Fatal("the command ran while the lock was held")
	}
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "ran")
}

// mesh lock run with a command that does not exist fails before it takes
// the lock (here: before it even connects).
func TestLockRunMissingCommand(t *testing.T) {
	a := &app{log: zerolog.Nop(), out: &syncBuffer{}, conn: connFlags{NATS: "nats://" + bustest.FreeAddr(t), Timeout: time.Second}}
	run := &lockRunCmd{Name: "nightly", Wait: time.Second, lockFlags: lockFlags{TTL: 5 * time.Second}, Command: []string{"--", "no-such-command-here"}}
	err := run.Run(a)
	if !errors.Is(err, exec.ErrNotFound) || !strings.Contains(err.Error(), "no-such-command-here") {
		t.Fatalf("err = %v, want the command not found", err)
	}
}

// mesh worker logs that it stopped once it has.
func TestWorkerLogsStopped(t *testing.T) {
	s := bustest.RunServer(t)
	logs := &syncBuffer{}
	a := &app{log: zerolog.New(logs), out: &syncBuffer{}, conn: connFlags{NATS: s.URL(), Timeout: 5 * time.Second}}
	w := &workerCmd{Queue: []string{"emails"}, Exec: "cat", Concurrency: 1, Grace: time.Second, MaxResult: 1024}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.run(ctx, a) }()
	logs.waitFor(t, "worker started")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), `"message":"stopped"`) {
		t.Fatalf("no stopped line in the worker's log:\n%s", logs)
	}
}

// mesh schedule list prints the next run the service answered, and how
// long until it.
func TestNextRun(t *testing.T) {
	now := time.Date(2026, 12, 7, 20, 2, 30, 400e6, time.UTC)
	for _, c := range []struct {
		at   bus.Time
		want string
	}{
		{bus.Time{Time: time.Date(2026, 12, 7, 20, 3, 0, 0, time.UTC)}, "2026-12-07T20:03:00.000Z (in 30s)"},
		{bus.Time{Time: time.Date(2026, 12, 8, 7, 0, 0, 0, time.UTC)}, "2026-12-08T07:00:00.000Z (in 10h57m30s)"},
		{bus.Time{}, "?"},
	} {
		if got := nextRun(c.at, now); got != c.want {
			t.Errorf("next run %v: %q, want %q", c.at, got, c.want)
		}
	}
}
