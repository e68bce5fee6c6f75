package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/meshkit/mesh/pkg/bus"
)

// stateFloorSystem is the floor plus the stored writes the v1 design asks of
// any scheduler on it, made the cheapest way, by the producer and the
// worker themselves with no service between them: a task's state in a KV
// bucket configured as MESH_TASK_STATE, written before the task is
// enqueued (so that they cannot drift), when it starts and when it ends
// (with its retention as a per-key TTL), and an event per change captured
// by MESH_EVENTS. The worker writes the running state without waiting for
// it and waits for both states before it acknowledges the task (a task's
// outcome must be stored before its message goes). It keeps no other
// promise of the scheduler (no start gate, retries, cancellation): it
// measures what the writes alone cost, a ceiling for any design on
// JetStream that keeps them.
type stateFloorSystem struct {
	*floorSystem
	kv jetstream.KeyValue
}

const stateFloorBucket = "BENCH_TASK_STATE"

func newStateFloor(ctx context.Context, url string) (*stateFloorSystem, error) {
	f, err := newFloor(ctx, url)
	if err != nil {
		return nil, err
	}
	s := &stateFloorSystem{floorSystem: f}
	_ = f.js.DeleteKeyValue(ctx, stateFloorBucket)
	s.kv, err = f.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: stateFloorBucket, History: 1, LimitMarkerTTL: time.Minute, Storage: jetstream.FileStorage,
	})
	if err == nil {
		_, err = bus.EnsureEventStream(ctx, f.js, bus.EventStreamConfig{})
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *stateFloorSystem) name() string { return stateFloorName }

// state is a task state of about the size the scheduler writes.
func state(id, queue, what string) []byte {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	return fmt.Appendf(nil, `{"id":%q,"queue":%q,"type":"noop","state":%q,"attempts":1,"max_retries":3,"timeout_ms":60000,"created_at":%q,"started_at":%q}`,
		id, queue, what, now, now)
}

// stateWrite is the message that writes task id's state what (data); an
// outcome's is kept for a day, as the scheduler keeps finished tasks.
func stateWrite(id, what string, data []byte) *nats.Msg {
	m := nats.NewMsg("$KV." + stateFloorBucket + ".t." + id)
	m.Data = data
	if what == "succeeded" {
		m.Header.Set(jetstream.MsgTTLHeader, "24h")
	}
	return m
}

// eventPrefix is the subject prefix of floor + state's events, which
// MESH_EVENTS captures.
const eventPrefix = "mesh.events.benchfloor."

func (s *stateFloorSystem) event(id, queue, what string) {
	_ = s.nc.Publish(eventPrefix+what, state(id, queue, what))
}

func (s *stateFloorSystem) enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error {
	if !runAt.IsZero() {
		return s.floorSystem.enqueue(ctx, queue, payload, runAt)
	}
	id := nuid.Next()
	if _, err := s.kv.Put(ctx, "t."+id, state(id, queue, "queued")); err != nil {
		return err
	}
	m := nats.NewMsg("bench.floor.q." + queue)
	m.Header.Set(jetstream.MsgIDHeader, id)
	m.Data = payload
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		return err
	}
	s.event(id, queue, "submitted")
	return nil
}

func (s *stateFloorSystem) work(ctx context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	return s.consume(ctx, queue, n, func(msg jetstream.Msg) {
		id := taskID(msg)
		running, err := s.js.PublishMsgAsync(stateWrite(id, "running", state(id, queue, "running")))
		s.event(id, queue, "started")
		handle(msg.Data())
		var finished jetstream.PubAckFuture
		if err == nil {
			finished, err = s.js.PublishMsgAsync(stateWrite(id, "succeeded", state(id, queue, "succeeded")))
		}
		s.event(id, queue, "succeeded")
		if err == nil && acked(running) && acked(finished) {
			_ = msg.Ack()
		}
	})
}

// taskID is the id of a task enqueued by enqueue, or the stream sequence
// of a delayed one (the floor's schedules carry no id).
func taskID(msg jetstream.Msg) string {
	if id := msg.Headers().Get(jetstream.MsgIDHeader); id != "" {
		return id
	}
	meta, err := msg.Metadata()
	if err != nil {
		return "unknown"
	}
	return strconv.FormatUint(meta.Sequence.Stream, 10)
}

// acked waits for an asynchronous publish's acknowledgement.
func acked(f jetstream.PubAckFuture) bool {
	select {
	case <-f.Ok():
		return true
	case <-f.Err():
		return false
	}
}

func (s *stateFloorSystem) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.js.DeleteKeyValue(ctx, stateFloorBucket)
	s.floorSystem.close()
}
