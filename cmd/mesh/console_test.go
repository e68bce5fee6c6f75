package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// mesh up prints the console's address and serves it until Ctrl-C;
// --console off serves none.
func TestUpServesConsole(t *testing.T) {
	listen := bustest.FreeAddr(t)
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out}
	up := &upCmd{Listen: listen, Data: t.TempDir(), Console: "127.0.0.1:0", runFlags: runFlags{Replicas: 1}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- up.run(ctx, a) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})
	out.waitFor(t, "Ctrl-C stops it")
	m := regexp.MustCompile(`Console: (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no console address printed:\n%s", out)
	}
	for _, page := range []string{"", "scheduler", "locks", "cache", "events"} {
		body, err := httpGet(m[1] + page)
		if err != nil || !strings.Contains(body, "mesh console") {
			t.Fatalf("GET %s: %v\n%.500s", m[1]+page, err, body)
		}
	}
	cancel()
	stopped = true
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("up returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("up did not stop")
	}
	if _, err := httpGet(m[1]); err == nil {
		t.Fatal("the console still answers after mesh up stopped")
	}

	out2 := &syncBuffer{}
	a2 := &app{log: zerolog.Nop(), out: out2}
	off := &upCmd{Listen: bustest.FreeAddr(t), Data: t.TempDir(), Console: "off", Services: []string{"sys"}, runFlags: runFlags{Replicas: 1}}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- off.run(ctx2, a2) }()
	out2.waitFor(t, "Ctrl-C stops it")
	cancel2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out2.String(), "Console:") {
		t.Fatalf("--console off printed a console:\n%s", out2)
	}
}

// mesh console --nats URL serves the console of a running mesh until
// Ctrl-C.
func TestConsoleCommand(t *testing.T) {
	srv := bustest.RunServer(t)
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{NATS: srv.URL(), Timeout: 5 * time.Second}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&consoleCmd{Listen: "127.0.0.1:0", CacheReplicas: 2}).run(ctx, a) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mesh console returned %v", err)
		}
	}()
	out.waitFor(t, "Ctrl-C stops it")
	m := regexp.MustCompile(`Mesh console: (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no address printed:\n%s", out)
	}
	body, err := httpGet(m[1])
	if err != nil || !strings.Contains(body, "No mesh service answers") {
		t.Fatalf("GET %s: %v\n%.500s", m[1], err, body)
	}
	if err := (&consoleCmd{Listen: "0.0.0.0:0"}).run(ctx, a); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("mesh console on 0.0.0.0: %v", err)
	}
}

// mesh console --allow-remote listens on a non-loopback address (as in a
// container whose port is published on the host's loopback), and still
// answers only requests whose Host is a loopback address.
func TestConsoleAllowRemote(t *testing.T) {
	srv := bustest.RunServer(t)
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{NATS: srv.URL(), Timeout: 5 * time.Second}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&consoleCmd{Listen: "0.0.0.0:0", AllowRemote: true, CacheReplicas: 2}).run(ctx, a)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mesh console returned %v", err)
		}
	}()
	out.waitFor(t, "Ctrl-C stops it")
	m := regexp.MustCompile(`Mesh console: http://[^ ]*:(\d+)/`).FindStringSubmatch(out.String())
	if m == nil || !strings.Contains(out.String(), "published on 127.0.0.1") {
		t.Fatalf("no address or no warning printed:\n%s", out)
	}
	base := "http://127.0.0.1:" + m[1] + "/"
	if body, err := httpGet(base); err != nil || !strings.Contains(body, "No mesh service answers") {
		t.Fatalf("GET %s: %v\n%.500s", base, err, body)
	}
	req, _ := http.NewRequest(http.MethodGet, base, nil)
	req.Host = "console.example:" + m[1]
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a foreign Host on a remote-allowed console: %s, want 403", resp.Status)
	}
}

// mesh up --auth serves the console as the console user of the compose
// stack: its pages read the mesh, JetStream's figures and the stored
// events with that user's permissions, none refused.
func TestUpAuthConsole(t *testing.T) {
	listen := bustest.FreeAddr(t)
	dir := t.TempDir()
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{Timeout: 5 * time.Second}}
	up := &upCmd{Listen: listen, Data: filepath.Join(dir, "data"), Sync: "default", Auth: true, AuthDir: filepath.Join(dir, "auth"), Console: "127.0.0.1:0",
		runFlags: runFlags{Replicas: 1, CacheNodes: 1, CacheReplicas: 1, Node: "auth-console"}}
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
	m := regexp.MustCompile(`Console: (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no console address printed:\n%s", out)
	}
	// A task to look at, submitted as the client user.
	pw, err := os.ReadFile(filepath.Join(dir, "auth", "client.password"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	client, err := bus.Connect(cctx, bus.Options{URL: "nats://" + listen, User: "client", Password: strings.TrimSpace(string(pw)), InboxPrefix: "_INBOX_client"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	id, err := scheduler.NewClient(client).Submit(cctx, scheduler.SubmitRequest{Queue: "authq", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	for page, wants := range map[string][]string{
		"":                      {"<b>scheduler</b>", "MESH_EVENTS", " streams · "},
		"scheduler":             {`data-queue="authq"`},
		"scheduler/tasks/" + id: {`id="task-state">queued<`, "task.submitted"},
		"locks":                 {"No lock is held"},
		"cache":                 {"auth-console"},
		"scheduler/dead":        {"mesh console"},
	} {
		body, err := httpGet(m[1] + page)
		if err != nil {
			t.Fatalf("GET /%s: %v", page, err)
		}
		for _, w := range wants {
			if !strings.Contains(body, w) {
				t.Fatalf("GET /%s lacks %q:\n%s", page, w, body)
			}
		}
		for _, refused := range []string{"could not be read", "did not answer", "permission", `class="bad">`} {
			if strings.Contains(body, refused) {
				t.Fatalf("GET /%s shows a refusal (%q):\n%s", page, refused, body)
			}
		}
	}
}
