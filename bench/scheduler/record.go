package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// rawSystem is a bare JetStream work queue the fastest plain way: a
// producer publishes every task with PublishAsync from one goroutine and
// waits for the acknowledgements at the end; workers get messages from
// nats.go's Consume with its default batch (500), n goroutines run them
// and acknowledge without waiting (Ack, not AckSync). What JetStream
// itself drains here, the denominator of the drain goal.
type rawSystem struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	prefix string
}

const rawStream = "BENCH_TASKS_RAW"

// connectAsync connects a system of its own, with room for 4,096
// unacknowledged asynchronous publishes.
func connectAsync(url, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name(name))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

func newRaw(ctx context.Context, url string) (*rawSystem, error) {
	nc, js, err := connectAsync(url, "bench-scheduler-raw")
	if err != nil {
		return nil, err
	}
	_ = js.DeleteStream(ctx, rawStream)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: rawStream, Subjects: []string{"bench.raw.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage,
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &rawSystem{nc: nc, js: js, stream: st, prefix: "bench.raw.q."}, nil
}

func (r *rawSystem) name() string { return rawName }

func (r *rawSystem) immediateOnly() {}

func (r *rawSystem) enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error {
	if !runAt.IsZero() {
		return errors.New("raw: no delayed tasks")
	}
	_, err := r.js.Publish(ctx, r.prefix+queue, payload)
	return err
}

// enqueueAll publishes every payload with PublishAsync from this one
// goroutine and waits for all the acknowledgements.
func (r *rawSystem) enqueueAll(ctx context.Context, queue string, payloads func(int) []byte, n int) (int, error) {
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		f, err := r.js.PublishAsync(r.prefix+queue, payloads(i), jetstream.WithStallWait(10*time.Second))
		if err != nil {
			return 0, err
		}
		futures = append(futures, f)
	}
	failed := 0
	for _, f := range futures {
		select {
		case <-f.Ok():
		case <-f.Err():
			failed++
		case <-ctx.Done():
			return failed, ctx.Err()
		}
	}
	return failed, nil
}

func (r *rawSystem) work(ctx context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	return consumeDefault(ctx, r.stream, strings.ReplaceAll(queue, ".", "_"), r.prefix+queue, n, func(msg jetstream.Msg) {
		handle(msg.Data())
		_ = msg.Ack()
	})
}

// consumeDefault runs n goroutines calling fn with the messages of a
// durable pull consumer on filter, fetched by Consume with nats.go's
// default batch.
func consumeDefault(ctx context.Context, st jetstream.Stream, durable, filter string, n int, fn func(jetstream.Msg)) (func(), error) {
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: durable, FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy,
		MaxAckPending: 10_000,
	})
	if err != nil {
		return nil, err
	}
	msgs := make(chan jetstream.Msg, n)
	cc, err := cons.Consume(func(m jetstream.Msg) { msgs <- m })
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for msg := range msgs {
				fn(msg)
			}
		})
	}
	return func() {
		cc.Drain()
		<-cc.Closed()
		close(msgs)
		wg.Wait()
	}, nil
}

func (r *rawSystem) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.js.DeleteStream(ctx, rawStream)
	r.nc.Close()
}

// recordSystem is the candidate design of the scheduler's v2 store, with
// no service in between: the task message is the record of a live task
// (subject bench.rec.tasks.<queue>.<id>, the id made by the producer,
// metadata in headers, MaxMsgsPerSubject 1 with DiscardNewPerSubject so a
// second publish of the same id is refused while the task is queued), and
// a finished task costs one more stored write, its outcome in a
// limits-retention history stream (bench.rec.history.<queue>.<id>,
// MaxMsgsPerSubject 1, bounded in bytes and age, discarding the oldest).
// The outcome is published asynchronously by the handler's goroutine and
// one goroutine per worker acknowledges each task when its outcome's
// acknowledgement has come back, in order: the write leaves the handler's
// path but a task's message never goes before its outcome is stored.
// Producers publish synchronously, one task at a time (an SDK's Submit);
// workers use Consume with its default batch, as rawSystem does.
type recordSystem struct {
	raw     *rawSystem // its stream and connection (not embedded: not an allEnqueuer)
	history jetstream.Stream
}

const recordHistory = "BENCH_TASK_HISTORY"

