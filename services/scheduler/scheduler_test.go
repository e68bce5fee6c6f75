package scheduler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/schemas"
	"github.com/meshkit/mesh/services/scheduler"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// serve starts a scheduler instance on its own connection.
func serve(t *testing.T, url string, cfg scheduler.Config) *scheduler.Server {
	t.Helper()
	return serveOn(t, bustest.Connect(t, url), cfg)
}

// serveOn starts a scheduler instance on nc (closing nc makes it die).
func serveOn(t *testing.T, nc *nats.Conn, cfg scheduler.Config) *scheduler.Server {
	t.Helper()
	s, err := scheduler.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	return s
}

func client(t *testing.T, url string) *scheduler.Client {
	return scheduler.NewClient(bustest.Connect(t, url))
}

// work starts a worker serving queues with handlers.
func work(t *testing.T, url string, queues map[string]int, handlers map[string]scheduler.Handler) *scheduler.Worker {
	t.Helper()
	w, err := scheduler.NewWorker(bustest.Connect(t, url), scheduler.WorkerConfig{Queues: queues, ShutdownGrace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for typ, h := range handlers {
		w.Handle(typ, h)
	}
	if err := w.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	return w
}

// events collects the task events.
type events struct {
	mu      sync.Mutex
	seen    []bus.Event
	invalid []string // events that do not match their schemas
	ch      chan struct{}
}

// eventSchemas are the event envelope's schema and each event's data
// schema (schemas/event.<type>.json), by file name.
var eventSchemas = sync.OnceValues(func() (map[string]*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	names, err := fs.Glob(schemas.FS, "*.json")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		b, err := fs.ReadFile(schemas.FS, name)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if err := c.AddResource("file:///mesh/schemas/"+name, doc); err != nil {
			return nil, err
		}
	}
	out := map[string]*jsonschema.Schema{}
	for _, name := range names {
		if name == "event.json" || strings.HasPrefix(name, "event.task.") {
			if out[name], err = c.Compile("file:///mesh/schemas/" + name); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
})

// checkEvent validates a task event against the envelope's schema and its
// data's (event.<type>.json); it returns what is wrong, or "".
func checkEvent(data []byte, ev *bus.Event) string {
	sch, err := eventSchemas()
	if err != nil {
		return err.Error()
	}
	check := func(name string, b []byte) string {
		s := sch[name]
		if s == nil {
			return "no schema " + name
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err == nil {
			err = s.Validate(v)
		}
		if err != nil {
			return fmt.Sprintf("%s: %v", name, err)
		}
		return ""
	}
	if bad := check("event.json", data); bad != "" {
		return bad
	}
	b, _ := json.Marshal(ev.Data)
	return check("event."+ev.Type+".json", b)
}

// watch collects the task events, and checks each against its schema
// (the test fails at its end on one that does not match).
func watch(t *testing.T, url string) *events {
	t.Helper()
	e := &events{ch: make(chan struct{}, 1)}
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, bad := range e.invalid {
			t.Errorf("event does not match its schema: %s", bad)
		}
	})
	nc := bustest.Connect(t, url)
	if _, err := nc.Subscribe("mesh.events.task.*", func(m *nats.Msg) {
		var ev bus.Event
		if json.Unmarshal(m.Data, &ev) != nil {
			return
		}
		bad := checkEvent(m.Data, &ev)
		e.mu.Lock()
		e.seen = append(e.seen, ev)
		if bad != "" {
			e.invalid = append(e.invalid, bad+": "+string(m.Data))
		}
		e.mu.Unlock()
		select {
		case e.ch <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return e
}

// wait waits until an event of type typ about task id (any task: "") has
// been seen.
func (e *events) wait(t *testing.T, typ, id string) bus.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		e.mu.Lock()
		for _, ev := range e.seen {
			data, _ := ev.Data.(map[string]any)
			if ev.Type == typ && (id == "" || data["id"] == id) {
				e.mu.Unlock()
				return ev
			}
		}
		e.mu.Unlock()
		select {
		case <-e.ch:
		case <-deadline:
			t.Fatalf("no %s event for %q in 20s", typ, id)
		}
	}
}

func intp(i int) *int { return &i }

func waitDone(t *testing.T, c *scheduler.Client, id string) scheduler.TaskInfo {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx(t), 30*time.Second)
	defer cancel()
	info, err := c.Wait(wctx, id)
	if err != nil {
		t.Fatalf("waiting for %s: %v (last state %+v)", id, err, info)
	}
	return info
}

func TestSubmitRunSucceed(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	work(t, s.URL(), map[string]int{"emails": 4}, map[string]scheduler.Handler{
		"send": func(ctx context.Context, task *scheduler.Task) error {
			task.SetResult([]byte("sent to " + string(task.Payload)))
			return nil
		},
	})
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "emails", Type: "send", Payload: []byte("ann@example.com")})
	if err != nil {
		t.Fatal(err)
	}
	info := waitDone(t, c, id)
	if info.State != scheduler.StateSucceeded || info.Result != "sent to ann@example.com" || info.Attempts != 1 {
		t.Fatalf("status = %+v", info)
	}
	if info.StartedAt.IsZero() || info.FinishedAt.IsZero() || info.CreatedAt.IsZero() {
		t.Fatalf("timestamps missing: %+v", info)
	}
	if info.Worker == "" || info.Queue != "emails" || info.Type != "send" || info.MaxRetries != 3 {
		t.Fatalf("record = %+v", info)
	}
	for _, typ := range []string{"task.submitted", "task.started", "task.succeeded"} {
		ev.wait(t, typ, id)
	}
	queueEmpty(t, s.URL(), "emails")
}

