package scheduler_test

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// A worker written from doc.go ("Worker protocol") alone, with nats.go and
// JSON, serves a queue: one task succeeds with a result, one fails once
// then succeeds, one fails for good. It sends no request to the service.
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
	// readRecord: a direct get of the last message on the record's subject.
	readRecord := func(queue, id string) (map[string]any, uint64) {
		req, _ := json.Marshal(map[string]string{"last_by_subj": "mesh.history." + queue + "." + id})
		m, err := nc.Request("$JS.API.DIRECT.GET.MESH_TASK_HISTORY", req, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get("Status") == "404" {
			return nil, 0
		}
		var rec map[string]any
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			t.Fatal(err)
		}
		seq, _ := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		return rec, seq
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
			id, typ, queue := h.Get("Mesh-Task-Id"), h.Get("Mesh-Task-Type"), h.Get("Mesh-Task-Queue")
			if h.Get("Nats-Msg-Id") != id || queue != "raw" || msg.Subject() != "mesh.tasks.raw."+id {
				t.Fatalf("message %s, headers %v", msg.Subject(), h)
			}
			attempt, expect := int(meta.NumDelivered), uint64(0)
			if meta.NumDelivered > 1 {
				rec, seq := readRecord(queue, id)
				if rec != nil {
					expect = seq
					if a, _ := rec["attempts"].(float64); rec["state"] == "failed" && int(a)+1 > attempt {
						attempt = int(a) + 1
					}
				}
			}
			if err := msg.InProgress(); err != nil { // as a long handler would
				t.Fatal(err)
			}
			rec := map[string]any{"id": id, "queue": queue, "type": typ, "attempts": attempt, "worker": "raw-test",
				"created_at": meta.Timestamp.UTC().Format(time.RFC3339Nano), "finished_at": time.Now().UTC().Format(time.RFC3339Nano)}
			settle := msg.Ack
			switch {
			case typ == "echo":
				rec["state"], rec["result"] = "succeeded", "echo: "+string(msg.Data())
			case typ == "flaky" && attempt == 1:
				rec["state"], rec["last_error"] = "failed", "first attempt fails"
				delete(rec, "finished_at")
				settle = func() error { return msg.NakWithDelay(10 * time.Millisecond) }
			case typ == "flaky":
				rec["state"] = "succeeded"
			case typ == "fatal":
				// Dead: a copy in the dead letters, then the record, then term.
				dead := nats.NewMsg("mesh.dead." + queue)
				for k, v := range h {
					dead.Header[k] = v
				}
				dead.Header.Set("Nats-Msg-Id", "dead-"+id+"-"+strconv.FormatUint(meta.Sequence.Stream, 10)+"-"+strconv.Itoa(attempt))
				dead.Header.Set("Mesh-Task-Last-Error", "cannot ever work")
				dead.Data = msg.Data()
				if _, err := js.PublishMsg(ctx(t), dead); err != nil {
					t.Fatal(err)
				}
				rec["state"], rec["last_error"] = "dead", "cannot ever work"
				settle = msg.Term
			}
			body, _ := json.Marshal(rec)
			w := nats.NewMsg("mesh.history." + queue + "." + id)
			w.Data = body
			w.Header.Set("Nats-Expected-Last-Subject-Sequence", strconv.FormatUint(expect, 10))
			if _, err := js.PublishMsg(ctx(t), w); err != nil {
				t.Fatal(err) // 10071 would mean another wrote first: read and decide again
			}
			if err := settle(); err != nil {
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
	queueEmpty(t, s.URL(), "raw")
}
