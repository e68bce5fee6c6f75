package console_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/internal/console"
	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// mesh is a whole mesh in the test's process with a console over it.
type mesh struct {
	t       *testing.T
	url     string // NATS
	nc      *nats.Conn
	console *console.Console
	web     *httptest.Server
	client  *http.Client
	tasks   *scheduler.Client
	locks   *lock.Client
}

// startMesh starts NATS, every service, and a console served by an
// httptest server.
func startMesh(t *testing.T, cfg console.Config) *mesh {
	t.Helper()
	return startMeshAfter(t, cfg, node.Env{}, nil)
}

// startMeshAfter is startMesh with the services' env (its logger and
// names are the test's), that runs before (if not nil) once the services
// run, before the console starts.
func startMeshAfter(t *testing.T, cfg console.Config, env node.Env, before func(nc *nats.Conn)) *mesh {
	t.Helper()
	srv := bustest.RunServer(t)
	nc := srv.Connect(nats.Name("console test"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env.Logger, env.Node, env.MeshVersion = zerolog.Nop(), "test", "test"
	n, err := node.Start(ctx, nc, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		if err := n.Stop(sctx); err != nil {
			t.Error(err)
		}
	})
	if before != nil {
		before(nc)
	}
	c, err := console.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(c.Handler())
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := c.Stop(sctx); err != nil { // ends the live streams first
			t.Error(err)
		}
		web.Close()
	})
	return &mesh{
		t: t, url: srv.URL(), nc: nc, console: c, web: web,
		client: noRedirects(),
		tasks:  scheduler.NewClient(nc), locks: lock.NewClient(nc),
	}
}

// noRedirects is a client that shows redirects instead of following them.
func noRedirects() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// get fetches a page and returns its body, failing unless it is 200.
func (m *mesh) get(path string) string {
	m.t.Helper()
	resp, err := m.client.Get(m.web.URL + path)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		m.t.Fatalf("GET %s: %d\n%s", path, resp.StatusCode, b)
	}
	return string(b)
}

// post submits a form as the console's own page would, and returns the
// redirect's location.
func (m *mesh) post(path string, form url.Values) string {
	m.t.Helper()
	req, _ := http.NewRequest("POST", m.web.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", m.web.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := m.client.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		b, _ := io.ReadAll(resp.Body)
		m.t.Fatalf("POST %s: %d, want 303\n%s", path, resp.StatusCode, b)
	}
	loc, _ := url.QueryUnescape(resp.Header.Get("Location"))
	return loc
}

func mustContain(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Fatalf("%s lacks %q:\n%s", what, w, body)
		}
	}
}

// eventually polls cond until it holds, or fails after a generous bound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestOverview(t *testing.T) {
	m := startMesh(t, console.Config{SampleEvery: 50 * time.Millisecond})
	body := m.get("/")
	mustContain(t, "overview", body, "<b>cache</b>", "<b>lock</b>", "<b>scheduler</b>", "<b>sys</b>", "MESH_TASKS", "MESH_LOCKS", "MESH_EVENTS", "JetStream", "Requests per second", "mesh.scheduler.submit")
	// The sampler draws the request rates once it has two samples with
	// requests between them.
	c := ctx(t)
	eventually(t, "a chart of the request rates", func() bool {
		if _, err := m.locks.Inspect(c, "x"); err != nil {
			t.Fatal(err)
		}
		return strings.Contains(m.get("/"), "<polyline")
	})
	mustContain(t, "the lock service's rate", m.get("/"), `lock <b>`)
}

