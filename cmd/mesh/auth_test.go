package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/scheduler"
)

// The users of mesh up --auth are the compose stack's: the accounts block
// embedded in the binary is the one of deploy/nats/nats.conf.
func TestAuthAccountsMatchCompose(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	compose := string(b)
	block := compose[strings.Index(compose, "accounts {"):]
	embedded := accountsConf[strings.Index(accountsConf, "accounts {"):]
	if block != embedded {
		t.Fatal("cmd/mesh/accounts.conf differs from the accounts block of deploy/nats/nats.conf: copy it again")
	}
}

// mesh up --auth: a client without credentials cannot connect; the client
// user uses the request API but cannot publish heartbeats (a forged cache
// member); the worker user runs tasks; the tour says how to connect; the
// credentials are kept for the next run.
func TestUpAuth(t *testing.T) {
	listen := bustest.FreeAddr(t)
	dir := t.TempDir()
	authDir := filepath.Join(dir, "auth")
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{Timeout: 5 * time.Second}}
	up := &upCmd{Listen: listen, Data: filepath.Join(dir, "data"), Sync: "default", Auth: true, AuthDir: authDir,
		runFlags: runFlags{Replicas: 1, CacheNodes: 1, CacheReplicas: 1, Node: "auth-node"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- up.run(ctx, a) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("up returned %v", err)
		}
	})
	out.waitFor(t, "Ctrl-C stops it")
	tour := out.String()
	for _, want := range []string{"nats context save mesh --server", "--inbox-prefix _INBOX_client", "nats --context mesh req mesh.cache.get",
		"mesh worker --nats nats://" + listen + " --nkey " + filepath.Join(authDir, "worker.nk")} {
		if !strings.Contains(tour, want) {
			t.Fatalf("the tour lacks %q:\n%s", want, tour)
		}
	}
	url := "nats://" + listen
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()

	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("a client without credentials connected")
	}

	pw, err := os.ReadFile(filepath.Join(authDir, "client.password"))
	if err != nil {
		t.Fatal(err)
	}
	violations := make(chan error, 8)
	client, err := bus.Connect(cctx, bus.Options{URL: url, User: "client", Password: strings.TrimSpace(string(pw)), InboxPrefix: "_INBOX_client"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err })
	if _, err := bus.Request[cache.SetRequest, cache.SetReply](cctx, client, cache.SubjectSet, cache.SetRequest{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatalf("client set: %v", err)
	}
	forged := `{"id":"evil","weight":1,"version":"0.1.0","started":"2026-01-01T00:00:00.000Z","interval_ms":1000}`
	if err := client.Publish("mesh.heartbeat.cache.evil", []byte(forged)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-violations:
		if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), "mesh.heartbeat.cache.evil") {
			t.Fatalf("publishing a heartbeat: %v, want a permissions violation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("publishing a heartbeat as the client user raised no permissions violation")
	}

	// The worker user runs a task the client submitted.
	id, err := scheduler.NewClient(client).Submit(cctx, scheduler.SubmitRequest{Queue: "authq", Type: "x"})
	if err != nil {
		t.Fatalf("client submit: %v", err)
	}
	wnc, err := bus.Connect(cctx, bus.Options{URL: url, NKey: filepath.Join(authDir, "worker.nk"), InboxPrefix: "_INBOX_worker"})
	if err != nil {
		t.Fatal(err)
	}
	defer wnc.Close()
	w, err := scheduler.NewWorker(wnc, scheduler.WorkerConfig{Queues: map[string]int{"authq": 1, "authq2": 1}})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("x", func(context.Context, *scheduler.Task) error { return nil })
	if err := w.Start(cctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop(context.Background()) }()
	info, err := scheduler.NewClient(client).Wait(cctx, id)
	if err != nil || info.State != scheduler.StateSucceeded {
		t.Fatalf("task run by the worker user: %+v, %v", info, err)
	}
	// The client user may store a task in its queue itself (the direct
	// path; its first submit to a queue goes through the service), and the
	// worker user records it.
	direct := scheduler.NewClient(client, scheduler.WithDirect())
	for i := range 2 {
		id, err := direct.Submit(cctx, scheduler.SubmitRequest{Queue: "authq2", Type: "x"})
		if err != nil {
			t.Fatalf("direct submit %d: %v", i, err)
		}
		if info, err := direct.Wait(cctx, id); err != nil || info.State != scheduler.StateSucceeded {
			t.Fatalf("direct submit %d: %+v, %v", i, info, err)
		}
	}
	// It may not write a task's record: only workers do.
	if err := client.Publish("mesh.history.authq.evil", []byte(`{"id":"evil","state":"succeeded"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-violations:
		if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), "mesh.history.authq.evil") {
			t.Fatalf("writing a record: %v, want a permissions violation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writing a record as the client user raised no permissions violation")
	}

	// The credentials stay for the next run.
	again, err := loadAuth(authDir)
	if err != nil || again.pws["client"] != strings.TrimSpace(string(pw)) {
		t.Fatalf("credentials made again: %v", err)
	}
}
