package scheduler_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// reporter sends worker reports as raw JSON, as a client with report
// permission but no delivery could.
type reporter struct {
	t  *testing.T
	nc *nats.Conn
	kv jetstream.KeyValue
	js jetstream.JetStream
}

func newReporter(t *testing.T, url string) *reporter {
	nc := bustest.Connect(t, url)
	js := bustest.JetStream(t, nc)
	kv, err := js.KeyValue(ctx(t), scheduler.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return &reporter{t: t, nc: nc, kv: kv, js: js}
}

// send sends body (JSON text) to subject and returns the error code of the
// reply ("" for a success) and its body.
func (r *reporter) send(subject, body string) (string, map[string]any) {
	r.t.Helper()
	reply, err := r.nc.Request(subject, []byte(body), 5*time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(reply.Data, &out); err != nil {
		r.t.Fatalf("%s: reply %q: %v", subject, reply.Data, err)
	}
	if reply.Header.Get("Nats-Service-Error-Code") == "" {
		return "", out
	}
	code, _ := out["code"].(string)
	return code, out
}

// refused sends a report and fails unless it is refused with code and
// leaves the task's stored state as it was (same revision).
func (r *reporter) refused(id, subject, body, code string) {
	r.t.Helper()
	before := r.revision(id)
	got, out := r.send(subject, body)
	if got != code {
		r.t.Fatalf("%s %s: got %q %v, want %s", subject, body, got, out, code)
	}
	if after := r.revision(id); after != before {
		r.t.Fatalf("%s %s was refused but the state changed: revision %d -> %d", subject, body, before, after)
	}
}

// revision is the revision of a task's state (0: none).
func (r *reporter) revision(id string) uint64 {
	r.t.Helper()
	e, err := r.kv.Get(ctx(r.t), scheduler.StateKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0
	}
	if err != nil {
		r.t.Fatal(err)
	}
	return e.Revision()
}

// seq is the stream sequence of a queued task's message.
func (r *reporter) seq(queue string) uint64 {
	r.t.Helper()
	st, err := r.js.Stream(ctx(r.t), scheduler.Stream)
	if err != nil {
		r.t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx(r.t), scheduler.TaskSubjectPrefix+queue)
	if err != nil {
		r.t.Fatal(err)
	}
	return m.Sequence
}

// The forged reports against a task scheduled an hour ahead: none
// changes it, and it stays scheduled.
func TestReportsOnScheduledTask(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	rep := newReporter(t, s.URL())
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "later", Type: "x", DelayMs: 3_600_000})
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{
		`{"id":%q,"queue":"otherq","attempt":1,"stream_seq":999999,"error":""}`,
		`{"id":%q,"queue":"later","attempt":1,"stream_seq":999999,"error":""}`,
		`{"id":%q,"queue":"later","attempt":1,"stream_seq":1,"error":"boom","skip_retry":true}`,
		`{"id":%q,"queue":"later","attempt":1,"stream_seq":1,"interrupted":true}`,
	} {
		rep.refused(id, scheduler.SubjectFinished, fmt.Sprintf(body, id), "stale_report")
	}
	// A start of a task whose message is not in its queue yet.
	rep.refused(id, scheduler.SubjectStarted, fmt.Sprintf(`{"id":%q,"queue":"later","type":"x","attempt":1,"stream_seq":1}`, id), "stale_report")
	info, err := c.Status(ctx(t), id)
	if err != nil || info.State != scheduler.StateScheduled || info.Attempts != 0 || info.Result != "" {
		t.Fatalf("status = %+v, %v", info, err)
	}
}

