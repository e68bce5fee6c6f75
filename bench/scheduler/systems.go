package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler"
)

// system is a task queue under test. Every scenario uses a queue of its
// own (a fresh name), so that scenarios do not see each other's tasks.
type system interface {
	name() string
	// enqueue submits one task to queue, to run at runAt (zero: now).
	enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error
	// work runs n workers on queue, calling handle with each task's payload,
	// until the returned stop is called.
	work(ctx context.Context, queue string, n int, handle func([]byte)) (stop func(), err error)
	close()
}

// meshSystem is the mesh scheduler: a scheduler.Server in this process on a
// connection of its own, submits through scheduler.Client on another, and
// scheduler.Worker on a third.
type meshSystem struct {
	url    string
	srv    *scheduler.Server
	conns  []*nats.Conn
	client *scheduler.Client
	// result is what each task's handler sets as its result (soak mode);
	// nil: none.
	result []byte
}

// newMesh starts the scheduler's service in this process with cfg (the
// table's rows: the defaults) and a Client on a connection of its own,
// which submits straight to JetStream when direct.
func newMesh(ctx context.Context, url string, cfg scheduler.Config, direct bool) (*meshSystem, error) {
	m := &meshSystem{url: url}
	nc, err := m.connect("bench-scheduler-service")
	if err != nil {
		return nil, err
	}
	// Every mesh node ensures the event stream: the task events are
	// stored, as in a deployment.
	js, err := jetstream.New(nc)
	if err == nil {
		_, err = bus.EnsureEventStream(ctx, js, bus.EventStreamConfig{})
	}
	if err != nil {
		m.close()
		return nil, fmt.Errorf("event stream: %w", err)
	}
	if m.srv, err = scheduler.New(nc, cfg); err != nil {
		m.close()
		return nil, err
	}
	if err := m.srv.Start(ctx); err != nil {
		m.close()
		return nil, err
	}
	cnc, err := m.connect("bench-scheduler-client")
	if err != nil {
		m.close()
		return nil, err
	}
	m.client = newClient(cnc, direct)
	return m, nil
}

func (m *meshSystem) connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect(m.url, nats.Name(name), nats.MaxReconnects(-1))
	if err == nil {
		m.conns = append(m.conns, nc)
	}
	return nc, err
}

func (m *meshSystem) name() string { return meshName }

func (m *meshSystem) enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error {
	_, err := m.client.Submit(ctx, scheduler.SubmitRequest{Queue: queue, Type: "noop", Payload: payload, RunAt: bus.Time{Time: runAt}})
	return err
}

// meshPrefetch is -mesh-prefetch: the mesh workers' WorkerConfig.Prefetch
// (zero: the worker's default).
var meshPrefetch int

func (m *meshSystem) work(ctx context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	nc, err := m.connect("bench-scheduler-worker")
	if err != nil {
		return nil, err
	}
	w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: map[string]int{queue: n}, Prefetch: meshPrefetch})
	if err != nil {
		return nil, err
	}
	w.Handle("noop", func(_ context.Context, t *scheduler.Task) error {
		if m.result != nil {
			t.SetResult(m.result)
		}
		handle(t.Payload)
		return nil
	})
	if err := w.Start(ctx); err != nil {
		return nil, err
	}
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Stop(sctx)
		nc.Close()
	}, nil
}

func (m *meshSystem) close() {
	if m.srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = m.srv.Stop(sctx)
		cancel()
	}
	for _, nc := range m.conns {
		nc.Close()
	}
}

// asynqSystem is asynq on Redis, with its defaults (it polls Redis for
// ready tasks and for due scheduled tasks).
type asynqSystem struct {
	redis  asynq.RedisClientOpt
	client *asynq.Client
}

func newAsynq(addr string) (*asynqSystem, error) {
	opt := asynq.RedisClientOpt{Addr: addr}
	a := &asynqSystem{redis: opt, client: asynq.NewClient(opt)}
	if err := a.client.Ping(); err != nil {
		a.client.Close()
		return nil, fmt.Errorf("asynq: redis at %s: %w", addr, err)
	}
	return a, nil
}

