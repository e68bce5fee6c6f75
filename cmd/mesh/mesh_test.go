package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/pkg/ring/membership"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/sys"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a command
// and the reads of a test.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{} // closed at the next write
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.written != nil {
		close(s.written)
		s.written = nil
	}
	return s.b.Write(p)
}

// waitFor waits until the buffer holds text.
func (s *syncBuffer) waitFor(t *testing.T, text string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		s.mu.Lock()
		if strings.Contains(s.b.String(), text) {
			s.mu.Unlock()
			return
		}
		if s.written == nil {
			s.written = make(chan struct{})
		}
		ch := s.written
		s.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("never printed %q; printed:\n%s", text, s.String())
		}
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// mesh up serves every service on its embedded server, mesh status sees
// them, and cancelling (Ctrl-C) stops everything cleanly. With
// --store-task-events the event stream stores the task events too.
func TestUpStatusAndStop(t *testing.T) {
	listen, metrics := bustest.FreeAddr(t), bustest.FreeAddr(t)
	data := filepath.Join(t.TempDir(), "data")
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{Timeout: 5 * time.Second}}
	up := &upCmd{Listen: listen, Data: data, Sync: "always", runFlags: runFlags{Replicas: 1, Metrics: metrics, Pprof: true, Node: "test-node", StoreTaskEvents: true}}
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
	out.waitFor(t, "Ctrl-C stops it") // the tour is printed once every service runs
	if !strings.Contains(out.String(), "nats req mesh.sys.info") {
		t.Fatalf("up printed no tour:\n%s", out.String())
	}

	url := "nats://" + listen
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	nc, err := bus.Connect(cctx, bus.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	info, err := bus.Request[sys.InfoRequest, sys.InfoReply](cctx, nc, sys.SubjectInfo, sys.InfoRequest{})
	if err != nil || info.Node != "test-node" || info.Server.Name != "test-node" {
		t.Fatalf("info = %+v, %v", info, err)
	}

	statusOut := &syncBuffer{}
	sa := &app{log: zerolog.Nop(), out: statusOut, conn: connFlags{NATS: url, Timeout: 5 * time.Second}}
	if err := (&statusCmd{JSON: true}).Run(sa); err != nil {
		t.Fatal(err)
	}
	var st status
	if err := json.Unmarshal([]byte(statusOut.String()), &st); err != nil {
		t.Fatalf("%v: %s", err, statusOut)
	}
	services := map[string]serviceStatus{}
	for _, s := range st.Services {
		services[s.Name] = s
	}
	if len(services) != len(node.Names()) || services["sys"].Instances != 1 || services["sys"].Requests < 1 || services["lock"].Versions[0] != lock.Version {
		t.Fatalf("status services = %+v", st.Services)
	}
	streams := map[string]string{}
	for _, s := range st.Streams {
		streams[s.Name] = s.Kind
		if s.Name == bus.EventStream && !slices.Contains(s.Subjects, bus.TaskEventSubjects) {
			t.Fatalf("%s with --store-task-events stores %v", s.Name, s.Subjects)
		}
	}
	if streams[bus.EventStream] != "stream" || streams[lock.Bucket] != "kv" {
		t.Fatalf("status streams = %+v", st.Streams)
	}

	resp, err := httpGet("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp, `mesh_requests_total{endpoint="info",service="sys",status="200"}`) || !strings.Contains(resp, "go_goroutines") {
		t.Fatalf("metrics lack request counts or runtime metrics:\n%.2000s", resp)
	}
	if resp, err := httpGet("http://" + metrics + "/debug/pprof/goroutine?debug=1"); err != nil || !strings.Contains(resp, "goroutine profile") {
		t.Fatalf("--pprof: %v\n%.500s", err, resp)
	}

	cancel() // Ctrl-C
	stopped = true
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("up returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("up did not stop")
	}
	if _, err := os.Stat(filepath.Join(data, "jetstream")); err != nil {
		t.Fatalf("no JetStream store in %s: %v", data, err)
	}
}

