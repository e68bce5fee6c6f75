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
	// Attempt is 1 for the first attempt: the message's delivery count, or
	// the attempts the task's record counts plus one if more (a requeued
	// task's message counts from 1 again), less the deliveries given back
	// by stopping workers (unstarted or interrupted), which the record
	// counts as returned. A delivery count that started over (the queue's
	// consumer made again) shows here; the record counts right.
	Attempt    int
	MaxRetries int
	Schedule   string // the periodic schedule that made it, if any

	mu     sync.Mutex
	result []byte
}

// SetResult sets the result kept in the task's record when the attempt
// succeeds (truncated to WorkerConfig.MaxResult).
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
	// Prefetch is how many of a queue's tasks are pulled ahead of its
	// free slots, so that a slot that frees gets its next task without a
	// round trip; the pull asks for more once half of them are taken, so
	// a short-task drain costs one pull round trip per Prefetch/2 tasks.
	// A task pulled waits in the worker for a slot while its ack wait
	// runs, up to about Prefetch/concurrency task durations: past the
	// queue's ack wait (Config.AckWait, 30s by default) it is delivered
	// again meanwhile (the second delivery finishes once, but runs).
	// The first progress report of a task comes a third of the ack wait
	// after it starts, so a task pulled is safe while it waits less than
	// two thirds of the ack wait. Zero: twice the queue's concurrency,
	// safe for tasks up to a third of the ack wait. Queues of short tasks
	// drain faster with a larger one: 256 for 16 slots (safe for tasks
	// shorter than about the ack wait / 24, 1.25s with a 30s ack wait)
	// drained 1.4 times as fast in bench/scheduler (bench/README.md).
	Prefetch int
	// Name of the worker, shown in the task events and records. Zero: the
	// connection's name, else host/pid.
	Name string
	// ShutdownGrace bounds how long Stop waits for the tasks in flight
	// before cancelling their contexts. A task still running when the
	// grace ends is given back and does not count as an attempt. Zero:
	// 10s.
	ShutdownGrace time.Duration
	// MaxResult bounds the result kept in a task's record; a longer one is
	// truncated. Zero: DefaultMaxResult.
	MaxResult int
	// Logger, zero: no logs.
	Logger zerolog.Logger
}

// Worker runs tasks from queues with handlers by task type. It speaks the
// worker protocol of doc.go: no request to the service per task, one
// record written per attempt.
type Worker struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	writes   *bus.Writes // the records, acknowledged in callbacks
	events   *bus.Events
	cfg      WorkerConfig
	log      zerolog.Logger
	handlers map[string]Handler

	mu        sync.Mutex
	running   map[string]context.CancelCauseFunc // by task id
	cancelled cancelledIDs
	started   bool
	stopping  chan struct{}
	iters     map[string]jetstream.MessagesContext // by queue
	sub       *nats.Subscription
	loops     sync.WaitGroup
	inflight  sync.WaitGroup // tasks running, and outcomes being written
	records   chan struct{}  // bounds the records being written
	hardStop  context.CancelFunc
	hardCtx   context.Context
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
	if cfg.MaxResult <= 0 {
		cfg.MaxResult = DefaultMaxResult
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
	writes, err := bus.NewWrites(nc, bus.DefaultTimeout)
	if err != nil {
		return nil, err
	}
	total := 0
	for _, conc := range cfg.Queues {
		total += max(conc, 1)
	}
	w := &Worker{nc: nc, js: js, writes: writes, events: bus.NewEvents(nc, "task", cfg.Name), cfg: cfg,
		log: cfg.Logger.With().Str("worker", cfg.Name).Logger(), records: make(chan struct{}, max(2*total, 256)),
		handlers: map[string]Handler{}, running: map[string]context.CancelCauseFunc{}, stopping: make(chan struct{}),
		iters: map[string]jetstream.MessagesContext{}}
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
		conc = max(conc, 1)
		prefetch := w.cfg.Prefetch
		if prefetch <= 0 {
			prefetch = defaultPrefetch(conc)
		}
		w.loops.Add(1)
		go w.serve(q, conc, prefetch)
	}
	return w.nc.Flush()
}

// defaultPrefetch is the prefetch of a queue of concurrency conc when
// WorkerConfig.Prefetch is zero: see there.
func defaultPrefetch(conc int) int { return 2 * conc }