func TestSchedulerPageAndActions(t *testing.T) {
	m := startMesh(t, console.Config{})
	c := ctx(t)
	// A form submit shows the new task's page.
	loc := m.post("/scheduler/submit", url.Values{"queue": {"emails"}, "type": {"welcome"}, "payload": {"ann"}, "back": {"/scheduler"}})
	id, ok := strings.CutPrefix(loc, "/scheduler/tasks/")
	id, _, _ = strings.Cut(id, "?")
	if !ok || id == "" {
		t.Fatalf("submit went to %q", loc)
	}
	info, err := m.tasks.Status(c, id)
	if err != nil || info.Queue != "emails" || info.Type != "welcome" || info.State != "queued" {
		t.Fatalf("submitted task = %+v, %v", info, err)
	}
	mustContain(t, "task page", m.get("/scheduler/tasks/"+id), id, `s-queued`, "welcome", "emails", "created", `action="/scheduler/tasks/`+id+`/cancel"`)
	mustContain(t, "the task search", func() string {
		resp, err := m.client.Get(m.web.URL + "/scheduler/tasks/?id=" + id)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header.Get("Location")
	}(), "/scheduler/tasks/"+id)

	// The scheduler page shows the queue and the task; filters work.
	body := m.get("/scheduler")
	mustContain(t, "scheduler page", body, `data-queue="emails"`, `data-task="`+id+`"`, "/scheduler/queues/emails/pause", "Queue depth")
	if b := m.get("/scheduler?state=succeeded"); strings.Contains(b, `data-task="`+id+`"`) {
		t.Fatal("a queued task is listed among the succeeded")
	}
	mustContain(t, "bad state filter", m.get("/scheduler?state=bogus"), "no state")

	// Pause and resume act on the queue.
	loc = m.post("/scheduler/queues/emails/pause", url.Values{"back": {"/scheduler?queue=emails"}})
	mustContain(t, "pause redirect", loc, "/scheduler?queue=emails&msg=queue emails: paused")
	qs, err := m.tasks.Queues(c)
	if err != nil || len(qs) != 1 || !qs[0].Paused {
		t.Fatalf("after pause: %+v, %v", qs, err)
	}
	mustContain(t, "paused page", m.get("/scheduler"), "paused", "/scheduler/queues/emails/resume")
	m.post("/scheduler/queues/emails/resume", url.Values{"back": {"/scheduler"}})
	eventually(t, "the queue resumes", func() bool { // a resume takes effect 20 ms later
		qs, err = m.tasks.Queues(c)
		return err == nil && !qs[0].Paused
	})

	// Cancel cancels.
	loc = m.post("/scheduler/tasks/"+id+"/cancel", url.Values{"back": {"/scheduler/tasks/" + id}})
	mustContain(t, "cancel redirect", loc, "cancelled task "+id+" (it was queued)")
	if info, err = m.tasks.Status(c, id); err != nil || info.State != "cancelled" {
		t.Fatalf("after cancel: %+v, %v", info, err)
	}
	body = m.get("/scheduler/tasks/" + id)
	mustContain(t, "cancelled task page", body, "s-cancelled")
	if strings.Contains(body, "/cancel") {
		t.Fatal("a cancelled task still offers Cancel")
	}

	// Refusals show the service's status, code and message, and change nothing.
	loc = m.post("/scheduler/tasks/"+id+"/cancel", url.Values{"back": {"/scheduler/tasks/" + id}})
	mustContain(t, "second cancel", loc, "err=409 task_finished")
	loc = m.post("/scheduler/queues/nosuch/pause", url.Values{"back": {"/scheduler"}})
	mustContain(t, "pause of an unknown queue", loc, "err=404 queue_not_found")
	mustContain(t, "the refusal shown", m.get(strings.Replace(loc, " ", "+", -1)), "Refused:", "404 queue_not_found")
	loc = m.post("/scheduler/submit", url.Values{"queue": {"bad queue!"}, "type": {"x"}, "back": {"/scheduler"}})
	mustContain(t, "submit to a bad queue", loc, "err=400 invalid_queue")
	loc = m.post("/scheduler/submit", url.Values{"queue": {"emails"}, "type": {"x"}, "delay": {"soon"}, "back": {"/scheduler"}})
	mustContain(t, "submit with a bad delay", loc, "err=400 invalid")
	mustContain(t, "unknown task", m.get("/scheduler/tasks/nosuchtask"), "404 task_not_found")

	// Periodic schedules: add, list, remove; a bad one is refused.
	loc = m.post("/scheduler/schedules", url.Values{"name": {"digest"}, "queue": {"emails"}, "type": {"digest"}, "every": {"1h"}, "back": {"/scheduler"}})
	mustContain(t, "add a schedule", loc, "msg=schedule digest added")
	mustContain(t, "the schedule listed", m.get("/scheduler"), `data-schedule="digest"`, "every 1h", "/scheduler/schedules/digest/remove")
	// Its next run, as the service answers it: when, and in how long.
	ss, err := m.tasks.ListSchedules(c)
	if err != nil || len(ss) != 1 || ss[0].NextRunAt.IsZero() {
		t.Fatalf("schedules: %+v, %v", ss, err)
	}
	next := ss[0].NextRunAt.UTC()
	mustContain(t, "the schedule's next run", m.get("/scheduler"), "next run",
		`<span data-next-run="`+next.Format(time.RFC3339Nano)+`">`+next.Format("2006-01-02 15:04:05.000")+`</span> <span class="muted">(in `)
	loc = m.post("/scheduler/schedules", url.Values{"name": {"bad"}, "queue": {"emails"}, "type": {"x"}, "cron": {"not a cron"}, "back": {"/scheduler"}})
	mustContain(t, "a bad schedule", loc, "err=400 invalid_schedule")
	loc = m.post("/scheduler/schedules/digest/remove", url.Values{"back": {"/scheduler"}})
	mustContain(t, "remove the schedule", loc, "msg=schedule digest removed")
	if ss, err := m.tasks.ListSchedules(c); err != nil || len(ss) != 0 {
		t.Fatalf("schedules after remove: %+v, %v", ss, err)
	}
	loc = m.post("/scheduler/schedules/digest/remove", url.Values{"back": {"/scheduler"}})
	mustContain(t, "remove it again", loc, "err=404 schedule_not_found")
	if qs, err = m.tasks.Queues(c); err != nil || len(qs) != 1 {
		t.Fatalf("refused actions made queues: %+v, %v", qs, err)
	}
}

