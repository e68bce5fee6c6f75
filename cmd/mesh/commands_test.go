package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
)

// These tests run mesh's client commands as a user types them: the command
// line is parsed by mesh's own parser, the command runs against a mesh
// served in the test process, and what it printed on stdout and stderr and
// its exit status are checked. They check what users rely on (the content
// of the output, exit statuses, error codes), not the tables' layout.

// runMesh serves every service on a test server until the test ends and
// returns the server's URL.
func runMesh(t *testing.T) string {
	t.Helper()
	s := bustest.RunServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	a := &app{log: zerolog.Nop(), out: &syncBuffer{}}
	f := runFlags{Replicas: 1, CacheNodes: 1, CacheReplicas: 1, CacheMaxBytes: "16MiB", Node: "test"}
	go func() { done <- a.run(ctx, bus.Options{URL: s.URL()}, f, nil, func(*nats.Conn) { close(ready) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stopping the services: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("the services did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the services did not start in 30 s")
	}
	return s.URL()
}

// result is what one run of mesh printed, and its exit status.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("mesh %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// mesh runs the command line args against the NATS at url as main does,
// but in the test process.
func mesh(t *testing.T, url string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	r := result{args: args}
	r.code = func() (code int) {
		type exited int
		defer func() {
			if e, ok := recover().(exited); ok {
				code = int(e)
			}
		}()
		var c cli
		ctx := parse(newParser(&c, &stdout, &stderr, func(c int) { panic(exited(c)) }), append([]string{"--nats", url}, args...))
		return exitStatus(ctx.Run(&app{conn: c.Conn, log: zerolog.Nop(), out: &stdout}), &stderr)
	}()
	r.stdout, r.stderr = stdout.String(), stderr.String()
	return r
}

// ok runs mesh and fails the test unless it exits 0 printing every one of
// want on stdout and nothing on stderr.
func ok(t *testing.T, url string, args []string, want ...string) result {
	t.Helper()
	r := mesh(t, url, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%v", r)
	}
	for _, w := range want {
		if !strings.Contains(r.stdout, w) {
			t.Fatalf("stdout lacks %q: %v", w, r)
		}
	}
	return r
}

// fails runs mesh and fails the test unless it exits 1 with nothing on
// stdout and an error on stderr that starts with "mesh: " and holds every
// one of want.
func fails(t *testing.T, url string, args []string, want ...string) {
	t.Helper()
	r := mesh(t, url, args...)
	if r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "mesh: ") {
		t.Fatalf("want exit 1 and an error: %v", r)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Fatalf("stderr lacks %q: %v", w, r)
		}
	}
}

// jsonOf decodes a command's --json output.
func jsonOf[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("%v: %v", err, r)
	}
	return v
}

// taskInfo is mesh task status ID --json.
func taskInfo(t *testing.T, url, id string) scheduler.TaskInfo {
	t.Helper()
	return jsonOf[scheduler.TaskInfo](t, ok(t, url, []string{"task", "status", id, "--json"}))
}

// waitState polls mesh task status until the task is in state, for at
// most 30 s.
func waitState(t *testing.T, url, id, state string) scheduler.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info := taskInfo(t, url, id)
		if info.State == state {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s is %s after 30 s, want %s: %+v", id, info.State, state, info)
		}
		time.Sleep(20 * time.Millisecond) // polling the service
	}
}

func submit(t *testing.T, url string, args ...string) scheduler.SubmitReply {
	t.Helper()
	r := jsonOf[scheduler.SubmitReply](t, ok(t, url, append(append([]string{"task", "submit"}, args...), "--json")))
	if r.ID == "" {
		t.Fatalf("submit %q: no id", args)
	}
	return r
}

// startWorker runs mesh worker --queue queue --exec command until the test
// ends.
func startWorker(t *testing.T, url, queue, command string) {
	t.Helper()
	w := &workerCmd{Queue: []string{queue}, Exec: command, Concurrency: 2, Grace: 5 * time.Second, MaxResult: 16}
	a := &app{log: zerolog.Nop(), out: &syncBuffer{}, conn: connFlags{NATS: url, Timeout: 5 * time.Second}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.run(ctx, a) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mesh worker: %v", err)
		}
	})
}