func newRecord(ctx context.Context, url string) (*recordSystem, error) {
	nc, js, err := connectAsync(url, "bench-scheduler-record")
	if err != nil {
		return nil, err
	}
	_ = js.DeleteStream(ctx, rawStream)
	_ = js.DeleteStream(ctx, recordHistory)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: rawStream, Subjects: []string{"bench.rec.tasks.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, MaxMsgsPerSubject: 1, Discard: jetstream.DiscardNew, DiscardNewPerSubject: true,
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	h, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: recordHistory, Subjects: []string{"bench.rec.history.>"}, Retention: jetstream.LimitsPolicy,
		Storage: jetstream.FileStorage, MaxMsgsPerSubject: 1, MaxBytes: 1 << 30, MaxAge: 24 * time.Hour,
		Discard: jetstream.DiscardOld,
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &recordSystem{raw: &rawSystem{nc: nc, js: js, stream: st, prefix: "bench.rec.tasks."}, history: h}, nil
}

func (r *recordSystem) name() string { return recordName }

func (r *recordSystem) immediateOnly() {}

func (r *recordSystem) enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error {
	if !runAt.IsZero() {
		return errors.New("record: no delayed tasks")
	}
	id := nuid.Next()
	m := nats.NewMsg(r.raw.prefix + queue + "." + id)
	m.Header.Set("Mesh-Task-Type", "noop")
	m.Header.Set("Mesh-Task-Max-Retries", "3")
	m.Header.Set("Mesh-Task-Timeout-Ms", "60000")
	m.Header.Set("Mesh-Task-Created", time.Now().UTC().Format(time.RFC3339Nano))
	m.Data = payload
	_, err := r.raw.js.PublishMsg(ctx, m)
	return err
}

// outcome is a finished task's history record, of about the size the
// scheduler would write.
func outcome(id, queue string, attempt uint64) []byte {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	return fmt.Appendf(nil, `{"id":%q,"queue":%q,"type":"noop","state":"succeeded","attempts":%d,"max_retries":3,"created_at":%q,"finished_at":%q}`,
		id, queue, attempt, now, now)
}

// recordWritesHistory is -record-history: false measures the record row
// without its outcome write (the per-task subjects alone).
var recordWritesHistory = true

// recordHistoryPerTask is -record-history-per-task: false writes every
// outcome of a queue to one history subject.
var recordHistoryPerTask = true

type pendingAck struct {
	msg jetstream.Msg
	f   jetstream.PubAckFuture
}

func (r *recordSystem) work(ctx context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	acks := make(chan pendingAck, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range acks {
			select {
			case <-p.f.Ok():
				_ = p.msg.Ack()
			case <-p.f.Err():
				_ = p.msg.Nak()
			}
		}
	}()
	if !recordWritesHistory {
		close(acks)
		<-done
		return consumeDefault(ctx, r.raw.stream, strings.ReplaceAll(queue, ".", "_"), r.raw.prefix+queue+".>", n, func(msg jetstream.Msg) {
			handle(msg.Data())
			_ = msg.Ack()
		})
	}
	stop, err := consumeDefault(ctx, r.raw.stream, strings.ReplaceAll(queue, ".", "_"), r.raw.prefix+queue+".>", n, func(msg jetstream.Msg) {
		handle(msg.Data())
		subj := msg.Subject()
		id := subj[strings.LastIndexByte(subj, '.')+1:]
		var attempt uint64 = 1
		if meta, err := msg.Metadata(); err == nil {
			attempt = meta.NumDelivered
		}
		hsubj := "bench.rec.history." + queue + "." + id
		if !recordHistoryPerTask {
			hsubj = "bench.rec.history." + queue
		}
		hm := nats.NewMsg(hsubj)
		hm.Data = outcome(id, queue, attempt)
		f, err := r.raw.js.PublishMsgAsync(hm, jetstream.WithStallWait(10*time.Second))
		if err != nil {
			_ = msg.Nak()
			return
		}
		acks <- pendingAck{msg, f}
	})
	if err != nil {
		close(acks)
		return nil, err
	}
	return func() {
		stop()
		close(acks)
		<-done
	}, nil
}

func (r *recordSystem) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.raw.js.DeleteStream(ctx, recordHistory)
	r.raw.close()
}