func TestTaskGoesLive(t *testing.T) {
	m := startMesh(t, console.Config{Refresh: time.Hour}) // only events refresh the page
	c := ctx(t)
	id, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "jobs", Type: "echo", Payload: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	frags := m.live(t, "/live?page=task&id="+id)
	f := waitFragment(t, frags, "s-queued")
	mustContain(t, "the live part's cancel form", f, `name="back" value="/scheduler/tasks/`+id+`"`) // returns to the page, not to its stream

	release := make(chan struct{})
	w, err := scheduler.NewWorker(m.nc, scheduler.WorkerConfig{Queues: map[string]int{"jobs": 1}})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("echo", func(ctx context.Context, tk *scheduler.Task) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	if err := w.Start(c); err != nil {
		t.Fatal(err)
	}
	defer w.Stop(context.Background())
	waitFragment(t, frags, "s-running")
	close(release)
	f = waitFragment(t, frags, "s-succeeded")
	mustContain(t, "succeeded fragment", f, "task.succeeded", "finished")
}

// live opens a live stream and returns its fragments.
func (m *mesh) live(t *testing.T, path string) <-chan string {
	t.Helper()
	rctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(rctx, "GET", m.web.URL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("live %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan string, 64)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		defer resp.Body.Close()
		r := bufio.NewReader(resp.Body)
		var name string
		var data strings.Builder
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				close(out)
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				data.WriteString(line[len("data: "):] + "\n")
			case line == "":
				if name == "fragment" || name == "mesh" {
					select {
					case out <- data.String():
					case <-rctx.Done():
						close(out)
						return
					}
				}
				name = ""
				data.Reset()
			}
		}
	}()
	return out
}

func waitFragment(t *testing.T, frags <-chan string, want string) string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case f, ok := <-frags:
			if !ok {
				t.Fatalf("the stream ended before %q", want)
			}
			if strings.Contains(f, want) {
				return f
			}
		case <-deadline:
			t.Fatalf("no fragment with %q", want)
		}
	}
}