// mesh up --cache-nodes 3 is up once the nodes see each other: the first
// sets already have their replica.
func TestUpCacheNodesConverged(t *testing.T) {
	listen := bustest.FreeAddr(t)
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out}
	up := &upCmd{Listen: listen, Data: t.TempDir(), Services: []string{"cache"}, runFlags: runFlags{Replicas: 1, CacheNodes: 3, CacheReplicas: 2, CacheMaxBytes: "64MiB"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- up.run(ctx, a) }()
	t.Cleanup(func() { cancel(); <-done })
	out.waitFor(t, "Ctrl-C stops it")
	nc := bustest.Connect(t, "nats://"+listen)
	for i := range 12 {
		m, err := nc.Request(cache.SubjectSet, fmt.Appendf(nil, `{"key":"k%d","value":"v"}`, i), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != `{"copies":2}` {
			t.Fatalf("set k%d: %s, want 2 copies", i, m.Data)
		}
	}
}

// A second mesh up on the data folder of a running one is refused, with
// the folder, the process holding it and --data named; the first keeps
// serving.
func TestUpDataInUse(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	listen := bustest.FreeAddr(t)
	out := &syncBuffer{}
	first := &upCmd{Listen: listen, Data: data, Services: []string{"lock"}, runFlags: runFlags{Replicas: 1}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.run(ctx, &app{log: zerolog.Nop(), out: out}) }()
	t.Cleanup(func() { cancel(); <-done })
	out.waitFor(t, "Ctrl-C stops it")

	second := &upCmd{Listen: bustest.FreeAddr(t), Data: data, Services: []string{"lock"}, runFlags: runFlags{Replicas: 1}}
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	err := second.run(sctx, &app{log: zerolog.Nop(), out: &syncBuffer{}})
	if err == nil {
		t.Fatal("a second mesh up started on the same data folder")
	}
	for _, want := range []string{data, fmt.Sprintf("process %d", os.Getpid()), "--data"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	nc := bustest.Connect(t, "nats://"+listen)
	lease, err := lock.NewClient(nc).TryAcquire(sctx, "still-serving", lock.Options{TTL: 5 * time.Second})
	if err != nil {
		t.Fatalf("the first mesh after the refusal: %v", err)
	}
	if err := lease.Release(sctx); err != nil {
		t.Fatal(err)
	}
}

func TestUpPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := &app{log: zerolog.Nop(), out: &syncBuffer{}}
	up := &upCmd{Listen: l.Addr().String(), Data: t.TempDir(), runFlags: runFlags{Replicas: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = up.run(ctx, a)
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("err = %v, want an error naming the address", err)
	}
}

// A command line that does not parse exits 2 with the error and the
// command's usage on stderr, nothing on stdout; --help goes to stdout.
func TestUsageError(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"lock", "release", "reports", "--token", "3"}, 2, "", "Usage: mesh lock release <name> <token>"},
		{[]string{"nope"}, 2, "", "unexpected argument nope"},
		{[]string{"lock", "--help"}, 0, "Usage: mesh lock <command>", ""},
	} {
		var stdout, stderr bytes.Buffer
		code := func() (code int) {
			type exited int
			defer func() {
				if e, ok := recover().(exited); ok {
					code = int(e)
				}
			}()
			var c cli
			parse(newParser(&c, &stdout, &stderr, func(c int) { panic(exited(c)) }), tc.args)
			return -1 // parsed: no exit
		}()
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d", tc.args, code, tc.code)
		}
		if tc.out == "" && stdout.Len() > 0 || !strings.Contains(stdout.String(), tc.out) {
			t.Errorf("%q: stdout %q, want %q", tc.args, stdout.String(), tc.out)
		}
		if tc.err == "" && stderr.Len() > 0 || !strings.Contains(stderr.String(), tc.err) {
			t.Errorf("%q: stderr %q, want %q", tc.args, stderr.String(), tc.err)
		}
	}
}

