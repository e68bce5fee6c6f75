package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/services/scheduler"
)

func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "mesh-example")
	defer os.RemoveAll(dir)
	// An in-process nats-server and a scheduler instance; a real program
	// connects to a running mesh with bus.Connect instead.
	srv, err := embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown(ctx)
	nc, err := nats.Connect("", srv.ConnectOption())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	svc, err := scheduler.New(nc, scheduler.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer svc.Stop(ctx)

	// A worker runs the "email" queue's tasks, two at a time.
	w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: map[string]int{"email": 2}})
	if err != nil {
		log.Fatal(err)
	}
	w.Handle("welcome", func(ctx context.Context, t *scheduler.Task) error {
		t.SetResult([]byte("welcomed " + string(t.Payload)))
		return nil
	})
	w.Handle("bounce", func(ctx context.Context, t *scheduler.Task) error {
		return scheduler.SkipRetry(errors.New("mailbox does not exist"))
	})
	if err := w.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer w.Stop(ctx)

	tasks := scheduler.NewClient(nc)
	ok, err := tasks.Submit(ctx, scheduler.SubmitRequest{Queue: "email", Type: "welcome", Payload: []byte("ann"), DelayMs: 100})
	if err != nil {
		log.Fatal(err)
	}
	bad, err := tasks.Submit(ctx, scheduler.SubmitRequest{Queue: "email", Type: "bounce", Payload: []byte("nobody")})
	if err != nil {
		log.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := tasks.Wait(wctx, ok)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.State, info.Result)
	info, err = tasks.Wait(wctx, bad)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.State, info.Attempts, info.LastError)

	// A unique key refuses a second task within its window.
	_, err = tasks.Submit(ctx, scheduler.SubmitRequest{Queue: "email", Type: "welcome", UniqueKey: "ann", UniqueForMs: 60_000})
	if err != nil {
		log.Fatal(err)
	}
	_, err = tasks.Submit(ctx, scheduler.SubmitRequest{Queue: "email", Type: "welcome", UniqueKey: "ann", UniqueForMs: 60_000})
	fmt.Println(errors.Is(err, scheduler.ErrDuplicate), strings.HasPrefix(err.Error(), "duplicate:"))

	// A client WithDirect stores a task in its queue itself, once it has
	// submitted to the queue through the service: no request per task.
	direct := scheduler.NewClient(nc, scheduler.WithDirect())
	for _, who := range []string{"bob", "cy"} {
		id, err := direct.Submit(ctx, scheduler.SubmitRequest{Queue: "email", Type: "welcome", Payload: []byte(who)})
		if err != nil {
			log.Fatal(err)
		}
		if info, err = direct.Wait(wctx, id); err != nil {
			log.Fatal(err)
		}
		fmt.Println(info.State, info.Result)
	}
	// Output:
	// succeeded welcomed ann
	// dead 1 mailbox does not exist
	// true true
	// succeeded welcomed bob
	// succeeded welcomed cy
}