// serve finds a queue's consumer, then runs its tasks until Stop; it
// finds the consumer again if it goes (deleted, made again).
func (w *Worker) serve(queue string, conc, prefetch int) {
	defer w.loops.Done()
	for {
		cons := w.find(queue)
		if cons == nil {
			return // stopping
		}
		w.mu.Lock()
		select {
		case <-w.stopping:
			w.mu.Unlock()
			return
		default:
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(prefetch), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
		if err != nil {
			w.mu.Unlock()
			w.log.Error().Err(err).Str("queue", queue).Msg("cannot pull from the queue")
			return
		}
		w.iters[queue] = it
		w.mu.Unlock()
		if !w.loop(queue, conc, cons.CachedInfo().Config.AckWait, it) {
			return
		}
		it.Stop()
		w.log.Warn().Str("queue", queue).Msg("the queue's consumer went; looking for it again")
	}
}

// find finds a queue's consumer: until the queue exists, it looks again
// when a task is submitted to it (the submit creates it), and every
// second. It returns nil once the worker stops.
func (w *Worker) find(queue string) jetstream.Consumer {
	sub, submitted, err := signalTaskEvents(w.nc, bus.EventSubject("task", "submitted"), func(_, q string) bool { return q == queue })
	if err == nil {
		defer sub.Unsubscribe()
	}
	for {
		ctx, cancel := context.WithTimeout(w.hardCtx, bus.DefaultTimeout)
		cons, err := w.js.Consumer(ctx, Stream, queue)
		cancel()
		if err == nil {
			return cons
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			w.log.Warn().Err(err).Str("queue", queue).Msg("cannot find the queue; retrying")
		}
		select {
		case <-w.stopping:
			return nil
		case <-submitted:
		case <-time.After(time.Second):
		}
	}
}

// cancelledIDs keeps the ids of the tasks recently cancelled, up to
// maxCancelled, so that a task pulled ahead is not run once cancelled.
type cancelledIDs struct {
	ids  map[string]struct{}
	ring []string
	next int
}

const maxCancelled = 10_000

func (c *cancelledIDs) add(id string) {
	if c.ids == nil {
		c.ids, c.ring = map[string]struct{}{}, make([]string, maxCancelled)
	}
	if _, ok := c.ids[id]; ok {
		return
	}
	delete(c.ids, c.ring[c.next])
	c.ring[c.next] = id
	c.ids[id] = struct{}{}
	c.next = (c.next + 1) % maxCancelled
}

func (c *cancelledIDs) has(id string) bool {
	_, ok := c.ids[id]
	return ok
}

func (w *Worker) onCancelled(m *nats.Msg) {
	id, _, ok := taskOfEvent(m.Data)
	if !ok {
		return
	}
	w.mu.Lock()
	w.cancelled.add(id)
	cancel := w.running[id]
	w.mu.Unlock()
	if cancel != nil {
		cancel(errCancelled)
	}
}

// loop pulls a queue's tasks and runs up to conc at once, until Stop
// (false) or until the queue's consumer goes (true).
func (w *Worker) loop(queue string, conc int, ackWait time.Duration, it jetstream.MessagesContext) bool {
	slots := make(chan struct{}, conc)
	// conc runners, not a goroutine per task: a runner's stack has grown
	// to what a task needs once.
	tasks := make(chan jetstream.Msg)
	defer close(tasks)
	for range conc {
		go func() {
			for msg := range tasks {
				w.run(queue, ackWait, msg)
				<-slots
				w.inflight.Done()
			}
		}()
	}
	// giveBackRest gives back msg (if any) and the tasks pulled but not
	// started; once a record cannot be written, the rest are just nak'd.
	giveBackRest := func(msg jetstream.Msg) {
		written := true
		for {
			if msg != nil && written {
				written = w.giveBackUnstarted(queue, msg)
			} else if msg != nil {
				_ = msg.Nak()
			}
			var err error
			if msg, err = it.Next(); err != nil {
				return
			}
		}
	}
	for {
		select {
		case slots <- struct{}{}:
		case <-w.stopping:
			giveBackRest(nil)
			return false
		}
		msg, err := it.Next()
		if err != nil {
			<-slots
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || w.nc.IsClosed() {
				select {
				case <-w.stopping:
					return false
				default:
					return !w.nc.IsClosed()
				}
			}
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				return true
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
			<-slots
			giveBackRest(msg)
			return false
		default:
		}
		w.inflight.Add(1)
		tasks <- msg // a runner is free, or about to be: a slot is held
	}
}

// delivery is one delivery of a task's message, and what its record
// write expects.
type delivery struct {
	msg     jetstream.Msg
	info    TaskInfo // the task, then its record being written
	backoff *Backoff
	seq     uint64 // the message's stream sequence
	attempt int
	// delivered is the message's delivery count (num_delivered).
	delivered int
	expect    uint64    // the sequence of the task's last record (0: none)
	rec       *TaskInfo // the task's last record read (nil: none, or an earlier task's)
}

// adopt takes in the task's record read at seq: it returns false when the
// record says the task finished (the delivery is dropped). The deliveries
// the record counts as given back are not attempts.
func (d *delivery) adopt(rec *TaskInfo, seq uint64) bool {
	d.expect, d.rec = seq, nil
	if !sameTask(rec, d.info.CreatedAt.Time) {
		return true // an earlier task of the same id: replaced
	}
	if terminal(rec.State) {
		return false
	}
	d.rec, d.info.Returned = rec, rec.Returned
	d.attempt = max(d.delivered-rec.Returned, rec.Attempts+1)
	if rec.State == StateFailed {
		d.info.LastError = rec.LastError
	}
	return true
}

// prepare reads a delivery's task, and the task's record when there may
// be one. It returns nil once it has settled the message (malformed,
// cancelled, finished, or its record unreadable).
func (w *Worker) prepare(queue string, msg jetstream.Msg) *delivery {
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return nil
	}
	h := msg.Headers()
	info, backoff := taskOfMsg(h, meta.Timestamp)
	if info.ID == "" {
		w.log.Error().Str("queue", queue).Msg("a message without a task id; terminated")
		_ = msg.TermWithReason("no " + HeaderID)
		return nil
	}
	info.Queue = queue
	d := &delivery{msg: msg, info: info, backoff: backoff, seq: meta.Sequence.Stream,
		attempt: int(meta.NumDelivered), delivered: int(meta.NumDelivered)}
	d.expect, _ = strconv.ParseUint(h.Get(HeaderRecordSeq), 10, 64)
	w.mu.Lock()
	cancelled := w.cancelled.has(info.ID)
	w.mu.Unlock()
	if cancelled {
		_ = msg.Ack() // its record says cancelled; its message is being removed
		return nil
	}
	if meta.NumDelivered > 1 || d.expect != 0 {
		ctx, cancel := context.WithTimeout(w.hardCtx, bus.DefaultTimeout)
		rec, seq, ok, err := readRecord(ctx, w.nc, queue, info.ID)
		cancel()
		if err != nil {
			w.log.Warn().Err(err).Str("task", info.ID).Msg("cannot read the task's record; it goes back to its queue")
			_ = msg.NakWithDelay(time.Second)
			return nil
		}
		if ok && !d.adopt(&rec, seq) {
			_ = msg.Ack()
			return nil
		}
	}
	return d
}