// --store-task-events is off unless given, for up and for serve.
func TestStoreTaskEventsFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"up"}, false},
		{[]string{"up", "--store-task-events"}, true},
		{[]string{"serve", "scheduler"}, false},
		{[]string{"serve", "lock", "--store-task-events"}, true},
	} {
		var c cli
		var stdout, stderr bytes.Buffer
		parse(newParser(&c, &stdout, &stderr, func(code int) { t.Fatalf("%q: exit %d: %s", tc.args, code, stderr.String()) }), tc.args)
		if got := c.Up.StoreTaskEvents || c.Serve.StoreTaskEvents; got != tc.want {
			t.Errorf("%q: store task events %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestServeUnknownService(t *testing.T) {
	a := &app{log: zerolog.Nop(), out: &syncBuffer{}}
	up := &upCmd{Listen: bustest.FreeAddr(t), Data: t.TempDir(), Services: []string{"nope"}, runFlags: runFlags{Replicas: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := up.run(ctx, a); err == nil || !strings.Contains(err.Error(), `unknown service "nope"`) {
		t.Fatalf("err = %v", err)
	}
}

// A command that finds no NATS server says how to get one.
func TestNoServerHint(t *testing.T) {
	a := &app{conn: connFlags{NATS: "nats://" + bustest.FreeAddr(t), Timeout: 5 * time.Second}, log: zerolog.Nop(), out: &syncBuffer{}}
	_, err := a.connect("test")
	if !errors.Is(err, nats.ErrNoServers) || !strings.Contains(err.Error(), "mesh up") {
		t.Fatalf("err = %v, want no servers with a hint at mesh up", err)
	}
}

// Profiles are served only when asked for, and only beside the metrics.
func TestPprofFlag(t *testing.T) {
	a := &app{log: zerolog.Nop(), out: &syncBuffer{}}
	up := &upCmd{Listen: bustest.FreeAddr(t), Data: t.TempDir(), runFlags: runFlags{Replicas: 1, Pprof: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := up.run(ctx, a); err == nil || !strings.Contains(err.Error(), "--pprof") {
		t.Fatalf("--pprof without --metrics: err = %v", err)
	}
	addr := bustest.FreeAddr(t)
	m, err := startMetrics(addr, false, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	if _, err := httpGet("http://" + addr + "/metrics"); err != nil {
		t.Fatal(err)
	}
	if _, err := httpGet("http://" + addr + "/debug/pprof/"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("profiles served without --pprof: %v", err)
	}
}

// Requests are counted by endpoint and status, and timed by endpoint.
func TestMetricsCounts(t *testing.T) {
	addr := bustest.FreeAddr(t)
	m, err := startMetrics(addr, false, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	m.ObserveRequest("svc", "ep", time.Millisecond, nil)
	m.ObserveRequest("svc", "ep", time.Millisecond, nil)
	m.ObserveRequest("svc", "ep", time.Millisecond, bus.ErrInvalid)
	m.ObserveRequest("svc", "other", time.Millisecond, nil)
	resp, err := httpGet("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`mesh_requests_total{endpoint="ep",service="svc",status="200"} 2`,
		`mesh_requests_total{endpoint="ep",service="svc",status="400"} 1`,
		`mesh_requests_total{endpoint="other",service="svc",status="200"} 1`,
		`mesh_request_duration_seconds_count{endpoint="ep",service="svc"} 3`,
	} {
		if !strings.Contains(resp, want) {
			t.Fatalf("metrics lack %s:\n%.3000s", want, resp)
		}
	}
}

func httpGet(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestRing(t *testing.T) {
	s := bustest.RunServer(t)
	for i, w := range []float64{1, 3} {
		a, err := membership.NewAnnouncer(s.Connect(), membership.AnnouncerConfig{Service: "cache", ID: fmt.Sprintf("n%d", i), Weight: w, Version: "1.2.3",
			IdentitySubject: cache.NodeSubject(fmt.Sprintf("n%d", i), cache.OpIdentity)})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer a.Stop(context.Background())
	}
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{NATS: s.URL(), Timeout: 5 * time.Second}}
	if err := (&ringCmd{Service: "cache", JSON: true}).Run(a); err != nil {
		t.Fatal(err)
	}
	var st ringStatus
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(st.Members) != 2 || st.Members[0].Partitions+st.Members[1].Partitions != st.Partitions || st.Members[1].Version != "1.2.3" {
		t.Fatalf("ring = %+v", st)
	}
	if share := st.Members[1].Share; share < 0.7 || share > 0.8 { // weight 3 of 4
		t.Fatalf("weight-3 member's share = %.3f, want about 0.75", share)
	}
	out2 := &syncBuffer{}
	a.out = out2
	if err := (&ringCmd{Service: "cache"}).Run(a); err != nil || !strings.Contains(out2.String(), "n1") {
		t.Fatalf("table: %v\n%s", err, out2)
	}
}

func TestLockCommands(t *testing.T) {
	s := bustest.RunServer(t)
	srv, err := lock.New(s.Connect(), lock.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())
	out := &syncBuffer{}
	a := &app{log: zerolog.Nop(), out: out, conn: connFlags{NATS: s.URL(), Timeout: 5 * time.Second}}

	if err := (&lockAcquireCmd{Name: "nightly", JSON: true, lockFlags: lockFlags{TTL: 30 * time.Second, Owner: "ci"}}).Run(a); err != nil {
		t.Fatal(err)
	}
	var got lock.AcquireReply
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil || got.Token == 0 {
		t.Fatalf("acquire printed %q: %v", out, err)
	}
	if err := (&lockAcquireCmd{Name: "nightly", lockFlags: lockFlags{TTL: 30 * time.Second}}).Run(a); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("second acquire: %v", err)
	}
	out2 := &syncBuffer{}
	a.out = out2
	if err := (&lockInspectCmd{Name: "nightly"}).Run(a); err != nil || !strings.Contains(out2.String(), "ci") {
		t.Fatalf("inspect: %v\n%s", err, out2)
	}
	if err := (&lockReleaseCmd{Name: "nightly", Token: got.Token}).Run(a); err != nil {
		t.Fatal(err)
	}

	// run: the command sees its token, its exit status comes back, and the
	// lock is free afterwards.
	out3 := &syncBuffer{}
	a.out = out3
	run := &lockRunCmd{Name: "nightly", Wait: 5 * time.Second, lockFlags: lockFlags{TTL: 5 * time.Second}, Command: []string{"--", "sh", "-c", `echo "token=$MESH_LOCK_TOKEN"; exit 3`}}
	err = run.Run(a)
	var code exitCode
	if !errors.As(err, &code) || code != 3 {
		t.Fatalf("run = %v, want exit status 3", err)
	}
	if !strings.Contains(out3.String(), "token=") || strings.Contains(out3.String(), "token=\n") {
		t.Fatalf("the command did not see its token: %q", out3)
	}
	info, err := lock.NewClient(s.Connect()).Inspect(context.Background(), "nightly")
	if err != nil || info.Held {
		t.Fatalf("after run: %+v, %v", info, err)
	}
}

// mesh serve started before JetStream is ready (a cluster still electing)
// retries, and serves once JetStream answers.
func TestServeWaitsForJetStream(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

	logs := &syncBuffer{}
	a := &app{log: zerolog.New(logs), out: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := bus.Options{URL: ns.ClientURL(), Retry: true}
	done := make(chan error, 1)
	go func() { done <- a.run(ctx, opts, runFlags{Replicas: 1}, []string{"lock"}, nil) }()
	logs.waitFor(t, "retrying") // no JetStream: the start fails and is retried

	if err := ns.EnableJetStream(&server.JetStreamConfig{StoreDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	logs.waitFor(t, `"service":"lock","message":"service started"`)
	nc := bustest.Connect(t, ns.ClientURL())
	lease, err := lock.NewClient(nc).TryAcquire(ctx, "after-retry", lock.Options{TTL: 5 * time.Second})
	if err != nil {
		t.Fatalf("acquire once serving: %v", err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
