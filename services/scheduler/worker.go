package scheduler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
)

// Handler runs one attempt of a task. ctx is cancelled when the task's
// timeout passes, when the task is cancelled, and when the worker gives up
// waiting for it at shutdown. A nil error is success; SkipRetry(err) makes
// the failure final; any other error is retried with backoff until the
// task's retries are spent.
type Handler func(ctx context.Context, t *Task) error

// Task is one delivery of a task to a worker.
type Task struct {
	ID      string
	Queue   string
	Type    string
	Payload []byte
	// Attempt is the delivery count: 1 for the first delivery. It counts
	// the deliveries given back at a worker's shutdown, which the service
	// does not count against max_retries.
	Attempt    int
	MaxRetries int
	Schedule   string // the periodic schedule that made it, if any

	mu     sync.Mutex
	result []byte
}

// SetResult sets the result kept in the task's state when the attempt
// succeeds (truncated to the service's bound).
func (t *Task) SetResult(b []byte) {
	t.mu.Lock()
	t.result = b
	t.mu.Unlock()
}

// ErrSkipRetry marks a failure that must not be retried; see SkipRetry.
var ErrSkipRetry = errors.New("scheduler: skip retry")

type skipRetry struct{ err error }

func (e skipRetry) Error() string        { return e.err.Error() }
func (e skipRetry) Unwrap() []error      { return []error{e.err, ErrSkipRetry} }
func (e skipRetry) Is(target error) bool { return target == ErrSkipRetry }

// SkipRetry wraps err so that the task fails for good: it goes to the dead
// letters without further attempts.
func SkipRetry(err error) error {
	if err == nil {
		err = errors.New("failed")
	}
	return skipRetry{err}
}

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	// Queues to serve, with the number of tasks run at once for each. A
	// concurrency ≤ 0: 1.
	Queues map[string]int
	// Name of the worker, shown in the task events. Zero: the connection's
	// name, else host/pid.
	Name string
	// ShutdownGrace bounds how long Stop waits for the tasks in flight
	// before cancelling their contexts. Zero: 10s.
	ShutdownGrace time.Duration
	// Logger, zero: no logs.
	Logger zerolog.Logger
}

// Worker runs tasks from queues with handlers by task type. It speaks the
// worker protocol of schemas/README.md.
type Worker struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	cfg      WorkerConfig
	log      zerolog.Logger
	handlers map[string]Handler

	mu       sync.Mutex
	running  map[string]context.CancelCauseFunc // by task id
	started  bool
	stopping chan struct{}
	iters    []jetstream.MessagesContext
	sub      *nats.Subscription
	loops    sync.WaitGroup
	inflight sync.WaitGroup // tasks running, and outcomes being reported
	reports  chan struct{}  // bounds the outcomes being reported
	hardStop context.CancelFunc
	hardCtx  context.Context
}

// errCancelled is the cause of a handler context cancelled with its task.
var errCancelled = errors.New("scheduler: task cancelled")

// errShutdown is the cause of a handler context cancelled at shutdown.
var errShutdown = errors.New("scheduler: worker stopped")

// NewWorker returns a worker ready for Handle and Start.
func NewWorker(nc *nats.Conn, cfg WorkerConfig) (*Worker, error) {
	if len(cfg.Queues) == 0 {
		return nil, errors.New("scheduler: a worker needs at least one queue")
	}
	for q := range cfg.Queues {
		if err := CheckQueue(q); err != nil {
			return nil, err
		}
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 10 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name = nc.Opts.Name
	}
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	total := 0
	for _, conc := range cfg.Queues {
		total += max(conc, 1)
	}
	w := &Worker{nc: nc, js: js, cfg: cfg, log: cfg.Logger.With().Str("worker", cfg.Name).Logger(), reports: make(chan struct{}, total),
		handlers: map[string]Handler{}, running: map[string]context.CancelCauseFunc{}, stopping: make(chan struct{})}
	w.hardCtx, w.hardStop = context.WithCancel(context.Background())
	return w, nil
}

// AnyType registers a handler for the task types that have none of their
// own: Handle(AnyType, h).
const AnyType = "*"

// Handle registers the handler of a task type (or of AnyType). Call it
// before Start. A task of a type without a handler fails (and is retried:
// another worker may know the type).
func (w *Worker) Handle(taskType string, h Handler) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handlers[taskType] = h
}

// Start starts pulling from every queue. A queue that does not exist yet
// (nothing was submitted to it: the service creates a queue's consumer on
// the first submit) is looked for again when a task is submitted to it,
// and every second.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return errors.New("scheduler: worker already started")
	}
	w.started = true
	sub, err := w.nc.Subscribe(bus.EventSubject("task", "cancelled"), w.onCancelled)
	if err != nil {
		return err
	}
	w.sub = sub
	for q, conc := range w.cfg.Queues {
		w.loops.Add(1)
		go w.serve(q, max(conc, 1))
	}
	return w.nc.Flush()
}