// run handles one delivery, following the worker protocol.
func (w *Worker) run(queue string, ackWait time.Duration, msg jetstream.Msg) {
	d := w.prepare(queue, msg)
	if d == nil {
		return
	}
	info := d.info
	if d.attempt > d.info.MaxRetries+1 {
		lastErr := d.info.LastError
		if lastErr == "" {
			lastErr = "its retries are spent"
		}
		d.attempt--
		w.outcome(d, StateDead, lastErr, nil)
		return
	}

	t := &Task{ID: info.ID, Queue: queue, Type: info.Type, Payload: msg.Data(), Attempt: d.attempt,
		MaxRetries: info.MaxRetries, Schedule: info.Schedule}
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
	timeout := info.TimeoutMs
	if timeout <= 0 {
		timeout = MaxTimeoutMs
	}
	ctx, cancelTimeout := context.WithTimeout(ctx, time.Duration(timeout)*time.Millisecond)
	defer cancelTimeout()
	stopCancel := context.AfterFunc(w.hardCtx, func() { cancel(errShutdown) })
	defer stopCancel()

	d.info.StartedAt = bus.Time{Time: time.Now()}
	d.info.State, d.info.Attempts, d.info.Worker = StateRunning, d.attempt, w.cfg.Name
	_ = w.events.Emit("started", taskEventOf(&d.info))
	// Keep the delivery while the handler runs.
	stopProgress := inProgress(msg, max(ackWait/3, 10*time.Millisecond))
	herr := w.call(ctx, t)
	stopProgress()

	if herr == nil {
		t.mu.Lock()
		result := t.result
		t.mu.Unlock()
		w.outcome(d, StateSucceeded, "", result)
		return
	}
	msgErr := herr.Error()
	if msgErr == "" {
		msgErr = "failed"
	}
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errShutdown):
		// Not the task's fault: it runs again, elsewhere.
		w.giveBack(d)
	case errors.Is(cause, errCancelled):
		// The cancel wrote its record, and removes its message.
		_ = msg.Ack()
	case errors.Is(herr, ErrSkipRetry):
		w.outcome(d, StateDead, msgErr, nil)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		w.outcome(d, StateFailed, fmt.Sprintf("timed out after %dms: %s", timeout, msgErr), nil)
	default:
		w.outcome(d, StateFailed, msgErr, nil)
	}
}