func TestLocksPage(t *testing.T) {
	m := startMesh(t, console.Config{Refresh: time.Hour})
	c := ctx(t)
	frags := m.live(t, "/live?page=locks")
	waitFragment(t, frags, "No lock is held")
	lease, err := m.locks.TryAcquire(c, "reports", lock.Options{TTL: 30 * time.Second, Owner: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	f := waitFragment(t, frags, "alice")
	mustContain(t, "held lock", f, `data-lock="reports"`, "data-expires=", ">"+itoa(lease.Token())+"<")

	// A waiter shows in line, then holds the lock once it is released.
	got := make(chan *lock.Lease, 1)
	go func() {
		l, err := m.locks.Acquire(c, "reports", lock.Options{TTL: 30 * time.Second, Owner: "bob"})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	eventually(t, "bob waits", func() bool {
		in, err := m.locks.Inspect(c, "reports")
		return err == nil && len(in.Waiters) == 1
	})
	eventually(t, "the locks page shows bob waiting", func() bool { // the details are kept a second
		b := m.get("/locks")
		return strings.Contains(b, "alice") && strings.Contains(b, `class="waiter">bob`)
	})
	if err := lease.Release(c); err != nil {
		t.Fatal(err)
	}
	bob := <-got
	if bob == nil {
		t.FailNow()
	}
	defer bob.Release(context.Background())
	f = waitFragment(t, frags, `class="holder">bob`)
	mustContain(t, "bob's grant", f, "lock.acquired", ">"+itoa(bob.Token())+"<")
	eventually(t, "the prefix filter", func() bool { return strings.Contains(m.get("/locks?prefix=rep"), `class="holder">bob`) })
	if b := m.get("/locks?prefix=zzz"); strings.Contains(b, `data-lock="reports"`) {
		t.Fatal("the prefix filter shows other locks")
	}
}

func TestCachePage(t *testing.T) {
	m := startMesh(t, console.Config{})
	c := ctx(t)
	cc, err := cache.NewClient(m.nc, cache.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Start(c); err != nil {
		t.Fatal(err)
	}
	defer cc.Close(context.Background())
	if err := cc.Set(c, "user:42", []byte("Ada <b>"), time.Minute); err != nil {
		t.Fatal(err)
	}
	owner := cc.Ring().Owner("user:42")
	eventually(t, "the console sees the ring", func() bool { return strings.Contains(m.get("/cache"), "<b>"+owner+"</b>") })
	body := m.get("/cache?key=user:42")
	mustContain(t, "key lookup", body, "Key <code>user:42</code>", "<b>"+owner+"</b>", "Ada &lt;b&gt;", "7 bytes", "Hit ratio", `id="nodes"`)
	mustContain(t, "a miss", m.get("/cache?key=nope"), "not cached (a miss)")
}

func TestEventsStream(t *testing.T) {
	m := startMesh(t, console.Config{})
	c := ctx(t)
	mustContain(t, "events page", m.get("/events?filter=lock.*"), `data-stream="/events/stream?filter=lock.%2A"`)
	evs := m.live(t, "/events/stream?filter=lock.>")
	if _, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "q", Type: "t"}); err != nil {
		t.Fatal(err)
	}
	l, err := m.locks.TryAcquire(c, "stream-lock", lock.Options{Owner: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	ev := waitFragment(t, evs, "stream-lock")
	mustContain(t, "lock event", ev, `"type":"lock.acquired"`, "carol")
	if strings.Contains(ev, "task.") {
		t.Fatal("a task event passed the filter lock.>")
	}
	// A later stream gets the recent events first.
	again := m.live(t, "/events/stream?filter=carol")
	waitFragment(t, again, "stream-lock")
	resp, err := m.client.Get(m.web.URL + "/events/stream?filter=lock.>.x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("a bad filter: %d", resp.StatusCode)
	}
}

func TestGuards(t *testing.T) {
	m := startMesh(t, console.Config{ReadOnly: true})
	c := ctx(t)
	if _, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "t"}); err != nil {
		t.Fatal(err)
	}
	body := m.get("/scheduler")
	mustContain(t, "read-only page", body, "read-only", `data-queue="emails"`)
	if strings.Contains(body, "/pause") || strings.Contains(body, "Submit a task") {
		t.Fatal("a read-only console offers actions")
	}
	loc := m.post("/scheduler/queues/emails/pause", url.Values{"back": {"/scheduler"}})
	mustContain(t, "read-only refusal", loc, "err=403 read_only")
	if qs, err := m.tasks.Queues(c); err != nil || qs[0].Paused {
		t.Fatalf("a read-only console paused: %+v, %v", qs, err)
	}

	// Another site's page cannot act through the user's browser, nor read
	// the console through a DNS name of its own.
	m2 := startMesh(t, console.Config{})
	if _, err := m2.tasks.Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "t"}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []map[string]string{{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}} {
		req, _ := http.NewRequest("POST", m2.web.URL+"/scheduler/queues/emails/pause", nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := m2.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Fatalf("cross-site POST %v: %d", h, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("GET", m2.web.URL+"/", nil)
	req.Host = "evil.example"
	resp, err := m2.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("a foreign Host: %d", resp.StatusCode)
	}
	if qs, err := m2.tasks.Queues(c); err != nil || qs[0].Paused {
		t.Fatalf("a cross-site POST paused: %+v, %v", qs, err)
	}
}

func TestListenLoopbackOnly(t *testing.T) {
	srv := bustest.RunServer(t)
	nc := srv.Connect()
	_, err := console.Listen(ctx(t), nc, "0.0.0.0:0", console.Config{})
	if !errors.Is(err, console.ErrNotLoopback) {
		t.Fatalf("Listen on 0.0.0.0: %v", err)
	}
	s, err := console.Listen(ctx(t), nc, "127.0.0.1:0", console.Config{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(s.URL() + "static/console.css")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "--accent") {
		t.Fatalf("the embedded stylesheet: %d", resp.StatusCode)
	}
	if err := s.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
