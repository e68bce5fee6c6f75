package cache_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/services/cache"
)

func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "mesh-example")
	defer os.RemoveAll(dir)
	// An in-process nats-server and two cache nodes; a real program
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
	// Each key is kept by its owner and one replica.
	for _, id := range []string{"a", "b"} {
		node, err := cache.New(nc, cache.Config{ID: id})
		if err != nil {
			log.Fatal(err)
		}
		if err := node.Start(ctx); err != nil {
			log.Fatal(err)
		}
		defer node.Stop(ctx)
	}

	c, err := cache.NewClient(nc, cache.ClientConfig{})
	if err != nil {
		log.Fatal(err)
	}
	// Start learns the nodes; then each key goes straight to its owner.
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)

	_ = c.Set(ctx, "user:42", []byte(`{"name":"Ada"}`), time.Minute)
	v, _ := c.Get(ctx, "user:42")
	fmt.Println(string(v))

	_, err = c.Get(ctx, "user:43")
	fmt.Println(errors.Is(err, cache.ErrNotFound))

	vals, _ := c.MGet(ctx, "user:42", "user:43")
	fmt.Printf("%s %v\n", vals[0], vals[1] == nil)
	// Output:
	// {"name":"Ada"}
	// true
	// {"name":"Ada"} true
}