// A start with a wrong queue, type or stream_seq, and an outcome with
// "result":"pwned" after it, are refused; the genuine worker then runs the
// task and its result stands.
func TestForgedStartAndOutcome(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	rep := newReporter(t, s.URL())
	if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "otherq", Type: "other"}); err != nil {
		t.Fatal(err)
	}
	otherSeq := rep.seq("otherq")
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "mail", Type: "send"})
	if err != nil {
		t.Fatal(err)
	}
	seq := rep.seq("mail")
	for _, body := range []string{
		`{"id":%[1]q,"queue":"otherq","type":"evil","attempt":1,"stream_seq":999999,"worker":"x"}`, // the issue's: all wrong
		`{"id":%[1]q,"queue":"otherq","type":"send","attempt":1,"stream_seq":%[2]d}`,
		`{"id":%[1]q,"queue":"mail","type":"evil","attempt":1,"stream_seq":%[2]d}`,
		`{"id":%[1]q,"queue":"mail","type":"send","attempt":1,"stream_seq":999999}`,
		`{"id":%[1]q,"queue":"mail","type":"send","attempt":1,"stream_seq":%[3]d}`, // another task's message
		// Everything right, but the message was never delivered.
		`{"id":%[1]q,"queue":"mail","type":"send","attempt":1,"stream_seq":%[2]d}`,
	} {
		rep.refused(id, scheduler.SubjectStarted, fmt.Sprintf(body, id, seq, otherSeq), "stale_report")
	}
	for _, body := range []string{
		`{"id":%[1]q,"queue":"otherq","attempt":1,"stream_seq":999999,"result":"pwned"}`,
		`{"id":%[1]q,"queue":"mail","attempt":1,"stream_seq":%[2]d,"result":"pwned"}`,
		`{"id":%[1]q,"queue":"mail","attempt":1,"stream_seq":%[2]d,"error":"x","skip_retry":true}`,
	} {
		rep.refused(id, scheduler.SubjectFinished, fmt.Sprintf(body, id, seq), "stale_report")
	}
	info, err := c.Status(ctx(t), id)
	if err != nil || info.State != scheduler.StateQueued {
		t.Fatalf("status = %+v, %v", info, err)
	}
	work(t, s.URL(), map[string]int{"mail": 1}, map[string]scheduler.Handler{"send": func(_ context.Context, tk *scheduler.Task) error {
		tk.SetResult([]byte("sent"))
		return nil
	}})
	if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded || info.Result != "sent" || info.Attempts != 1 {
		t.Fatalf("after the genuine worker: %+v", info)
	}
	// Once it has succeeded, a forged outcome still changes nothing.
	rep.refused(id, scheduler.SubjectFinished, fmt.Sprintf(`{"id":%q,"queue":"mail","attempt":2,"stream_seq":%d,"result":"pwned"}`, id, seq), "stale_report")
}

// A start for an id never submitted is refused with task_not_found and
// creates no state; so is an outcome.
func TestReportsOnUnknownTask(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	rep := newReporter(t, s.URL())
	if _, err := client(t, s.URL()).Submit(ctx(t), scheduler.SubmitRequest{Queue: "q", Type: "x"}); err != nil {
		t.Fatal(err) // the stream and the queue exist
	}
	rep.refused("phantom", scheduler.SubjectStarted, `{"id":"phantom","queue":"q","type":"x","attempt":1,"stream_seq":1,"worker":"w"}`, "task_not_found")
	rep.refused("phantom", scheduler.SubjectFinished, `{"id":"phantom","queue":"q","attempt":1,"stream_seq":1}`, "task_not_found")
	if rev := rep.revision("phantom"); rev != 0 {
		t.Fatalf("a state was created for phantom (revision %d)", rev)
	}
}