// serve finds a queue's consumer, then runs its tasks until Stop.
func (w *Worker) serve(queue string, conc int) {
	defer w.loops.Done()
	// Until the queue exists, look again when a task is submitted to it
	// (the submit creates it), and every second.
	sub, submitted, err := signalTaskEvents(w.nc, bus.EventSubject("task", "submitted"), func(_, q string) bool { return q == queue })
	if err == nil {
		defer sub.Unsubscribe()
	}
	var cons jetstream.Consumer
	for {
		ctx, cancel := context.WithTimeout(w.hardCtx, bus.DefaultTimeout)
		var err error
		cons, err = w.js.Consumer(ctx, Stream, queue)
		cancel()
		if err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			w.log.Warn().Err(err).Str("queue", queue).Msg("cannot find the queue; retrying")
		}
		select {
		case <-w.stopping:
			return
		case <-submitted:
		case <-time.After(time.Second):
		}
	}
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	w.mu.Lock()
	select {
	case <-w.stopping:
		w.mu.Unlock()
		return
	default:
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(conc), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		w.mu.Unlock()
		w.log.Error().Err(err).Str("queue", queue).Msg("cannot pull from the queue")
		return
	}
	w.iters = append(w.iters, it)
	w.mu.Unlock()
	w.loop(queue, conc, cons.CachedInfo().Config.AckWait, it)
}

func (w *Worker) onCancelled(m *nats.Msg) {
	id, _, ok := taskOfEvent(m.Data)
	if !ok {
		return
	}
	w.mu.Lock()
	cancel := w.running[id]
	w.mu.Unlock()
	if cancel != nil {
		cancel(errCancelled)
	}
}