// mesh worker --exec: exit 0 is success with the command's stdout (cut at
// --max-result) as the task's result, the payload on stdin and the task in
// the environment; exit 100 fails for good, with no retry; another status
// is retried, then the task is dead; the end of stderr is the last error.
func TestWorkerExec(t *testing.T) {
	url := runMesh(t)
	startWorker(t, url, "jobs", `
case $MESH_TASK_TYPE in
ok) printf '%s|%s|%s|' "$(cat)" "$MESH_TASK_QUEUE" "$MESH_TASK_ATTEMPT"; echo 0123456789abcdef ;;
final) echo "bad input" >&2; exit 100 ;;
*) echo "attempt $MESH_TASK_ATTEMPT broke" >&2; exit 3 ;;
esac`)

	done := submit(t, url, "jobs", "ok", "hello")
	info := waitState(t, url, done.ID, scheduler.StateSucceeded)
	if want := "hello|jobs|1|012"; info.Result != want {
		t.Fatalf("result %q, want %q: the command's stdout cut at --max-result 16 bytes", info.Result, want)
	}
	ok(t, url, []string{"task", "status", done.ID}, done.ID, scheduler.StateSucceeded, "hello|jobs|1|012")

	final := submit(t, url, "jobs", "final", "--max-retries", "3")
	info = waitState(t, url, final.ID, scheduler.StateDead)
	if info.Attempts != 1 || !strings.Contains(info.LastError, "exit status 100") || !strings.Contains(info.LastError, "bad input") {
		t.Fatalf("exit 100: %d attempts, last error %q; want 1 attempt, the status and stderr", info.Attempts, info.LastError)
	}

	retried := submit(t, url, "jobs", "flaky", "--max-retries", "1", "--backoff", "10ms")
	info = waitState(t, url, retried.ID, scheduler.StateDead)
	if info.Attempts != 2 || !strings.Contains(info.LastError, "exit status 3") || !strings.Contains(info.LastError, "attempt 2 broke") {
		t.Fatalf("exit 3: %d attempts, last error %q; want 2 attempts, the status and the last stderr", info.Attempts, info.LastError)
	}
	ok(t, url, []string{"task", "status", retried.ID}, scheduler.StateDead, "attempt 2 broke")

	// --wait prints the finished task.
	r := ok(t, url, []string{"--timeout", "30s", "task", "submit", "jobs", "ok", "waited", "--wait", "--json"})
	if got := jsonOf[scheduler.TaskInfo](t, r); got.State != scheduler.StateSucceeded || !strings.HasPrefix(got.Result, "waited|jobs|1|") {
		t.Fatalf("submit --wait: %+v", got)
	}
}