func TestBadInput(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{MaxPayload: 1 << 10})
	nc := bustest.Connect(t, s.URL())
	for _, c := range []struct {
		body string
		is   error
	}{
		{`{"queue":"","type":"x"}`, scheduler.ErrInvalidQueue},
		{`{"queue":"a.b","type":"x"}`, scheduler.ErrInvalidQueue},
		{`{"queue":"a b","type":"x"}`, scheduler.ErrInvalidQueue},
		{`{"queue":"q","type":""}`, scheduler.ErrInvalid},
		{`{"queue":"q","type":"a b"}`, scheduler.ErrInvalid},
		{`{"queue":"q","type":"x","max_retries":-1}`, scheduler.ErrInvalid},
		{`{"queue":"q","type":"x","max_retries":1000}`, scheduler.ErrInvalid},
		{`{"queue":"q","type":"x","timeout_ms":-5}`, scheduler.ErrInvalid},
		{`{"queue":"q","type":"x","delay_ms":-5}`, scheduler.ErrInvalidSchedule},
		{`{"queue":"q","type":"x","delay_ms":5,"run_at":"2030-01-01T00:00:00.000Z"}`, scheduler.ErrInvalidSchedule},
		{`{"queue":"q","type":"x","run_at":"tomorrow"}`, bus.ErrInvalid},
		{`{"queue":"q","type":"x","backoff":{"kind":"linear"}}`, scheduler.ErrInvalid},
		{`{"queue":"q","type":"x","unique_for_ms":5000}`, scheduler.ErrInvalid},
		{`{"queue":"q","type":"x","payload":"` + strings.Repeat("x", 2000) + `"}`, scheduler.ErrPayloadTooLarge},
		{`{"queue":"q","type":"x","payload":"%%%","payload_encoding":"base64"}`, scheduler.ErrInvalid},
		{`{"queue":1}`, bus.ErrInvalid},
		{`{"queue":`, bus.ErrInvalid},
	} {
		_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: scheduler.SubjectSubmit, Data: []byte(c.body)})
		if !errors.Is(err, c.is) {
			t.Errorf("%.80s: err = %v, want %v", c.body, err, c.is)
		}
	}
	c := scheduler.NewClient(nc)
	tasks, err := s.JetStream().Stream(ctx(t), scheduler.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := tasks.Info(ctx(t)); err != nil || info.State.Msgs != 0 || info.State.Consumers != 1 {
		t.Fatalf("bad input made queues or tasks: %+v, %v", info.State, err)
	}
	if _, err := c.Status(ctx(t), "nope"); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("status of an unknown id: %v", err)
	}
	if _, err := c.Cancel(ctx(t), "a.b"); !errors.Is(err, scheduler.ErrInvalid) {
		t.Fatalf("cancel of a bad id: %v", err)
	}
	if err := c.Pause(ctx(t), "nope"); !errors.Is(err, scheduler.ErrQueueNotFound) {
		t.Fatalf("pause of an unknown queue: %v", err)
	}
	if err := c.RemoveSchedule(ctx(t), "nope"); !errors.Is(err, scheduler.ErrScheduleNotFound) {
		t.Fatalf("rm of an unknown schedule: %v", err)
	}
	for _, req := range []scheduler.ScheduleRequest{
		{Name: "a", Queue: "q", Type: "x"},
		{Name: "a", Queue: "q", Type: "x", EveryMs: 500},
		{Name: "a", Queue: "q", Type: "x", EveryMs: 1500},
		{Name: "a", Queue: "q", Type: "x", Cron: "* * * * * *", EveryMs: 1000},
		{Name: "a", Queue: "q", Type: "x", Cron: "* * * * * *", TimeZone: "Mars/Olympus"},
		{Name: "a", Queue: "q", Type: "x", Cron: "not a cron"},
	} {
		if _, err := c.AddSchedule(ctx(t), req); !errors.Is(err, scheduler.ErrInvalidSchedule) {
			t.Errorf("schedule %+v: err = %v, want ErrInvalidSchedule", req, err)
		}
	}
	if scheds, err := c.ListSchedules(ctx(t)); err != nil || len(scheds) != 0 {
		t.Fatalf("bad schedules were kept: %+v, %v", scheds, err)
	}
}