// inProgress reports msg in progress every period until the function it
// returns is called; none is sent once that returns. A timer, not a
// goroutine per task: most tasks end before the first report.
func inProgress(msg jetstream.Msg, period time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	mu.Lock()
	defer mu.Unlock()
	var tick *time.Timer
	tick = time.AfterFunc(period, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			_ = msg.InProgress()
			tick.Reset(period)
		}
	})
	return func() {
		mu.Lock()
		stopped = true
		tick.Stop()
		mu.Unlock()
	}
}

// outcome records an attempt's outcome (state succeeded, failed or dead)
// and then acks, naks or terms the message. The record is written
// asynchronously: the slot goes to the next task at once, the message is
// settled once the record is stored.
func (w *Worker) outcome(d *delivery, state, lastErr string, result []byte) {
	info := &d.info
	info.Attempts, info.Worker, info.NextRetryAt = d.attempt, w.cfg.Name, bus.Time{}
	info.Result, info.ResultEncoding, info.ResultTruncated = "", "", false
	now := time.Now()
	switch state {
	case StateSucceeded:
		info.LastError = ""
		truncateResult(info, result, w.cfg.MaxResult)
	case StateFailed:
		if d.attempt > info.MaxRetries {
			state = StateDead // its last retry
		}
		info.LastError = truncate(lastErr, MaxErrorLen)
	default:
		info.LastError = truncate(lastErr, MaxErrorLen)
	}
	info.State = state
	var delay time.Duration
	if state == StateFailed {
		delay = retryDelay(d.backoff, d.attempt)
		info.NextRetryAt = bus.Time{Time: now.Add(delay)}
	} else {
		info.FinishedAt = bus.Time{Time: now}
	}
	if state == StateDead {
		// A copy of the message in the dead letters first: the record
		// that says dead points there.
		ctx, cancel := context.WithTimeout(context.Background(), bus.DefaultTimeout)
		m := deadLetter(d.msg.Headers(), d.msg.Data(), info.Queue, info.LastError)
		m.Header.Set(jetstream.MsgIDHeader, deadLetterID(info.ID, d.seq, d.attempt))
		_, err := w.js.PublishMsg(ctx, m)
		cancel()
		if err != nil {
			w.log.Warn().Err(err).Str("task", info.ID).Msg("cannot write the dead letter; the task goes back to its queue")
			_ = d.msg.NakWithDelay(time.Second)
			return
		}
	}
	m, err := recordMsg(*info, d.expect)
	if err != nil {
		_ = d.msg.NakWithDelay(time.Second)
		return
	}
	w.records <- struct{}{}
	w.inflight.Add(1)
	w.writes.Publish(m, func(ack *jetstream.PubAck, err error) {
		switch {
		case err == nil:
			<-w.records
			w.settle(d, delay)
			w.inflight.Done()
		case writtenFirst(err):
			// Someone wrote first: decided again on their record, off
			// the goroutine of the acknowledgements.
			// Its slot is freed first: deciding again takes one.
			<-w.records
			go func() {
				defer w.inflight.Done()
				w.again(d, state, lastErr, result)
			}()
		default:
			<-w.records
			w.log.Warn().Err(err).Str("task", info.ID).Msg("cannot write the task's record; it goes back to its queue")
			_ = d.msg.NakWithDelay(time.Second)
			w.inflight.Done()
		}
	})
}