// mesh task: submit (now and delayed), status, cancel, list, queues, pause
// and resume, and their errors.
func TestTaskCommands(t *testing.T) {
	url := runMesh(t)

	r := ok(t, url, []string{"task", "submit", "mail", "send", "to=ann"}, "queued")
	id := strings.Fields(r.stdout)[0]
	info := taskInfo(t, url, id)
	if info.ID != id || info.Queue != "mail" || info.Type != "send" || info.State != scheduler.StateQueued {
		t.Fatalf("status of %s: %+v", id, info)
	}
	ok(t, url, []string{"task", "status", id}, id, "mail", "send", scheduler.StateQueued)

	before := time.Now()
	later := submit(t, url, "mail", "digest", "--delay", "1h")
	if later.State != scheduler.StateScheduled || later.RunAt.Before(before.Add(time.Hour)) {
		t.Fatalf("submit --delay 1h: %+v", later)
	}
	ok(t, url, []string{"task", "submit", "mail", "digest", "--at", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, "scheduled for")
	fails(t, url, []string{"task", "submit", "mail", "digest", "--at", "tomorrow"}, "--at")
	fails(t, url, []string{"task", "submit", "no queue!", "send"}, "invalid_queue")
	fails(t, url, []string{"task", "status", "nope"}, "task_not_found")

	ok(t, url, []string{"task", "cancel", later.ID}, "cancelled "+later.ID, "was "+scheduler.StateScheduled)
	if info := taskInfo(t, url, later.ID); info.State != scheduler.StateCancelled {
		t.Fatalf("after cancel: %+v", info)
	}
	fails(t, url, []string{"task", "cancel", later.ID}, "task_finished")
	fails(t, url, []string{"task", "cancel", "nope"}, "task_not_found")

	ok(t, url, []string{"task", "list", "mail"}, id, later.ID)
	list := jsonOf[scheduler.ListReply](t, ok(t, url, []string{"task", "list", "mail", "--state", scheduler.StateCancelled, "--json"}))
	if len(list.Tasks) != 1 || list.Tasks[0].ID != later.ID {
		t.Fatalf("list --state cancelled: %+v", list)
	}
	page := jsonOf[scheduler.ListReply](t, ok(t, url, []string{"task", "list", "mail", "--limit", "1", "--json"}))
	if len(page.Tasks) != 1 || page.NextCursor == "" {
		t.Fatalf("list --limit 1 of 3 tasks: %+v", page)
	}
	ok(t, url, []string{"task", "list", "mail", "--limit", "1"}, "--cursor "+page.NextCursor)
	ok(t, url, []string{"task", "list", "mail", "--state", scheduler.StateDead}, "no tasks")
	fails(t, url, []string{"task", "list", "--limit", "100000"}, "limit")

	queue := func() scheduler.QueueInfo {
		t.Helper()
		for _, q := range jsonOf[[]scheduler.QueueInfo](t, ok(t, url, []string{"task", "queues", "--json"})) {
			if q.Name == "mail" {
				return q
			}
		}
		t.Fatal("task queues does not list mail")
		return scheduler.QueueInfo{}
	}
	if q := queue(); q.Paused || q.Depth < 1 || q.Scheduled < 1 {
		t.Fatalf("queue mail: %+v, want one queued and one scheduled", q)
	}
	// The cancelled task's record is the one record.
	if out := ok(t, url, []string{"task", "queues"}, "mail").stdout; !regexp.MustCompile(`(?m)^history: records 1, bytes [1-9][0-9]*, max_bytes [1-9][0-9]*, oldest 20[0-9-]+T`).MatchString(out) {
		t.Fatalf("task queues prints no history figures:\n%s", out)
	}
	ok(t, url, []string{"task", "pause", "mail"}, "paused mail")
	if q := queue(); !q.Paused {
		t.Fatalf("after pause: %+v", q)
	}
	// A paused queue keeps its tasks; resumed, a worker runs them.
	paused := submit(t, url, "mail", "send", "while paused")
	ok(t, url, []string{"task", "resume", "mail"}, "resumed mail")
	// A resume is a pause that ends a moment later: queues may show the
	// queue paused for that moment.
	for deadline := time.Now().Add(10 * time.Second); queue().Paused; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the queue still shows paused 10 s after resume")
		}
	}
	startWorker(t, url, "mail", "cat")
	if info := waitState(t, url, paused.ID, scheduler.StateSucceeded); info.Result != "while paused" {
		t.Fatalf("the task submitted while paused: %+v", info)
	}
	fails(t, url, []string{"task", "pause", "nope"}, "queue_not_found")
}