func TestRetryThenDead(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	var calls atomic.Int32
	work(t, s.URL(), map[string]int{"q": 2}, map[string]scheduler.Handler{
		"flaky": func(ctx context.Context, task *scheduler.Task) error {
			calls.Add(1)
			if task.Attempt < 3 {
				return fmt.Errorf("attempt %d failed", task.Attempt)
			}
			return nil
		},
		"broken": func(ctx context.Context, task *scheduler.Task) error {
			return fmt.Errorf("attempt %d failed", task.Attempt)
		},
		"fatal": func(ctx context.Context, task *scheduler.Task) error {
			return scheduler.SkipRetry(errors.New("bad payload"))
		},
	})
	fast := &scheduler.Backoff{Kind: "constant", InitialMs: 20}
	flaky, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "q", Type: "flaky", MaxRetries: intp(5), Backoff: fast})
	if err != nil {
		t.Fatal(err)
	}
	broken, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "q", Type: "broken", MaxRetries: intp(2), Backoff: fast, Payload: []byte("keep me")})
	if err != nil {
		t.Fatal(err)
	}
	fatal, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "q", Type: "fatal", MaxRetries: intp(5), Backoff: fast})
	if err != nil {
		t.Fatal(err)
	}
	if info := waitDone(t, c, flaky); info.State != scheduler.StateSucceeded || info.Attempts != 3 || info.LastError != "" {
		t.Fatalf("flaky = %+v", info)
	}
	ev.wait(t, "task.failed", flaky)
	if info := waitDone(t, c, broken); info.State != scheduler.StateDead || info.Attempts != 3 || info.LastError != "attempt 3 failed" {
		t.Fatalf("broken = %+v", info)
	}
	ev.wait(t, "task.dead", broken)
	if info := waitDone(t, c, fatal); info.State != scheduler.StateDead || info.Attempts != 1 {
		t.Fatalf("fatal = %+v", info)
	}
	// The dead tasks are in the dead-letter stream, with their payloads,
	// and out of the queue.
	js := s.JetStream()
	dead, err := js.Stream(ctx(t), scheduler.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := dead.GetMsg(ctx(t), seq)
		if err != nil {
			t.Fatal(err)
		}
		got[m.Header.Get(scheduler.HeaderID)] = string(m.Data) + "|" + m.Header.Get(scheduler.HeaderLastError)
	}
	if got[broken] != "keep me|attempt 3 failed" || got[fatal] != "|bad payload" {
		t.Fatalf("dead letters = %q", got)
	}
	queueEmpty(t, s.URL(), "q")
	if info, err := dead.Info(ctx(t)); err != nil || info.State.Msgs != 2 {
		t.Fatalf("dead letters: %+v, %v", info.State, err)
	}
}

