package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/internal/console"
)

// consoleFlags configure the web console of mesh up and mesh console.
type consoleFlags struct {
	ReadOnly bool `name:"console-read-only" env:"MESH_CONSOLE_READ_ONLY" help:"The console shows the mesh but takes no action (pause, cancel, submit)."`
}

type consoleCmd struct {
	consoleFlags
	Listen        string `default:"127.0.0.1:4280" env:"MESH_CONSOLE" placeholder:"ADDR" help:"Address of the console, a loopback address (any with --allow-remote)."`
	AllowRemote   bool   `name:"allow-remote" env:"MESH_CONSOLE_ALLOW_REMOTE" help:"Listen on a non-loopback address (0.0.0.0:4280): only in a container whose port the host publishes on 127.0.0.1. Pages still answer only a loopback Host, actions only from their own origin."`
	CacheReplicas int    `name:"cache-replicas" env:"MESH_CACHE_REPLICAS" default:"2" help:"Copies of each cache key (the cache nodes' setting), for the key lookup."`
}

func (c *consoleCmd) Run(a *app) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.run(ctx, a)
}

// run serves the console until ctx ends.
func (c *consoleCmd) run(ctx context.Context, a *app) error {
	nc, err := a.connect("mesh console")
	if err != nil {
		return err
	}
	defer nc.Close()
	srv, err := console.Listen(ctx, nc, c.Listen, console.Config{ReadOnly: c.ReadOnly, CacheReplicas: c.CacheReplicas, AllowRemote: c.AllowRemote, Logger: a.log})
	if err != nil {
		if errors.Is(err, console.ErrNotLoopback) {
			return fmt.Errorf("%w (in a container whose port the host publishes on 127.0.0.1: --allow-remote)", err)
		}
		return err
	}
	fmt.Fprintf(a.out, "Mesh console: %s (NATS %s). Ctrl-C stops it.\n", srv.URL(), nc.ConnectedUrlRedacted())
	if c.AllowRemote {
		fmt.Fprintln(a.out, "It answers requests whose Host is a loopback address only: open it through a port published on 127.0.0.1.")
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Close(sctx)
}

// startConsole serves the console of mesh up on addr ("" or "off": none)
// until ctx ends, and returns its URL ("" if none) and a function that
// waits until it has stopped. A console that cannot listen is a warning,
// not a failure of the mesh.
func (a *app) startConsole(ctx context.Context, nc *nats.Conn, addr string, f consoleFlags, cacheReplicas int) (url string, wait func()) {
	if addr == "" || addr == "off" {
		return "", func() {}
	}
	// With --auth, the console connects as the console user, with that
	// user's permissions, as in the compose stack.
	closeConn := func() {}
	if a.serviceConn != nil {
		cnc, err := a.serviceConn("console")
		if err != nil {
			a.log.Warn().Err(err).Msg("no console: connecting as the console user")
			return "", func() {}
		}
		nc, closeConn = cnc, cnc.Close
	}
	srv, err := console.Listen(ctx, nc, addr, console.Config{ReadOnly: f.ReadOnly, CacheReplicas: cacheReplicas, Logger: a.log})
	if err != nil {
		closeConn()
		hint := "give --console another address, or off"
		if errors.Is(err, console.ErrNotLoopback) {
			hint = "run `mesh console` on the host you browse from, or tunnel to it"
		}
		a.log.Warn().Err(err).Msg("no console: " + hint)
		return "", func() {}
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		defer closeConn()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(sctx); err != nil {
			a.log.Warn().Err(err).Msg("stopping the console")
		}
	}()
	return srv.URL(), func() { <-stopped }
}