// mesh schedule add, list and rm, and their errors.
func TestScheduleCommands(t *testing.T) {
	url := runMesh(t)
	ok(t, url, []string{"schedule", "list"}, "no schedules")
	ok(t, url, []string{"schedule", "add", "hourly", "--queue", "reports", "--type", "build", "--every", "1h"}, "hourly", "reports", "build", "every 1h")
	ok(t, url, []string{"schedule", "add", "nightly", "--queue", "reports", "--type", "vacuum", "--cron", "0 0 3 * * *", "--tz", "Europe/Paris"}, "nightly", "0 0 3 * * *", "Europe/Paris")
	fails(t, url, []string{"schedule", "add", "bad", "--queue", "reports", "--type", "x", "--cron", "not a cron"}, "invalid_schedule")
	fails(t, url, []string{"schedule", "add", "bad", "--queue", "reports", "--type", "x"}, "--cron", "--every")

	ok(t, url, []string{"schedule", "list"}, "hourly", "every 1h", "nightly", "Europe/Paris", "NEXT RUN", "(in ")
	now := time.Now()
	rows := jsonOf[[]scheduler.ScheduleInfo](t, ok(t, url, []string{"schedule", "list", "--json"}))
	if len(rows) != 2 {
		t.Fatalf("schedule list --json: %+v", rows)
	}
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rows {
		if s.NextRunAt.IsZero() || !s.NextRunAt.After(now.Add(-time.Second)) {
			t.Fatalf("schedule %s: next run %v, want one after now", s.Name, s.NextRunAt)
		}
		switch s.Name {
		case "hourly":
			if s.NextRunAt.After(now.Add(time.Hour + 2*time.Second)) {
				t.Fatalf("hourly: next run %v, more than an hour from now", s.NextRunAt)
			}
		case "nightly":
			if at := s.NextRunAt.In(paris); at.Hour() != 3 || at.Minute() != 0 || at.Second() != 0 || at.Sub(now) > 24*time.Hour {
				t.Fatalf("nightly: next run %v, want the next 03:00 in Paris", at)
			}
		}
	}

	ok(t, url, []string{"schedule", "rm", "hourly"}, "removed", "hourly")
	fails(t, url, []string{"schedule", "rm", "hourly"}, "schedule_not_found")
	r := ok(t, url, []string{"schedule", "list"}, "nightly")
	if strings.Contains(r.stdout, "hourly") {
		t.Fatalf("a removed schedule is listed: %v", r)
	}
	ok(t, url, []string{"schedule", "rm", "nightly"}, "removed")
	ok(t, url, []string{"schedule", "list"}, "no schedules")
}

// mesh cache get, set, del and stats; a missing key exits 1.
func TestCacheCommands(t *testing.T) {
	url := runMesh(t)
	ok(t, url, []string{"cache", "set", "greeting", "hello world"}, "stored greeting", "1 copy")
	if r := ok(t, url, []string{"cache", "get", "greeting"}); r.stdout != "hello world\n" {
		t.Fatalf("get printed %q", r.stdout)
	}
	got := jsonOf[cache.GetReply](t, ok(t, url, []string{"cache", "get", "greeting", "--json"}))
	if !got.Found || string(got.Value) != "hello world" {
		t.Fatalf("get --json: %+v", got)
	}
	ok(t, url, []string{"cache", "set", "brief", "v", "--ttl", "1m"}, "stored brief")
	if got := jsonOf[cache.GetReply](t, ok(t, url, []string{"cache", "get", "brief", "--json"})); got.TTLms <= 0 || got.TTLms > 60_000 {
		t.Fatalf("a key set with --ttl 1m has ttl_ms %d", got.TTLms)
	}
	fails(t, url, []string{"cache", "set", "k", "v", "--ttl=-1s"}, "ttl")

	st := jsonOf[cache.StatsReply](t, ok(t, url, []string{"cache", "stats", "--json"}))
	if len(st.Nodes) != 1 || st.Total.Items != 2 || st.Total.Hits < 3 {
		t.Fatalf("stats --json: %+v", st)
	}
	r := ok(t, url, []string{"cache", "stats"}, "total", st.Nodes[0].Node)
	if !strings.Contains(r.stdout, "ITEMS") {
		t.Fatalf("stats has no ITEMS column: %v", r)
	}

	ok(t, url, []string{"cache", "del", "greeting"}, "deleted greeting")
	ok(t, url, []string{"cache", "del", "greeting"}, "greeting was not there")
	fails(t, url, []string{"cache", "get", "greeting"}, "not_found", `"greeting"`)
	if got := jsonOf[cache.GetReply](t, ok(t, url, []string{"cache", "get", "greeting", "--json"})); got.Found {
		t.Fatalf("get --json of a deleted key: %+v", got)
	}
}

