package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus/bustest"
)

// The store keeps the promises the v2 store is built on: a task's record
// is read by id across queues, its writes are compare-and-set, and a
// second message of a live task is refused.
func TestRecordStore(t *testing.T) {
	s := bustest.RunServer(t)
	nc := bustest.Connect(t, s.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bustest.Scale(10e9))
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: HistoryStream, Subjects: []string{HistorySubjectPrefix + ">"},
		MaxMsgsPerSubject: 1, Discard: jetstream.DiscardOld, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, tasksStream(Config{Replicas: 1, DedupWindow: time.Minute})); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := readRecord(ctx, nc, "", "t1"); ok || err != nil {
		t.Fatalf("read of no record = %v, %v", ok, err)
	}
	rec := TaskInfo{ID: "t1", Queue: "orders", State: StateFailed, Attempts: 1}
	m, _ := recordMsg(rec, 0)
	ack1, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, m); !writtenFirst(err) {
		t.Fatalf("a second write expecting none = %v, want wrong last sequence", err)
	}
	got, seq, ok, err := readRecord(ctx, nc, "", "t1")
	if err != nil || !ok || seq != ack1.Sequence || got.State != StateFailed || got.Queue != "orders" {
		t.Fatalf("read = %+v %d %v %v", got, seq, ok, err)
	}
	rec.State = StateSucceeded
	m, _ = recordMsg(rec, seq)
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("a write expecting the last record: %v", err)
	}
	if got, _, _, _ := readRecord(ctx, nc, "orders", "t1"); got.State != StateSucceeded {
		t.Fatalf("after the second write: %+v", got)
	}
	task := taskMsg(&TaskInfo{ID: "t1", Queue: "orders", Type: "x"}, nil, nil)
	if _, err := js.PublishMsg(ctx, task); err != nil {
		t.Fatal(err)
	}
	again := taskMsg(&TaskInfo{ID: "t1", Queue: "orders", Type: "x"}, nil, nil)
	again.Header.Set(jetstream.MsgIDHeader, "another")
	if _, err := js.PublishMsg(ctx, again); !liveTwin(err) {
		t.Fatalf("a second message of a live task = %v, want wrong last sequence", err)
	}
	if m, err := readLast(ctx, nc, Stream, TaskSubjectPrefix+"*.t1"); err != nil || m == nil || m.Header.Get(HeaderID) != "t1" {
		t.Fatalf("the task's message read by id across queues: %v, %v", m, err)
	}
}