// A delivered task: a start claiming attempt 1000, or a delivery already
// reported, is refused; the genuine start passes, and so does its outcome
// sent twice (the second gets the first's reply and changes nothing).
func TestReportAttempts(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	rep := newReporter(t, s.URL())
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "q", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	msg := fetch(t, rep.js, "q")
	meta, _ := msg.Metadata()
	seq := meta.Sequence.Stream
	startBody := `{"id":%q,"queue":"q","type":"x","attempt":%d,"stream_seq":%d}`
	rep.refused(id, scheduler.SubjectStarted, fmt.Sprintf(startBody, id, 1000, seq), "stale_report")
	rep.refused(id, scheduler.SubjectFinished, fmt.Sprintf(`{"id":%q,"queue":"q","attempt":1000,"stream_seq":%d,"error":"x"}`, id, seq), "stale_report")
	if code, out := rep.send(scheduler.SubjectStarted, fmt.Sprintf(startBody, id, 1, seq)); code != "" || out["run"] != true {
		t.Fatalf("genuine start: %q %v", code, out)
	}
	// The same delivery again: refused.
	rep.refused(id, scheduler.SubjectStarted, fmt.Sprintf(startBody, id, 1, seq), "stale_report")
	// A newer delivery right away: refused (a genuine one comes an ack
	// wait later).
	rep.refused(id, scheduler.SubjectStarted, fmt.Sprintf(startBody, id, 2, seq), "stale_report")
	fin := fmt.Sprintf(`{"id":%q,"queue":"q","attempt":1,"stream_seq":%d,"result":"ok"}`, id, seq)
	if code, out := rep.send(scheduler.SubjectFinished, fin); code != "" || out["action"] != "ack" {
		t.Fatalf("genuine outcome: %q %v", code, out)
	}
	rev := rep.revision(id)
	if code, out := rep.send(scheduler.SubjectFinished, fin); code != "" || out["action"] != "ack" || rep.revision(id) != rev {
		t.Fatalf("outcome sent again: %q %v", code, out)
	}
	if err := msg.Ack(); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Status(ctx(t), id); err != nil || info.State != scheduler.StateSucceeded || info.Result != "ok" {
		t.Fatalf("status = %+v, %v", info, err)
	}
}

func fetch(t *testing.T, js jetstream.JetStream, queue string) jetstream.Msg {
	t.Helper()
	cons, err := js.Consumer(ctx(t), scheduler.Stream, queue)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		return m
	}
	t.Fatalf("no message on queue %s", queue)
	return nil
}

// A worker that started a task and died: the task is delivered again after
// the ack wait to the Go Worker, whose reports pass; the dead worker's late
// outcome is refused and does not overwrite the new delivery's.
func TestRedeliveryAfterWorkerCrash(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{AckWait: 500 * time.Millisecond})
	c := client(t, s.URL())
	rep := newReporter(t, s.URL())
	id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "crash", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	msg := fetch(t, rep.js, "crash")
	meta, _ := msg.Metadata()
	seq := meta.Sequence.Stream
	if code, out := rep.send(scheduler.SubjectStarted, fmt.Sprintf(`{"id":%q,"queue":"crash","type":"x","attempt":1,"stream_seq":%d}`, id, seq)); code != "" || out["run"] != true {
		t.Fatalf("first start: %q %v", code, out)
	}
	// The first worker dies here: no progress, no outcome, no ack.
	attempts := make(chan int, 4)
	work(t, s.URL(), map[string]int{"crash": 1}, map[string]scheduler.Handler{"x": func(_ context.Context, tk *scheduler.Task) error {
		attempts <- tk.Attempt
		tk.SetResult([]byte("second worker"))
		return nil
	}})
	info := waitDone(t, c, id)
	if info.State != scheduler.StateSucceeded || info.Result != "second worker" {
		t.Fatalf("after the redelivery: %+v", info)
	}
	if a := <-attempts; a < 2 {
		t.Fatalf("the second worker ran delivery %d", a)
	}
	rep.refused(id, scheduler.SubjectFinished, fmt.Sprintf(`{"id":%q,"queue":"crash","attempt":1,"stream_seq":%d,"result":"first worker"}`, id, seq), "stale_report")
	if info, err := c.Status(ctx(t), id); err != nil || info.Result != "second worker" {
		t.Fatalf("status = %+v, %v", info, err)
	}
}

// The Go Worker treats stale_report as "not my delivery": errors.Is works
// on the client side.
func TestStaleReportSentinel(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	nc := bustest.Connect(t, s.URL())
	id, err := scheduler.NewClient(nc).Submit(ctx(t), scheduler.SubmitRequest{Queue: "q", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bus.Request[scheduler.FinishedRequest, scheduler.FinishedReply](ctx(t), nc, scheduler.SubjectFinished,
		scheduler.FinishedRequest{ID: id, Queue: "q", Attempt: 1, StreamSeq: 1})
	if !errors.Is(err, scheduler.ErrStaleReport) || !errors.Is(err, bus.ErrConflict) {
		t.Fatalf("err = %v, want ErrStaleReport", err)
	}
}