// settle acks, naks or terms a delivery whose record is stored, and tells.
func (w *Worker) settle(d *delivery, delay time.Duration) {
	switch d.info.State {
	case StateSucceeded:
		_ = d.msg.Ack()
	case StateFailed:
		_ = d.msg.NakWithDelay(delay)
	default:
		_ = d.msg.Term()
	}
	ev := taskEventOf(&d.info)
	switch d.info.State {
	case StateFailed:
		retryIn := delay.Milliseconds()
		ev.Error, ev.RetryInMs = d.info.LastError, &retryIn
	case StateDead:
		ev.Error = d.info.LastError
	}
	_ = w.events.Emit(d.info.State, ev)
}

// again decides an outcome again once its record's write was refused:
// another write came first. A record saying the task finished (a cancel,
// a twin delivery that finished) drops the outcome; a failure recorded by
// another delivery counts as an attempt.
func (w *Worker) again(d *delivery, state, lastErr string, result []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), bus.DefaultTimeout)
	rec, seq, ok, err := readRecord(ctx, w.nc, d.info.Queue, d.info.ID)
	cancel()
	if err != nil {
		w.log.Warn().Err(err).Str("task", d.info.ID).Msg("cannot read the task's record; it goes back to its queue")
		_ = d.msg.NakWithDelay(time.Second)
		return
	}
	if !ok {
		d.expect, d.rec = 0, nil // gone meanwhile (evicted)
	} else if !d.adopt(&rec, seq) {
		_ = d.msg.Ack()
		return
	}
	w.outcome(d, state, lastErr, result)
}

// giveBackUnstarted gives back a delivery pulled and not started; it
// returns false when the task's record could not be written.
func (w *Worker) giveBackUnstarted(queue string, msg jetstream.Msg) bool {
	if d := w.prepare(queue, msg); d != nil {
		return w.giveBack(d)
	}
	return true
}

// giveBack gives a delivery back at shutdown, unstarted or interrupted:
// the task's record counts it as returned (compare-and-set, the rest of
// the record unchanged; queued if the task has none), then the message is
// nak'd, so that its next delivery does not count it as an attempt. If
// the record cannot be written the delivery counts; giveBack then returns
// false unless another write came first.
func (w *Worker) giveBack(d *delivery) bool {
	rec := d.info
	if d.rec != nil {
		rec = *d.rec
	} else {
		rec.State, rec.Attempts, rec.LastError, rec.Worker, rec.StartedAt = StateQueued, 0, "", "", bus.Time{}
	}
	rec.Returned++
	m, err := recordMsg(rec, d.expect)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), bus.DefaultTimeout)
		_, err = w.js.PublishMsg(ctx, m)
		cancel()
	}
	_ = d.msg.Nak()
	if err != nil {
		w.log.Warn().Err(err).Str("task", d.info.ID).Msg("cannot write the record of a task given back; the delivery counts as an attempt")
	}
	return err == nil || writtenFirst(err)
}

// workerEvent is the data of the task events a worker publishes (live,
// not stored unless the events stream keeps task events): a struct, not a
// map, as they are encoded twice per task.
type workerEvent struct {
	ID        string `json:"id"`
	Queue     string `json:"queue"`
	Type      string `json:"type"`
	State     string `json:"state"`
	Attempts  int    `json:"attempts"`
	Worker    string `json:"worker"`
	Schedule  string `json:"schedule,omitempty"`
	Error     string `json:"error,omitempty"`
	RetryInMs *int64 `json:"retry_in_ms,omitempty"`
}

func taskEventOf(info *TaskInfo) *workerEvent {
	return &workerEvent{ID: info.ID, Queue: info.Queue, Type: info.Type, State: info.State,
		Attempts: info.Attempts, Worker: info.Worker, Schedule: info.Schedule}
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

// Stop stops pulling, gives back the tasks pulled but not started, and
// waits for the tasks in flight to finish and their records to be
// written. If ctx ends or ShutdownGrace passes first, their contexts are
// cancelled and their tasks given back (they run again elsewhere); Stop
// then returns once the handlers have returned. A task given back does not
// count as an attempt (its record counts it as returned).
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
