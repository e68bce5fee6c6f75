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
	"github.com/nats-io/nats.go/jetstream"
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
	client.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case violations <- err:
		default:
		}
	})
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

	// The client may publish a task's message (the Go SDK's direct
	// submit), and nothing else of the scheduler's store: no record, no
	// dead letter, no unique key, no pull.
	checkPublish(t, "client", client, map[string]bool{
		"mesh.tasks.authq.direct-1":                   true,
		"mesh.tasks.authq":                            false,
		"mesh.history.x.y":                            false,
		"mesh.dead.authq":                             false,
		"$KV.MESH_TASK_STATE.u.authq.x":               false,
		"$JS.API.CONSUMER.MSG.NEXT.MESH_TASKS.authq":  false,
		"$JS.API.DIRECT.GET.MESH_TASK_HISTORY":        false,
		"$JS.API.STREAM.MSG.DELETE.MESH_TASK_HISTORY": false,
	})

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
	// It writes records and dead letters and pulls its queues, but writes
	// no bucket, changes no stream and publishes no cancellation.
	checkPublish(t, "worker", wnc, map[string]bool{
		"mesh.history.authq.x":       true,
		"mesh.dead.authq":            true,
		"mesh.events.task.succeeded": true,
		"$JS.API.DIRECT.GET.MESH_TASK_HISTORY.mesh.history.x.y":  true,
		"$KV.MESH_TASK_STATE.u.authq.x":                          false,
		"$KV.MESH_LOCKS.x":                                       false,
		"mesh.events.task.cancelled":                             false,
		"mesh.scheduler.finished":                                false,
		"$JS.API.STREAM.MSG.DELETE.MESH_TASK_HISTORY":            false,
		"$JS.API.CONSUMER.MSG.NEXT.MESH_TASKS.scheduler-staging": false,
	})
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
	// The scheduler user reads what list and queues show (with its own
	// inbox prefix, the only one it may subscribe to).
	if page, err := scheduler.NewClient(client).List(cctx, scheduler.ListRequest{Queue: "authq"}); err != nil || len(page.Tasks) != 1 || page.Tasks[0].ID != id {
		t.Fatalf("list as the client user: %+v, %v", page, err)
	}
	if qs, err := scheduler.NewClient(client).Queues(cctx); err != nil || len(qs) != 1 || qs[0].Name != "authq" {
		t.Fatalf("queues as the client user: %+v, %v", qs, err)
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
	// Earlier checks' violations may still be in the channel: wait for
	// this write's.
	deadline := time.After(10 * time.Second)
	for refused := false; !refused; {
		select {
		case err := <-violations:
			refused = errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), "mesh.history.authq.evil")
		case <-deadline:
			t.Fatal("writing a record as the client user raised no permissions violation")
		}
	}

	// The credentials stay for the next run.
	again, err := loadAuth(authDir)
	if err != nil || again.pws["client"] != strings.TrimSpace(string(pw)) {
		t.Fatalf("credentials made again: %v", err)
	}
}

// checkPublish publishes to each subject as user and checks that the
// server refuses exactly those not allowed. The messages say they are for
// no stream (Nats-Expected-Stream), so the stream of an allowed subject
// refuses to store them: the check changes nothing. The server answers a
// publish it refuses with a permissions violation before the flush's
// PONG, and the connection keeps it as its last error.
func checkPublish(t *testing.T, user string, nc *nats.Conn, allowed map[string]bool) {
	t.Helper()
	for subject, ok := range allowed {
		m := nats.NewMsg(subject)
		m.Header.Set(jetstream.ExpectedStreamHeader, "NONE")
		m.Data = []byte("{}")
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		last := nc.LastError()
		refused := last != nil && errors.Is(last, nats.ErrPermissionViolation) && strings.Contains(last.Error(), `"`+subject+`"`)
		if refused == ok {
			t.Errorf("%s publishing %s: refused %v, want %v (last error %v)", user, subject, refused, !ok, last)
		}
	}
}