// eventually polls cond until it holds, for server-side effects that send
// no event (a worker's ack reaching the consumer, a key's expiry).
func eventually(t *testing.T, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, what := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// queueHolds returns what a queue's consumer holds: the messages not
// delivered yet, the ones delivered and not acknowledged, and whether it
// is paused.
func queueHolds(t *testing.T, url, queue string) (pending uint64, inFlight int, paused bool) {
	t.Helper()
	js := bustest.JetStream(t, bustest.Connect(t, url))
	c, err := js.Consumer(ctx(t), scheduler.Stream, queue)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending, info.NumAckPending, info.Paused
}

// queueEmpty waits until a queue holds no message, delivered or not.
func queueEmpty(t *testing.T, url, queue string) {
	t.Helper()
	eventually(t, func() (bool, string) {
		pending, inFlight, _ := queueHolds(t, url, queue)
		return pending == 0 && inFlight == 0, fmt.Sprintf("queue %s holds %d waiting and %d delivered", queue, pending, inFlight)
	})
}

// submitReply sends req as one submit and returns the service's reply: the
// id, the state and the run_at it set.
func submitReply(t *testing.T, nc *nats.Conn, req scheduler.SubmitRequest) scheduler.SubmitReply {
	t.Helper()
	r, err := bus.Request[scheduler.SubmitRequest, scheduler.SubmitReply](ctx(t), nc, scheduler.SubjectSubmit, req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// startLog records when each task's handler started, every time it did.
type startLog struct {
	mu sync.Mutex
	at map[string][]time.Time
}

func (l *startLog) record(id string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at == nil {
		l.at = map[string][]time.Time{}
	}
	l.at[id] = append(l.at[id], now)
}

// check fails the test unless every task of runAt (id -> the run_at the
// service returned, zero for a task due at once) started, and none before
// its run_at. It returns how many starts were runs again of a task
// (at-least-once delivery).
func (l *startLog) check(t *testing.T, runAt map[string]time.Time) (again int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var worst time.Duration
	delayed := 0
	for id, due := range runAt {
		starts := l.at[id]
		if len(starts) == 0 {
			t.Errorf("task %s (run_at %s) never started", id, due.Format(time.RFC3339Nano))
			continue
		}
		again += len(starts) - 1
		for _, at := range starts {
			if at.Before(due) {
				t.Errorf("task %s started %v before its run_at %s", id, due.Sub(at), due.Format(time.RFC3339Nano))
			}
		}
		if !due.IsZero() {
			delayed++
			worst = max(worst, starts[0].Sub(due))
		}
	}
	t.Logf("%d delayed tasks: worst lateness of a first start %v", delayed, worst)
	return again
}

// Delayed tasks never start before the run_at the service returned,
// whether the server's schedule stages them or they are due too soon for
// one; each runs once. A run_at asked for is kept (to the millisecond); a
// delay counts from the service's clock, so the run_at is checked against
// the client's clock on either side of the submit.
func TestDelayedNeverEarly(t *testing.T) {
	t.Parallel() // waits on timers mostly
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	var starts startLog
	work(t, s.URL(), map[string]int{"later": 8}, map[string]scheduler.Handler{
		"at": func(ctx context.Context, task *scheduler.Task) error {
			starts.record(task.ID)
			return nil
		},
	})
	const n = 24
	runAt := map[string]time.Time{}
	for i := range n {
		// From 300 ms (staged at once) to 2.6 s (a server schedule) ahead
		// of the submit. Instants travel with millisecond precision.
		ahead := 300*time.Millisecond + time.Duration(i)*100*time.Millisecond
		due := time.Now().Add(ahead).Truncate(time.Millisecond)
		req := scheduler.SubmitRequest{Queue: "later", Type: "at", RunAt: bus.Time{Time: due}}
		if i%2 == 1 { // half by delay
			req.RunAt, req.DelayMs = bus.Time{}, ahead.Milliseconds()
		}
		before := time.Now()
		r := submitReply(t, nc, req)
		after := time.Now()
		switch {
		case req.DelayMs == 0 && r.State == scheduler.StateQueued && r.RunAt.IsZero() && !after.Before(due):
			// The machine was so slow that the run_at had passed when the
			// service got the submit: it is queued, and must not start
			// before the run_at asked for.
			r.RunAt = bus.Time{Time: due}
		case r.State != scheduler.StateScheduled || r.RunAt.IsZero():
			t.Fatalf("submit %d: %+v, want scheduled with a run_at", i, r)
		case req.DelayMs == 0 && !r.RunAt.Equal(due):
			t.Fatalf("submit %d: run_at %s, asked for %s", i, r.RunAt, due.Format(time.RFC3339Nano))
		case req.DelayMs != 0 && (r.RunAt.Before(before.Add(ahead).Truncate(time.Millisecond)) || r.RunAt.After(after.Add(ahead))):
			t.Fatalf("submit %d: run_at %s is not %v after the submit (%s to %s)", i, r.RunAt, ahead,
				before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano))
		}
		if _, dup := runAt[r.ID]; dup {
			t.Fatalf("submit %d: id %s again", i, r.ID)
		}
		runAt[r.ID] = r.RunAt.Time
		if i == n-1 {
			if info, err := c.Status(ctx(t), r.ID); err != nil || !info.RunAt.Equal(r.RunAt.Time) {
				t.Fatalf("status of a delayed task = %+v, %v; want run_at %s", info, err, r.RunAt)
			}
		}
	}
	for id := range runAt {
		if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded {
			t.Fatalf("task %s = %+v", id, info)
		}
	}
	if again := starts.check(t, runAt); again != 0 {
		t.Errorf("%d delayed tasks ran more than once, with no fault", again)
	}
	// A run_at in the past runs now.
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "later", Type: "at", RunAt: bus.Time{Time: time.Now().Add(-time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded {
		t.Fatalf("past run_at: %+v", info)
	}
}

// A periodic schedule makes one task per tick with two scheduler instances
// running, and none once removed.
func TestPeriodicTwoInstances(t *testing.T) {
	t.Skip("periodic ticks reach the queues once staging.go stores them on their tasks' subjects, and list reads the records")
	t.Parallel() // waits on timers mostly
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	var mu sync.Mutex
	runs := map[string]time.Time{}
	tocks := make(chan string, 10)
	work(t, s.URL(), map[string]int{"cron": 2}, map[string]scheduler.Handler{
		"tock": func(ctx context.Context, task *scheduler.Task) error {
			select {
			case tocks <- task.Schedule:
			default:
			}
			return nil
		},
		"beat": func(ctx context.Context, task *scheduler.Task) error {
			mu.Lock()
			runs[task.ID] = time.Now()
			mu.Unlock()
			if task.Schedule != "heartbeat" || string(task.Payload) != "thump" {
				return scheduler.SkipRetry(fmt.Errorf("task %+v", task))
			}
			return nil
		},
	})
	added := time.Now()
	info, err := c.AddSchedule(ctx(t), scheduler.ScheduleRequest{Name: "heartbeat", Queue: "cron", Type: "beat", Payload: []byte("thump"), EveryMs: 1000})
	if err != nil || info.EveryMs != 1000 {
		t.Fatalf("add = %+v, %v", info, err)
	}
	scheds, err := c.ListSchedules(ctx(t))
	if err != nil || len(scheds) != 1 || scheds[0].Name != "heartbeat" || scheds[0].Queue != "cron" || scheds[0].EveryMs != 1000 {
		t.Fatalf("list = %+v, %v", scheds, err)
	}
	// Three ticks.
	for {
		mu.Lock()
		n := len(runs)
		mu.Unlock()
		if n >= 3 {
			break
		}
		select {
		case <-ev.ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d ticks in 10s", n)
		}
	}
	if err := c.RemoveSchedule(ctx(t), "heartbeat"); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(added)
	if scheds, err := c.ListSchedules(ctx(t)); err != nil || len(scheds) != 0 {
		t.Fatalf("after rm: %+v, %v", scheds, err)
	}
	list, err := c.List(ctx(t), scheduler.ListRequest{Queue: "cron"})
	if err != nil {
		t.Fatal(err)
	}
	// One task per tick. The server fires the schedule at most once a
	// second between the add and the rm, however late each tick is handled,
	// so more tasks than that are ticks made twice (each instance making
	// its own). A tick's task carries the tick's stream time as its
	// creation: two tasks of one tick would share it.
	made := map[time.Time]string{}
	for _, task := range list.Tasks {
		if task.Schedule != "heartbeat" {
			t.Fatalf("task %+v", task)
		}
		if other, ok := made[task.CreatedAt.Time]; ok {
			t.Fatalf("tasks %s and %s were made of one tick (%v)", other, task.ID, task.CreatedAt)
		}
		made[task.CreatedAt.Time] = task.ID
	}
	if most := int(elapsed/time.Second) + 1; len(made) > most {
		t.Fatalf("%d tasks made in %v, by a schedule that ticks once a second: at most %d", len(made), elapsed.Round(time.Millisecond), most)
	}
	mu.Lock()
	ran := len(runs)
	mu.Unlock()
	if len(made) < ran {
		t.Fatalf("%d tasks listed, %d ran", len(made), ran)
	}

	// A cron schedule in a time zone, every second.
	if _, err := c.AddSchedule(ctx(t), scheduler.ScheduleRequest{Name: "tick", Queue: "cron", Type: "tock", Cron: "* * * * * *", TimeZone: "Europe/Paris"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case name := <-tocks:
			if name != "tick" {
				t.Fatalf("task of schedule %q", name)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no cron tick in 10s")
		}
	}
	if err := c.RemoveSchedule(ctx(t), "tick"); err != nil {
		t.Fatal(err)
	}
}

// An outcome whose record's write is refused because the task's record
// changed meanwhile (here: cancelled behind the worker's back, with no
// event) is decided again on that record: a cancelled task's outcome is
// dropped, its message acknowledged.
func TestOutcomeOnCancelledRecord(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	release := make(chan struct{})
	work(t, s.URL(), map[string]int{"cas": 1}, map[string]scheduler.Handler{
		"hold": func(ctx context.Context, task *scheduler.Task) error {
			<-release
			task.SetResult([]byte("done"))
			return nil
		},
		"quick": func(ctx context.Context, task *scheduler.Task) error { return nil },
	})
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "cas", Type: "hold"})
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.started", id)
	info, err := c.Status(ctx(t), id)
	if err != nil || info.State != scheduler.StateRunning {
		t.Fatalf("status = %+v, %v", info, err)
	}
	info.State, info.FinishedAt = scheduler.StateCancelled, bus.Time{Time: time.Now()}
	b, _ := json.Marshal(info)
	m := nats.NewMsg(scheduler.HistorySubjectPrefix + "cas." + id)
	m.Data = b
	m.Header.Set("Nats-Expected-Last-Subject-Sequence", "0")
	if _, err := s.JetStream().PublishMsg(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	close(release)
	queueEmpty(t, s.URL(), "cas")
	// Events of one worker come in order: a later task's success comes
	// after the first one's, had it been told.
	quick, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "cas", Type: "quick"})
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.succeeded", quick)
	if got, err := c.Status(ctx(t), id); err != nil || got.State != scheduler.StateCancelled || got.Result != "" {
		t.Fatalf("after the outcome: %+v, %v", got, err)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.seen {
		if data, _ := e.Data.(map[string]any); e.Type == "task.succeeded" && data["id"] == id {
			t.Fatal("the dropped outcome was told")
		}
	}
}

// A task is cancelled in every state but a final one: scheduled (its
// schedule goes), queued (its message goes), queued but already pulled by
// a worker (it is not run), running (its handler's context is cancelled),
// failed and waiting for its retry (it is not retried). A final task is
// not cancelled.
func TestCancelEachState(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())

	// Scheduled: its schedule goes, it never runs.
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "c", Type: "block", DelayMs: 60_000})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := c.Status(ctx(t), id); err != nil || info.State != scheduler.StateScheduled {
		t.Fatalf("status = %+v, %v", info, err)
	}
	if was, err := c.Cancel(ctx(t), id); err != nil || was != scheduler.StateScheduled {
		t.Fatalf("cancel scheduled = %s, %v", was, err)
	}
	if info, _ := c.Status(ctx(t), id); info.State != scheduler.StateCancelled {
		t.Fatalf("status = %+v", info)
	}
	tasks, err := s.JetStream().Stream(ctx(t), scheduler.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := tasks.Info(ctx(t), jetstream.WithSubjectFilter("mesh.scheduler.>")); err != nil || len(info.State.Subjects) != 0 {
		t.Fatalf("a cancelled task's schedule is left: %+v, %v", info.State.Subjects, err)
	}
	if _, err := c.Cancel(ctx(t), id); !errors.Is(err, scheduler.ErrFinished) {
		t.Fatalf("cancel twice = %v", err)
	}

	// Queued (no worker yet): its message goes; it is never run.
	queued, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "c", Type: "block"})
	if err != nil {
		t.Fatal(err)
	}
	if was, err := c.Cancel(ctx(t), queued); err != nil || was != scheduler.StateQueued {
		t.Fatalf("cancel queued = %s, %v", was, err)
	}
	if pending, inFlight, _ := queueHolds(t, s.URL(), "c"); pending != 0 || inFlight != 0 {
		t.Fatalf("queue c holds %d and %d after its only task was cancelled", pending, inFlight)
	}

	// Running: the handler's context is cancelled, the task is not retried.
	// Queued behind it on a worker that runs one task at a time and pulls
	// ahead: pulled, cancelled, never run.
	var ran sync.Map
	cause := make(chan error, 1)
	work(t, s.URL(), map[string]int{"c": 1}, map[string]scheduler.Handler{
		"block": func(ctx context.Context, task *scheduler.Task) error {
			ran.Store(task.ID, true)
			<-ctx.Done()
			cause <- context.Cause(ctx)
			return ctx.Err()
		},
		"quick": func(ctx context.Context, task *scheduler.Task) error { ran.Store(task.ID, true); return nil },
		"fail": func(ctx context.Context, task *scheduler.Task) error {
			ran.Store(task.ID, true)
			return errors.New("not now")
		},
	})
	running, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "c", Type: "block", MaxRetries: intp(5)})
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.started", running)
	pulled, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "c", Type: "quick"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		_, inFlight, _ := queueHolds(t, s.URL(), "c")
		return inFlight == 2, fmt.Sprintf("%d delivered, want the running task and the one pulled ahead", inFlight)
	})
	if was, err := c.Cancel(ctx(t), pulled); err != nil || was != scheduler.StateRunning {
		t.Fatalf("cancel pulled = %s, %v (delivered: running, for the queue)", was, err)
	}
	if was, err := c.Cancel(ctx(t), running); err != nil || was != scheduler.StateRunning {
		t.Fatalf("cancel running = %s, %v", was, err)
	}
	select {
	case err := <-cause:
		if err == nil || !strings.Contains(err.Error(), "cancelled") {
			t.Fatalf("handler context cause = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the running handler was not cancelled")
	}

	// Failed, waiting for its retry: not retried.
	failed, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "c", Type: "fail", MaxRetries: intp(3),
		Backoff: &scheduler.Backoff{Kind: "constant", InitialMs: 60_000}})
	if err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.failed", failed)
	if info, err := c.Status(ctx(t), failed); err != nil || info.State != scheduler.StateFailed || info.Attempts != 1 || info.NextRetryAt.IsZero() {
		t.Fatalf("status of a failed task = %+v, %v", info, err)
	}
	if was, err := c.Cancel(ctx(t), failed); err != nil || was != scheduler.StateFailed {
		t.Fatalf("cancel failed = %s, %v", was, err)
	}

	// A later task runs; the cancelled ones never did.
	quick, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "c", Type: "quick"})
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, c, quick)
	for _, id := range []string{queued, pulled} {
		if _, ok := ran.Load(id); ok {
			t.Fatalf("cancelled task %s ran", id)
		}
	}
	if info := waitDone(t, c, running); info.State != scheduler.StateCancelled || info.Attempts != 1 {
		t.Fatalf("running task after cancel = %+v", info)
	}
	for _, id := range []string{queued, pulled, failed} {
		if info, err := c.Status(ctx(t), id); err != nil || info.State != scheduler.StateCancelled {
			t.Fatalf("task %s after cancel = %+v, %v", id, info, err)
		}
	}
	if _, err := c.Cancel(ctx(t), quick); !errors.Is(err, scheduler.ErrFinished) {
		t.Fatalf("cancel of a finished task = %v", err)
	}
	if _, err := c.Cancel(ctx(t), "nope"); !errors.Is(err, scheduler.ErrNotFound) {
		t.Fatalf("cancel of an unknown task = %v", err)
	}
	// Nothing left in the queue: the cancelled messages were removed.
	queueEmpty(t, s.URL(), "c")
}

