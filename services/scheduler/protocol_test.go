package scheduler_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// A worker written from schemas/README.md ("Worker protocol") alone, with
// nats.go and JSON, serves a queue: one task succeeds with a result, one
// fails once then succeeds, one fails for good.
func TestRawWorkerProtocol(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	ok, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "raw", Type: "echo", Payload: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	retry, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "raw", Type: "flaky", Backoff: &scheduler.Backoff{Kind: "constant", InitialMs: 10}})
	if err != nil {
		t.Fatal(err)
	}
	fatal, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "raw", Type: "fatal"})
	if err != nil {
		t.Fatal(err)
	}

	// The worker.
	nc := bustest.Connect(t, s.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx(t), "MESH_TASKS", "raw") // named after the queue
	if err != nil {
		t.Fatal(err)
	}
	request := func(subject string, body map[string]any) map[string]any {
		data, _ := json.Marshal(body)
		reply, err := nc.Request(subject, data, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if reply.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("%s: %s", subject, reply.Data)
		}
		var out map[string]any
		if err := json.Unmarshal(reply.Data, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	handled := 0
	for handled < 4 { // echo, flaky twice, fatal
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			meta, err := msg.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			h := msg.Headers()
			id, typ := h.Get("Mesh-Task-Id"), h.Get("Mesh-Task-Type")
			if h.Get("Nats-Msg-Id") != id || h.Get("Mesh-Task-Queue") != "raw" {
				t.Fatalf("headers %v", h)
			}
			st := request("mesh.scheduler.started", map[string]any{
				"id": id, "queue": "raw", "type": typ, "attempt": meta.NumDelivered, "stream_seq": meta.Sequence.Stream, "worker": "raw-test",
			})
			if st["run"] != true {
				t.Fatalf("started: %v", st)
			}
			if err := msg.InProgress(); err != nil { // as a long handler would
				t.Fatal(err)
			}
			fin := map[string]any{"id": id, "queue": "raw", "attempt": meta.NumDelivered, "stream_seq": meta.Sequence.Stream}
			switch {
			case typ == "echo":
				fin["result"] = "echo: " + string(msg.Data())
			case typ == "flaky" && meta.NumDelivered == 1:
				fin["error"] = "first attempt fails"
			case typ == "fatal":
				fin["error"], fin["skip_retry"] = "cannot ever work", true
			}
			out := request("mesh.scheduler.finished", fin)
			switch out["action"] {
			case "ack":
				err = msg.Ack()
			case "nak":
				delay, _ := out["delay_ms"].(float64)
				err = msg.NakWithDelay(time.Duration(delay) * time.Millisecond)
			case "term":
				err = msg.Term()
			default:
				t.Fatalf("finished: %v", out)
			}
			if err != nil {
				t.Fatal(err)
			}
			handled++
		}
	}
	for id, want := range map[string]string{ok: scheduler.StateSucceeded, retry: scheduler.StateSucceeded, fatal: scheduler.StateDead} {
		info := waitDone(t, c, id)
		if info.State != want {
			t.Fatalf("%s: %+v, want %s", id, info, want)
		}
		if id == ok && info.Result != "echo: hello" {
			t.Fatalf("result %q", info.Result)
		}
		if id == retry && info.Attempts != 2 {
			t.Fatalf("attempts %d", info.Attempts)
		}
	}
}