// loop pulls a queue's tasks and runs up to conc at once.
func (w *Worker) loop(queue string, conc int, ackWait time.Duration, it jetstream.MessagesContext) {
	slots := make(chan struct{}, conc)
	nakRest := func() {
		for {
			msg, err := it.Next()
			if err != nil {
				return
			}
			_ = msg.Nak()
		}
	}
	for {
		select {
		case slots <- struct{}{}:
		case <-w.stopping:
			nakRest()
			return
		}
		msg, err := it.Next()
		if err != nil {
			<-slots
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || w.nc.IsClosed() {
				return
			}
			// Missed heartbeats and the like: the iterator recovers.
			select {
			case <-w.stopping:
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		select {
		case <-w.stopping:
			_ = msg.Nak()
			<-slots
			nakRest()
			return
		default:
		}
		w.inflight.Add(1)
		go func() {
			defer func() { <-slots; w.inflight.Done() }()
			w.run(queue, ackWait, msg)
		}()
	}
}

// run handles one delivery, following the worker protocol.
func (w *Worker) run(queue string, ackWait time.Duration, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	h := msg.Headers()
	t := &Task{ID: h.Get(HeaderID), Queue: queue, Type: h.Get(HeaderType), Payload: msg.Data(),
		Attempt: int(meta.NumDelivered), Schedule: h.Get(HeaderSchedule)}
	t.MaxRetries, _ = strconv.Atoi(h.Get(HeaderMaxRetries))
	if t.ID == "" {
		w.log.Error().Str("queue", queue).Msg("a message without a task id; terminated")
		_ = msg.TermWithReason("no " + HeaderID)
		return
	}
	// The task can be cancelled from the moment the service hears of its
	// start: a cancel of a running task is announced after that, so the
	// handler's context is in place before the start is reported.
	ctx, cancel := context.WithCancelCause(context.Background())
	w.mu.Lock()
	w.running[t.ID] = cancel
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.running, t.ID)
		w.mu.Unlock()
		cancel(nil)
	}()
	rctx, rcancel := context.WithTimeout(w.hardCtx, bus.DefaultTimeout)
	sr, err := bus.Request[StartedRequest, StartedReply](rctx, w.nc, SubjectStarted, StartedRequest{
		ID: t.ID, Queue: queue, Type: t.Type, Attempt: t.Attempt, StreamSeq: meta.Sequence.Stream, Worker: w.cfg.Name,
	})
	rcancel()
	if errors.Is(err, ErrStaleReport) {
		// Not a delivery the service accepts (a newer one replaced it, or
		// it came back before its ack wait): the message is left alone,
		// and comes back after its ack wait unless another delivery ends.
		w.log.Warn().Err(err).Str("task", t.ID).Msg("the service refused the start; the message is left to its next delivery")
		return
	}
	if err != nil {
		// Without the service's word, the task is not run: its state would
		// not say so.
		w.log.Warn().Err(err).Str("task", t.ID).Msg("cannot report the start; the task goes back to its queue")
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if !sr.Run {
		w.act(msg, sr.Action, sr.DelayMs)
		return
	}

	timeout, _ := strconv.ParseInt(h.Get(HeaderTimeout), 10, 64)
	if timeout <= 0 {
		timeout = MaxTimeoutMs
	}
	ctx, cancelTimeout := context.WithTimeout(ctx, time.Duration(timeout)*time.Millisecond)
	defer cancelTimeout()
	stopCancel := context.AfterFunc(w.hardCtx, func() { cancel(errShutdown) })
	defer stopCancel()

	// Keep the delivery while the handler runs.
	done := make(chan struct{})
	var progress sync.WaitGroup
	progress.Go(func() {
		tick := time.NewTicker(max(ackWait/3, 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				_ = msg.InProgress()
			}
		}
	})
	herr := w.call(ctx, t)
	close(done)
	progress.Wait()

	fin := FinishedRequest{ID: t.ID, Queue: queue, Attempt: t.Attempt, StreamSeq: meta.Sequence.Stream}
	if herr != nil {
		fin.Error = herr.Error()
		if fin.Error == "" {
			fin.Error = "failed"
		}
		switch cause := context.Cause(ctx); {
		case errors.Is(herr, ErrSkipRetry):
			fin.SkipRetry = true
		case errors.Is(cause, errShutdown):
			// Not the task's fault: run it again elsewhere, without
			// counting an attempt.
			fin.Error, fin.Interrupted = "interrupted: the worker stopped", true
		case errors.Is(cause, errCancelled):
			fin.Error, fin.SkipRetry = "cancelled: "+fin.Error, true
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			fin.Error = fmt.Sprintf("timed out after %dms: %s", timeout, fin.Error)
		}
	} else {
		t.mu.Lock()
		fin.Result = t.result
		t.mu.Unlock()
	}
	// The slot goes to the next task while the outcome is reported; the
	// message is acknowledged once it is recorded. Reports in flight are
	// bounded like the tasks.
	w.reports <- struct{}{}
	w.inflight.Add(1)
	go func() {
		defer func() { <-w.reports; w.inflight.Done() }()
		w.report(msg, fin)
	}()
}

// report sends an attempt's outcome, then does what the service says with
// the message. If the outcome cannot be recorded, the message is nak'd: the
// task runs again.
func (w *Worker) report(msg jetstream.Msg, fin FinishedRequest) {
	for attempt := 0; ; attempt++ {
		rctx, rcancel := context.WithTimeout(context.Background(), bus.DefaultTimeout)
		fr, err := bus.Request[FinishedRequest, FinishedReply](rctx, w.nc, SubjectFinished, fin)
		rcancel()
		if err == nil {
			w.act(msg, fr.Action, fr.DelayMs)
			return
		}
		if errors.Is(err, ErrStaleReport) {
			// Another delivery of the task replaced this one: the message
			// is its worker's now.
			w.log.Warn().Err(err).Str("task", fin.ID).Msg("the service refused the outcome; the message is left to the task's newer delivery")
			return
		}
		if attempt >= 2 || w.nc.IsClosed() || errors.Is(err, bus.ErrInvalid) || errors.Is(err, bus.ErrNotFound) {
			w.log.Warn().Err(err).Str("task", fin.ID).Msg("cannot report the outcome; the task goes back to its queue")
			_ = msg.NakWithDelay(time.Second)
			return
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
}

// call runs the handler, turning a panic into a final error.
func (w *Worker) call(ctx context.Context, t *Task) (err error) {
	w.mu.Lock()
	h := w.handlers[t.Type]
	if h == nil {
		h = w.handlers[AnyType]
	}
	w.mu.Unlock()
	if h == nil {
		return fmt.Errorf("no handler for task type %q in worker %s", t.Type, w.cfg.Name)
	}
	defer func() {
		if r := recover(); r != nil {
			err = SkipRetry(fmt.Errorf("handler panicked: %v", r))
		}
	}()
	return h(ctx, t)
}

func (w *Worker) act(msg jetstream.Msg, action string, delayMs int64) {
	switch action {
	case ActionAck:
		_ = msg.Ack()
	case ActionTerm:
		_ = msg.Term()
	default:
		_ = msg.NakWithDelay(time.Duration(max(delayMs, 0)) * time.Millisecond)
	}
}

// Stop stops pulling, naks the tasks pulled but not started, and waits for
// the tasks in flight to finish. If ctx ends or ShutdownGrace passes
// first, their contexts are cancelled and their messages nak'd (they run
// again elsewhere); Stop then returns once the handlers have returned.
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	select {
	case <-w.stopping:
		w.mu.Unlock()
		return nil
	default:
	}
	close(w.stopping)
	for _, it := range w.iters {
		it.Drain()
	}
	if w.sub != nil {
		_ = w.sub.Unsubscribe()
	}
	w.mu.Unlock()
	w.loops.Wait()
	idle := make(chan struct{})
	go func() { w.inflight.Wait(); close(idle) }()
	grace := time.NewTimer(w.cfg.ShutdownGrace)
	defer grace.Stop()
	var err error
	select {
	case <-idle:
	case <-grace.C:
		err = errors.New("scheduler: tasks still running after the shutdown grace; cancelled")
	case <-ctx.Done():
		err = ctx.Err()
	}
	w.hardStop()
	<-idle
	return err
}
