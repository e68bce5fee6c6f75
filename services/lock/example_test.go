package lock_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/services/lock"
)

func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "mesh-example")
	defer os.RemoveAll(dir)
	// An in-process nats-server and a lock service instance; a real program
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
	svc, err := lock.New(nc, lock.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer svc.Stop(ctx)

	locks := lock.NewClient(nc)
	lease, err := locks.Acquire(ctx, "reports.daily", lock.Options{TTL: 10 * time.Second, Owner: "example"})
	if err != nil {
		log.Fatal(err)
	}
	// Pass lease.Token() along with every write the lock guards: a store
	// that remembers the highest token it saw refuses a stale holder.
	_, err = locks.TryAcquire(ctx, "reports.daily", lock.Options{})
	fmt.Println("while held:", err)
	if err := lease.Release(ctx); err != nil {
		log.Fatal(err)
	}
	again, err := locks.TryAcquire(ctx, "reports.daily", lock.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("token grew:", again.Token() > lease.Token())
	_ = again.Release(ctx)
	// Output:
	// while held: lock_held: lock reports.daily is held
	// token grew: true
}