// mesh lock renew and list (acquire, inspect, release and run are in
// TestLockCommands), and the exit status of lock run.
func TestLockRenewList(t *testing.T) {
	url := runMesh(t)
	ok(t, url, []string{"lock", "list"}, "no locks")
	got := jsonOf[lock.AcquireReply](t, ok(t, url, []string{"lock", "acquire", "db.migrate", "--ttl", "10s", "--owner", "ci", "--json"}))
	ok(t, url, []string{"lock", "acquire", "db.backup", "--ttl", "10s", "--limit", "2"}, "acquired db.backup", "mesh lock release db.backup")
	token := fmt.Sprint(got.Token)

	ok(t, url, []string{"lock", "renew", "db.migrate", token, "--ttl", "1h"}, "renewed db.migrate", "token "+token)
	info := jsonOf[lock.InspectReply](t, ok(t, url, []string{"lock", "inspect", "db.migrate", "--json"}))
	if len(info.Holders) != 1 || info.Holders[0].ExpiresAt.Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("after renew --ttl 1h: %+v", info)
	}
	fails(t, url, []string{"lock", "renew", "db.migrate", "12345", "--ttl", "1h"}, "not_held")
	fails(t, url, []string{"lock", "renew", "no such lock", token}, "invalid_name")

	r := ok(t, url, []string{"lock", "list"}, "db.migrate", "db.backup")
	list := jsonOf[lock.ListReply](t, ok(t, url, []string{"lock", "list", "db.m", "--json"}))
	if len(list.Locks) != 1 || list.Locks[0].Name != "db.migrate" || list.Locks[0].Holders != 1 {
		t.Fatalf("list db.m --json: %+v\n%v", list, r)
	}
	ok(t, url, []string{"lock", "list", "web."}, "no locks")

	fails(t, url, []string{"lock", "acquire", "db.migrate"}, "lock_held")
	fails(t, url, []string{"lock", "release", "db.migrate", "12345"}, "not_held")
	ok(t, url, []string{"lock", "release", "db.migrate", token}, "released db.migrate")
	ok(t, url, []string{"lock", "inspect", "db.migrate"}, "db.migrate is free")

	// lock run exits as its command did; a command that cannot start is
	// refused before the lock is taken.
	if r := mesh(t, url, "lock", "run", "db.migrate", "--", "sh", "-c", "exit 7"); r.code != 7 {
		t.Fatalf("lock run of exit 7: %v", r)
	}
	fails(t, url, []string{"lock", "run", "db.migrate", "--", "/no/such/command"}, "cannot run /no/such/command")
	ok(t, url, []string{"lock", "inspect", "db.migrate"}, "is free")
}

// mesh status prints the services and the streams and buckets, or says
// there are none.
func TestStatusPrinting(t *testing.T) {
	url := runMesh(t)
	ok(t, url, []string{"cache", "set", "k", "v"}) // a request counted
	r := ok(t, url, []string{"status"}, "NATS: ", "SERVICE", lock.Bucket, bus.EventStream, scheduler.Stream)
	for _, svc := range []string{"cache", "lock", "scheduler", "sys"} {
		if !strings.Contains(r.stdout, "\n"+svc+" ") {
			t.Errorf("status does not list the service %s:\n%s", svc, r.stdout)
		}
	}
	for line := range strings.Lines(r.stdout) {
		if f := strings.Fields(line); len(f) > 2 && f[0] == lock.Bucket && f[1] != "kv" {
			t.Errorf("%s is shown as %s, want kv: %q", lock.Bucket, f[1], line)
		}
	}

	empty := bustest.RunServer(t).URL()
	ok(t, empty, []string{"status"}, "No mesh service is running.", "No mesh stream or bucket.")
	st := jsonOf[status](t, ok(t, empty, []string{"status", "--json"}))
	if len(st.Services) != 0 || len(st.Streams) != 0 || !strings.Contains(st.Server, empty[len("nats://"):]) {
		t.Fatalf("status --json of an empty server: %+v", st)
	}
}

// A command that reaches no NATS server exits 1 and says how to start a
// mesh.
func TestCommandNoServer(t *testing.T) {
	url := "nats://" + bustest.FreeAddr(t)
	for _, args := range [][]string{{"status"}, {"cache", "get", "k"}, {"task", "queues"}, {"lock", "list"}, {"schedule", "list"}} {
		fails(t, url, append([]string{"--timeout", "2s"}, args...), "no servers", "mesh up")
	}
}