func (a *asynqSystem) name() string { return asynqName }

func (a *asynqSystem) enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error {
	opts := []asynq.Option{asynq.Queue(queue), asynq.MaxRetry(3)}
	if !runAt.IsZero() {
		opts = append(opts, asynq.ProcessAt(runAt))
	}
	_, err := a.client.EnqueueContext(ctx, asynq.NewTask("noop", payload), opts...)
	return err
}

func (a *asynqSystem) work(_ context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	srv := asynq.NewServer(a.redis, asynq.Config{
		Concurrency: n,
		Queues:      map[string]int{queue: 1},
		Logger:      quietLogger{},
		LogLevel:    asynq.ErrorLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("noop", func(_ context.Context, t *asynq.Task) error {
		handle(t.Payload())
		return nil
	})
	if err := srv.Start(mux); err != nil {
		return nil, err
	}
	return srv.Shutdown, nil
}

func (a *asynqSystem) close() { a.client.Close() }

type quietLogger struct{}

func (quietLogger) Debug(...any) {}
func (quietLogger) Info(...any)  {}
func (quietLogger) Warn(...any)  {}
func (quietLogger) Error(...any) {}
func (quietLogger) Fatal(...any) {}

// floorSystem is a bare JetStream work queue: publish, and a durable pull
// consumer per queue with n goroutines acking. Delayed tasks use the
// server's own schedule (@at with the exact instant), with nothing to
// hold them back: the floor of what NATS alone gives.
type floorSystem struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
}

const floorStream = "BENCH_TASKS_FLOOR"

func newFloor(ctx context.Context, url string) (*floorSystem, error) {
	nc, err := nats.Connect(url, nats.Name("bench-scheduler-floor"))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = js.DeleteStream(ctx, floorStream)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: floorStream, Subjects: []string{"bench.floor.>"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, AllowMsgSchedules: true, AllowRollup: true,
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &floorSystem{nc: nc, js: js, stream: st}, nil
}

func (f *floorSystem) name() string { return floorName }

func (f *floorSystem) enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error {
	if runAt.IsZero() {
		_, err := f.js.Publish(ctx, "bench.floor.q."+queue, payload)
		return err
	}
	m := nats.NewMsg("bench.floor.at." + queue + "." + nuid.Next())
	m.Data = payload
	m.Header.Set("Nats-Schedule", "@at "+runAt.UTC().Format(time.RFC3339Nano))
	m.Header.Set("Nats-Schedule-Target", "bench.floor.q."+queue)
	_, err := f.js.PublishMsg(ctx, m)
	return err
}

func (f *floorSystem) work(ctx context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	return f.consume(ctx, queue, n, func(msg jetstream.Msg) {
		handle(msg.Data())
		_ = msg.Ack()
	})
}

// consume runs n goroutines calling fn with the messages of queue's
// durable pull consumer.
func (f *floorSystem) consume(ctx context.Context, queue string, n int, fn func(jetstream.Msg)) (func(), error) {
	cons, err := f.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: strings.ReplaceAll(queue, ".", "_"), FilterSubject: "bench.floor.q." + queue, AckPolicy: jetstream.AckExplicitPolicy,
		MaxAckPending: 10_000,
	})
	if err != nil {
		return nil, err
	}
	// The pull options of scheduler.Worker: with nats.go's defaults (a 30 s
	// pull expiry) the iterator stops pulling now and then until the expiry
	// (bench/README.md, scheduler).
	it, err := cons.Messages(jetstream.PullMaxMessages(n), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return nil, err
	}
	// One reader (Next is not for concurrent use), n handlers.
	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(msgs)
		for {
			msg, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			if err == nil {
				msgs <- msg
			}
		}
	})
	for range n {
		wg.Go(func() {
			for msg := range msgs {
				fn(msg)
			}
		})
	}
	return func() { it.Stop(); wg.Wait() }, nil
}

func (f *floorSystem) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = f.js.DeleteStream(ctx, floorStream)
	f.nc.Close()
}
