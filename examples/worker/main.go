// Command worker is an example task worker: it runs the tasks of the queues
// it is given with the scheduler SDK's Worker, which speaks the worker
// protocol (schemas/README.md). The compose stack runs it, as a static
// binary in a scratch image where `mesh worker --exec` has no command to run.
//
// Task types:
//
//	echo    succeeds with the payload as its result
//	sleep   sleeps for the payload (a Go duration such as 250ms), then succeeds
//	fail    fails with the payload as the error (and is retried)
//	reject  fails for good (no retry)
//	*       any other type succeeds with an empty result
//
// Connection and settings come from the same MESH_* variables as the mesh
// binary (MESH_NATS, MESH_USER, MESH_PASSWORD, MESH_NATS_TOKEN, MESH_NKEY,
// MESH_CREDS, MESH_TLS_*, MESH_INBOX_PREFIX), plus MESH_WORKER_QUEUES
// (queue=concurrency,... ; default default=4) and MESH_WORKER_NAME. Flags
// override them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// parseQueues reads "q1=4,q2" (concurrency 1 when left out).
func parseQueues(s string) (map[string]int, error) {
	qs := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, conc, found := strings.Cut(part, "=")
		n := 1
		if found {
			var err error
			if n, err = strconv.Atoi(conc); err != nil || n < 1 {
				return nil, fmt.Errorf("queue %q: concurrency %q is not a positive number", name, conc)
			}
		}
		qs[name] = n
	}
	if len(qs) == 0 {
		return nil, errors.New("no queue to serve")
	}
	return qs, nil
}

func run() error {
	host, _ := os.Hostname()
	var (
		url     = flag.String("nats", env("MESH_NATS", bus.DefaultURL), "NATS server URL(s), comma-separated")
		queues  = flag.String("queues", env("MESH_WORKER_QUEUES", "default=4"), "queues to serve: name=concurrency,...")
		name    = flag.String("name", env("MESH_WORKER_NAME", host), "worker name shown in task events")
		grace   = flag.Duration("grace", 10*time.Second, "how long a stop waits for tasks in flight")
		level   = flag.String("log-level", env("MESH_LOG_LEVEL", "info"), "log level")
		timeout = flag.Duration("connect-timeout", 0, "give up connecting after this long (0: wait for ever)")
	)
	flag.Parse()
	qs, err := parseQueues(*queues)
	if err != nil {
		return err
	}
	lvl, err := zerolog.ParseLevel(*level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	log := zerolog.New(os.Stderr).Level(lvl).With().Timestamp().Str("worker", *name).Logger()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cctx := ctx
	if *timeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	nc, err := bus.Connect(cctx, bus.Options{
		URL: *url, Name: "worker " + *name,
		Creds: os.Getenv("MESH_CREDS"), NKey: os.Getenv("MESH_NKEY"),
		User: os.Getenv("MESH_USER"), Password: os.Getenv("MESH_PASSWORD"), Token: os.Getenv("MESH_NATS_TOKEN"),
		TLSCA: os.Getenv("MESH_TLS_CA"), TLSCert: os.Getenv("MESH_TLS_CERT"), TLSKey: os.Getenv("MESH_TLS_KEY"),
		InboxPrefix: os.Getenv("MESH_INBOX_PREFIX"), Retry: true, Logger: log,
	})
	if err != nil {
		return err
	}
	defer nc.Close()

	w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: qs, Name: *name, ShutdownGrace: *grace, Logger: log})
	if err != nil {
		return err
	}
	w.Handle("echo", func(_ context.Context, t *scheduler.Task) error {
		t.SetResult(t.Payload)
		return nil
	})
	w.Handle("sleep", func(ctx context.Context, t *scheduler.Task) error {
		d, err := time.ParseDuration(string(t.Payload))
		if err != nil {
			return scheduler.SkipRetry(fmt.Errorf("payload %q is not a duration: %w", t.Payload, err))
		}
		select {
		case <-time.After(d):
			t.SetResult([]byte("slept " + d.String()))
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	})
	w.Handle("fail", func(_ context.Context, t *scheduler.Task) error {
		return errors.New(string(t.Payload))
	})
	w.Handle("reject", func(_ context.Context, t *scheduler.Task) error {
		return scheduler.SkipRetry(errors.New(string(t.Payload)))
	})
	w.Handle(scheduler.AnyType, func(context.Context, *scheduler.Task) error { return nil })
	if err := w.Start(ctx); err != nil {
		return err
	}
	log.Info().Any("queues", qs).Msg("worker started")
	<-ctx.Done()
	log.Info().Msg("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), *grace+5*time.Second)
	defer cancel()
	return errors.Join(w.Stop(sctx), nc.Drain())
}
