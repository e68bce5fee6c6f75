package sys_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/services/sys"
)

func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "mesh-example")
	defer os.RemoveAll(dir)
	// An in-process nats-server with no port; a real deployment connects
	// with bus.Connect instead.
	srv, err := embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown(ctx)
	nc, err := bus.Connect(ctx, bus.Options{Extra: []nats.Option{srv.ConnectOption()}})
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	svc, err := sys.New(nc, sys.Config{Node: "laptop", Services: []string{"sys"}})
	if err != nil {
		log.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer svc.Stop(ctx)

	info, err := bus.Request[sys.InfoRequest, sys.InfoReply](ctx, nc, sys.SubjectInfo, sys.InfoRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Node, info.Services)
	// Output: laptop [sys]
}