func TestUnique(t *testing.T) {
	t.Parallel() // waits on timers mostly
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	req := scheduler.SubmitRequest{Queue: "u", Type: "report", UniqueKey: "daily 2026-11-25", UniqueForMs: 1000}
	first, err := c.Submit(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Submit(ctx(t), req)
	if !errors.Is(err, scheduler.ErrDuplicate) || !errors.Is(err, bus.ErrConflict) || again != first {
		t.Fatalf("duplicate = %q, %v; want %q, ErrDuplicate", again, err, first)
	}
	other := req
	other.Queue = "u2"
	if _, err := c.Submit(ctx(t), other); err != nil {
		t.Fatalf("same key, other queue: %v", err)
	}
	// Once the window has passed, the key is free again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		id, err := c.Submit(ctx(t), req)
		if err == nil {
			if id == first {
				t.Fatal("same id")
			}
			break
		}
		if !errors.Is(err, scheduler.ErrDuplicate) || time.Now().After(deadline) {
			t.Fatalf("after the window: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // the key's expiry on the server sends no event
	}
}

func TestPauseResume(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ev := watch(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "p", Type: "x"}); err != nil {
		t.Fatal(err) // creates the queue
	}
	if err := c.Pause(ctx(t), "p"); err != nil {
		t.Fatal(err)
	}
	if _, _, paused := queueHolds(t, s.URL(), "p"); !paused {
		t.Fatal("the queue is not paused")
	}
	var ran atomic.Int32
	work(t, s.URL(), map[string]int{"p": 2}, map[string]scheduler.Handler{
		"x": func(ctx context.Context, task *scheduler.Task) error { ran.Add(1); return nil },
	})
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "p", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	// A negative check: nothing may run while paused.
	time.Sleep(300 * time.Millisecond)
	if n := ran.Load(); n != 0 {
		t.Fatalf("%d tasks ran on a paused queue", n)
	}
	if err := c.Resume(ctx(t), "p"); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "task.succeeded", id)
	if _, _, paused := queueHolds(t, s.URL(), "p"); paused {
		t.Fatal("the queue is still paused")
	}
}
