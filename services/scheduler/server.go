package scheduler

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
)

// Version is the version of the scheduler service.
const Version = "0.1.0"

// Config configures a Server.
type Config struct {
	// Replicas of the streams and the bucket (3 on a 3-node cluster). Zero: 1.
	Replicas int
	// DefaultMaxRetries applies to a task submitted without max_retries.
	// Zero: 3.
	DefaultMaxRetries int
	// DefaultTimeout applies to a task submitted without timeout_ms. Zero:
	// 30 minutes.
	DefaultTimeout time.Duration
	// MaxPayload bounds a task's payload. Zero: 256 KiB.
	MaxPayload int
	// MaxResult bounds the result kept in a task's state; a longer one is
	// truncated. Zero: 16 KiB.
	MaxResult int
	// Retention is how long the state of a finished task (succeeded, dead,
	// cancelled) is kept, at most: the oldest go first when the bucket
	// needs room (StateMaxBytes). Zero: 24 hours.
	Retention time.Duration
	// StateMaxBytes bounds the state bucket. Past 80% of it the oldest
	// finished states are deleted; submits are refused (429) only while
	// live tasks hold more than 90% of it. Zero: 1 GiB.
	StateMaxBytes int64
	// CleanEvery: how often an instance checks whether the state bucket
	// holds more than 80% of StateMaxBytes, and if so deletes the oldest
	// finished states (doc.go, "Finished tasks never block new work").
	// Zero: 5s.
	CleanEvery time.Duration
	// CacheMaxBytes bounds the memory of the instance's cache of task
	// states (an estimate of their size in bytes; results and payloads are
	// never cached); the oldest entries go first. Zero: 32 MiB.
	CacheMaxBytes int64
	// HistoryMaxBytes bounds the task records (HistoryStream): past it the
	// oldest records go first. Zero: 1 GiB.
	HistoryMaxBytes int64
	// DeadRetention is how long dead tasks stay in the dead-letter stream.
	// Zero: 7 days.
	DeadRetention time.Duration
	// AckWait of the queues' consumers: a worker that goes silent (no
	// progress report) for this long loses its task to another. Workers
	// report progress at a third of it. Zero: 30s.
	AckWait time.Duration
	// MaxDeliver of the queues' consumers: a backstop for tasks whose
	// workers never report (they die, or do not speak the protocol); past
	// it the server's max-deliveries advisory makes the task dead. Per-task
	// retries (max_retries) are enforced before it. Zero: MaxRetries + 2.
	MaxDeliver int
	// DedupWindow of the task stream: a task id published twice within it
	// is stored once. Zero: 2 minutes.
	DedupWindow time.Duration
	// Lead is how long before run_at the server's schedule releases a
	// delayed task to the scheduler, which holds it on a timer of its own
	// until run_at. At least 250ms (the server's schedule timer
	// resolution). Zero: 1s.
	Lead time.Duration
	// RepairAfter: a task still waiting this long after its submit has its
	// message published again by any instance, in case the instance that
	// submitted it died between writing its state and publishing it (see
	// doc.go); the deduplication drops the copy otherwise. Every instance
	// looks every RepairAfter. Less than a third of DedupWindow. Zero: 20s.
	RepairAfter time.Duration
	// MaxConcurrent bounds the requests served at once. Zero: 1024.
	MaxConcurrent int
	// Logger, zero: no logs. Observer, zero: none.
	Logger   zerolog.Logger
	Observer bus.Observer
}

func (c *Config) defaults() {
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.DefaultMaxRetries <= 0 {
		c.DefaultMaxRetries = 3
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = 30 * time.Minute
	}
	if c.MaxPayload <= 0 {
		c.MaxPayload = 256 << 10
	}
	if c.MaxResult <= 0 {
		c.MaxResult = 16 << 10
	}
	if c.Retention <= 0 {
		c.Retention = 24 * time.Hour
	}
	if c.StateMaxBytes <= 0 {
		c.StateMaxBytes = 1 << 30
	}
	if c.CleanEvery <= 0 {
		c.CleanEvery = 5 * time.Second
	}
	if c.CacheMaxBytes <= 0 {
		c.CacheMaxBytes = 32 << 20
	}
	if c.HistoryMaxBytes <= 0 {
		c.HistoryMaxBytes = 1 << 30
	}
	if c.DeadRetention <= 0 {
		c.DeadRetention = 7 * 24 * time.Hour
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = MaxRetries + 2
	}
	if c.DedupWindow <= 0 {
		c.DedupWindow = 2 * time.Minute
	}
	if c.Lead <= 0 {
		c.Lead = time.Second
	}
	c.Lead = max(c.Lead, 250*time.Millisecond)
	if c.RepairAfter <= 0 {
		c.RepairAfter = 20 * time.Second
	}
	c.RepairAfter = min(c.RepairAfter, c.DedupWindow/3)
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 1024
	}
}

// Server is one instance of the scheduler service. Several may run at once:
// every state is in JetStream; an instance's memory holds only the delayed
// tasks it is about to release.
type Server struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	writes *bus.Writes // states whose acknowledgements are answered in callbacks
	cfg    Config
	log    zerolog.Logger
	svc    *bus.Service
	events *bus.Events

	kv         jetstream.KeyValue
	wrapStates func(jetstream.KeyValue) jetstream.KeyValue // tests: faults of the bucket
	tasks      jetstream.Stream
	history    jetstream.Stream
	dead       jetstream.Stream
	queues     sync.Map // queue name -> struct{}: consumers known to exist
	facts      sync.Map // queue name -> *queueFacts: what reports are checked against
	consumes   []jetstream.ConsumeContext

	// states caches the states this instance wrote or read, with their
	// revisions, to save a read before a compare-and-set (a stale entry
	// only makes the compare-and-set fail, and the state is read again).
	states *stateCache
	clean  cleaner

	mu      sync.Mutex
	held    map[*held]struct{} // delayed tasks on their timers
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// kvPrefix is the subject prefix of the state bucket's keys.
const kvPrefix = "$KV." + Bucket + "."

// New returns a scheduler service instance ready to Start.
func New(nc *nats.Conn, cfg Config) (*Server, error) {
	cfg.defaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &Server{nc: nc, js: js, cfg: cfg, log: cfg.Logger.With().Str("service", "scheduler").Logger(),
		held: map[*held]struct{}{}, stop: make(chan struct{}), states: newStateCache(cfg.CacheMaxBytes)}
	s.clean.kick = make(chan struct{}, 1)
	if s.writes, err = bus.NewWrites(nc, bus.DefaultTimeout); err != nil {
		return nil, err
	}
	s.svc, err = bus.NewService(nc, bus.Config{
		Name:            "scheduler",
		Version:         Version,
		Description:     "Delayed, periodic and retried tasks on JetStream work queues",
		MaxConcurrent:   cfg.MaxConcurrent,
		MaxRequestBytes: max(cfg.MaxPayload, 1<<20) + 64<<10, // a batch: up to 1 MiB
		Logger:          cfg.Logger,
		Observer:        cfg.Observer,
		Endpoints: []bus.Endpoint{
			{Name: "submit", Subject: SubjectSubmit, Handler: bus.Typed(s.submit)},
			{Name: "status", Subject: SubjectStatus, Handler: bus.Typed(s.status)},
			{Name: "cancel", Subject: SubjectCancel, Handler: bus.Typed(s.cancel)},
			{Name: "list", Subject: SubjectList, Handler: bus.Typed(s.list)},
			{Name: "queues", Subject: SubjectQueues, Handler: bus.Typed(s.listQueues)},
			{Name: "pause", Subject: SubjectPause, Handler: bus.Typed(s.pause)},
			{Name: "resume", Subject: SubjectResume, Handler: bus.Typed(s.resume)},
			{Name: "schedules_add", Subject: SubjectAddSched, Handler: bus.Typed(s.addSchedule)},
			{Name: "schedules_list", Subject: SubjectListSched, Handler: bus.Typed(s.listSchedules)},
			{Name: "schedules_rm", Subject: SubjectRmSched, Handler: bus.Typed(s.rmSchedule)},
			{Name: "dead_list", Subject: SubjectDeadList, Handler: bus.Typed(s.deadList)},
			{Name: "dead_requeue", Subject: SubjectDeadRequeue, Handler: bus.Typed(s.deadRequeue)},
			{Name: "dead_delete", Subject: SubjectDeadDelete, Handler: bus.Typed(s.deadDelete)},
			{Name: "started", Subject: SubjectStarted, Handler: s.startedNow, Inline: true},
			{Name: "finished", Subject: SubjectFinished, Handler: s.finishedNow, Inline: true},
		},
	})
	if err != nil {
		return nil, err
	}
	s.events = bus.NewEvents(nc, "task", s.svc.ID())
	return s, nil
}

// Start ensures the streams, the bucket and the scheduler's consumers, and
// starts serving.
func (s *Server) Start(ctx context.Context) error {
	var err error
	s.tasks, err = s.js.CreateOrUpdateStream(ctx, tasksStream(s.cfg))
	if err != nil {
		return fmt.Errorf("scheduler: stream %s: %w", Stream, err)
	}
	s.history, err = s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              HistoryStream,
		Description:       "Mesh task records (mesh.history.<queue>.<id>): each task's last outcome, the oldest going first",
		Subjects:          []string{HistorySubjectPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: 1,
		MaxAge:            s.cfg.Retention,
		MaxBytes:          s.cfg.HistoryMaxBytes,
		Storage:           jetstream.FileStorage,
		Replicas:          s.cfg.Replicas,
		AllowDirect:       true,
	})
	if err != nil {
		return fmt.Errorf("scheduler: stream %s: %w", HistoryStream, err)
	}
	s.dead, err = s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadStream,
		Description: "Mesh dead tasks (mesh.dead.<queue>) and the max-deliveries advisories of " + Stream,
		Subjects:    []string{DeadSubjectPrefix + "*", advisoryPrefix + "*"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    s.cfg.Replicas,
		MaxAge:      s.cfg.DeadRetention,
		Duplicates:  s.cfg.DedupWindow,
	})
	if err != nil {
		return fmt.Errorf("scheduler: stream %s: %w", DeadStream, err)
	}
	s.kv, err = s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         Bucket,
		Description:    "Mesh unique keys: u.<queue>.<hash>, each for its unique window",
		History:        1,
		LimitMarkerTTL: time.Minute,
		Replicas:       s.cfg.Replicas,
		Storage:        jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("scheduler: bucket %s: %w", Bucket, err)
	}
	if s.wrapStates != nil {
		s.kv = s.wrapStates(s.kv)
	}
	staging, err := s.tasks.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        stagingConsumer,
		Description:    "Delayed tasks due soon, and ticks of periodic schedules, for the scheduler instances",
		FilterSubjects: []string{duePrefix + ">", tickPrefix + ">"},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        stagingAckWait,
		MaxAckPending:  100_000,
	})
	if err != nil {
		return fmt.Errorf("scheduler: staging consumer: %w", err)
	}
	advisories, err := s.dead.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       advisoryConsumer,
		Description:   "Max-deliveries advisories of the task queues, for the scheduler instances",
		FilterSubject: advisoryPrefix + "*",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("scheduler: advisory consumer: %w", err)
	}
	cc, err := staging.Consume(s.onDue, jetstream.PullMaxMessages(1000), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	s.consumes = append(s.consumes, cc)
	cc, err = advisories.Consume(s.onAdvisory, jetstream.PullMaxMessages(100), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		s.stopConsumes()
		return fmt.Errorf("scheduler: %w", err)
	}
	s.consumes = append(s.consumes, cc)
	if err := s.svc.Start(ctx); err != nil {
		s.stopConsumes()
		return err
	}
	s.wg.Add(1)
	go s.cleanLoop()
	return nil
}

func (s *Server) stopConsumes() {
	for _, cc := range s.consumes {
		cc.Stop()
	}
	for _, cc := range s.consumes {
		<-cc.Closed()
	}
	s.consumes = nil
}

// Stop stops serving. Delayed tasks this instance holds are handed back to
// the staging consumer for another instance.
func (s *Server) Stop(ctx context.Context) error {
	err := s.svc.Stop(ctx)
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return err
	}
	s.stopped = true
	close(s.stop)
	holding := s.held
	s.held = map[*held]struct{}{}
	s.mu.Unlock()
	s.stopConsumes()
	for h := range holding {
		if h.timer.Stop() {
			_ = h.msg.Nak()
			s.wg.Done()
		}
	}
	s.wg.Wait()
	return err
}

// Done is closed once the service has stopped.
func (s *Server) Done() <-chan struct{} { return s.svc.Done() }

// ID is this instance's id.
func (s *Server) ID() string { return s.svc.ID() }

// record is a task's state as kept in the bucket under t.<id>.
type record struct {
	TaskInfo
	Backoff *Backoff `json:"backoff,omitempty"`
	// Seq is the stream sequence of the task's message in its queue, when
	// known (to remove a cancelled task at once).
	Seq uint64 `json:"seq,omitempty"`
	// Delivery is the delivery count (the report's attempt) of the start
	// last accepted, at Seq: an outcome report must name that delivery.
	Delivery int `json:"delivery,omitempty"`
	// Interrupted counts the deliveries a worker gave back unfinished at
	// its shutdown: they do not count as attempts.
	Interrupted int `json:"interrupted,omitempty"`
	// Requeues counts the times the task was requeued from the dead
	// letters: each death's dead letter has an id of its own.
	Requeues int `json:"requeues,omitempty"`
	// Pending is the message that enqueues the task, kept until its
	// publication is confirmed, so that any instance can repeat it.
	Pending *pendingMsg `json:"pending,omitempty"`
}

type pendingMsg struct {
	Subject string      `json:"subject"`
	Header  nats.Header `json:"header"`
	Data    []byte      `json:"data,omitempty"`
}

func (p *pendingMsg) msg() *nats.Msg {
	m := nats.NewMsg(p.Subject)
	for k, v := range p.Header {
		m.Header[k] = append([]string(nil), v...)
	}
	m.Data = p.Data
	return m
}

func stateKey(id string) string { return "t." + id }

func uniqueKey(queue, key string) string {
	h := sha256.Sum256([]byte(key))
	return "u." + queue + "." + hex.EncodeToString(h[:16])
}

// errNoChange stops an update without writing.
var errNoChange = errors.New("no change")

func (s *Server) cache(rec *record, rev uint64) {
	if terminal(rec.State) && rec.Result != "" {
		// No results in memory: a finished task's state is read when
		// needed (its next write, if any, must keep the result).
		s.uncache(rec.ID)
		return
	}
	c := *rec
	if c.Pending != nil {
		// Not the payload: whoever needs the message reads the state.
		c.Pending = &pendingMsg{}
	}
	s.states.put(&c, rev)
}

// noteSeq records in the cached state at revision rev where the task's
// message is, which no write tells: a cancel that this instance serves
// removes the message from the queue at once (one served by another
// instance leaves it for the first worker that gets it to drop).
func (s *Server) noteSeq(id string, rev, seq uint64) { s.states.noteSeq(id, rev, seq) }

func (s *Server) cached(id string) (record, uint64, bool) { return s.states.get(id) }

func (s *Server) uncache(id string) { s.states.remove(id) }

// get reads a task's state.
func (s *Server) get(ctx context.Context, id string) (record, uint64, error) {
	e, err := s.kv.Get(ctx, stateKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return record{}, 0, ErrNotFound.With("no task %s (finished tasks are kept for %s)", id, s.cfg.Retention)
	}
	if err != nil {
		return record{}, 0, fmt.Errorf("scheduler: reading task %s: %w", id, err)
	}
	var rec record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return record{}, 0, fmt.Errorf("scheduler: task %s: corrupt state: %w", id, err)
	}
	s.cache(&rec, e.Revision())
	return rec, e.Revision(), nil
}

// put writes a task's state if it is still at revision rev (0: a new key).
// A finished task's state expires after the retention.
func (s *Server) put(ctx context.Context, rec *record, rev uint64) (uint64, error) {
	m, err := s.stateWrite(rec)
	if err != nil {
		return 0, err
	}
	ack, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev))
	if err := s.wrote(rec, ack, err); err != nil {
		return 0, err
	}
	s.wroteBytes(len(m.Data))
	return ack.Sequence, nil
}

// wrote keeps the cache in step with the outcome of a state write: rec at
// its new revision, or no entry after a conflict (the cached revision is
// stale). It returns err.
func (s *Server) wrote(rec *record, ack *jetstream.PubAck, err error) error {
	if err != nil {
		if isConflict(err) {
			s.uncache(rec.ID)
		}
		return err
	}
	s.cache(rec, ack.Sequence)
	return nil
}

// stateWrite is the message that writes a task's state; a finished
// task's state expires after the retention.
func (s *Server) stateWrite(rec *record) (*nats.Msg, error) {
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(kvPrefix + stateKey(rec.ID))
	m.Data = data
	if terminal(rec.State) {
		m.Header.Set(jetstream.MsgTTLHeader, s.cfg.Retention.String())
	}
	return m, nil
}

// create writes the first state of a task.
func (s *Server) create(ctx context.Context, rec *record) (uint64, error) {
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Create(ctx, stateKey(rec.ID), data)
	if err == nil {
		s.cache(rec, rev)
		s.wroteBytes(len(data))
	}
	return rev, err
}

// update applies fn to a task's state and writes it with a compare-and-set,
// retrying on conflicts. fn returns errNoChange to stop without writing
// (update then returns the state read and nil). A report refused on the
// cached state (ErrStaleReport) is decided again on the state read.
func (s *Server) update(ctx context.Context, id string, fn func(*record) error) (record, error) {
	for attempt := 0; ; attempt++ {
		rec, rev, ok := s.cached(id)
		fromCache := ok && attempt == 0
		if !fromCache {
			var err error
			if rec, rev, err = s.get(ctx, id); err != nil {
				return rec, err
			}
		}
		if err := fn(&rec); err != nil {
			if errors.Is(err, errNoChange) {
				return rec, nil
			}
			if fromCache && errors.Is(err, ErrStaleReport) {
				continue
			}
			return rec, err
		}
		_, err := s.put(ctx, &rec, rev)
		if err == nil {
			return rec, nil
		}
		if isFull(err) && attempt < 2 {
			// Finished states make room; the write is tried again.
			s.full(ctx)
			continue
		}
		if !isConflict(err) || attempt >= 20 {
			return rec, fmt.Errorf("scheduler: writing task %s: %w", id, err)
		}
	}
}

// isConflict reports a failed compare-and-set.
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == 10164)
}

func (s *Server) emit(what string, rec *record, extra map[string]any) {
	data := map[string]any{"id": rec.ID, "queue": rec.Queue, "type": rec.Type, "state": rec.State, "attempts": rec.Attempts}
	for k, v := range extra {
		data[k] = v
	}
	_ = s.events.Emit(what, data)
}

// tasksStream is the configuration of Stream. A queued task is its
// message, one subject per task (mesh.tasks.<queue>.<id>): a subject holds
// one message, and a second one for a live task is refused
// (DiscardNewPerSubject), while the deduplication window answers a submit
// sent again as a duplicate.
func tasksStream(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:                 Stream,
		Description:          "Mesh task queues (mesh.tasks.<queue>.<id>), delayed-task schedules and staging, periodic schedules",
		Subjects:             []string{TaskSubjectPrefix + ">", atPrefix + ">", duePrefix + ">", everyPrefix + ">", tickPrefix + ">"},
		Retention:            jetstream.WorkQueuePolicy,
		Storage:              jetstream.FileStorage,
		Replicas:             cfg.Replicas,
		Duplicates:           cfg.DedupWindow,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		// A periodic schedule's new definition replaces the old one.
		AllowRollup: true,
		// Message schedules fire delayed and periodic tasks.
		AllowMsgSchedules: true,
	}
}

// queueConsumer is the configuration of a queue's durable consumer.
func queueConsumer(queue string, ackWait time.Duration, maxDeliver int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       queue,
		Description:   "Mesh task queue " + queue,
		FilterSubject: TaskSubjectPrefix + queue + ".*",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    maxDeliver,
		MaxAckPending: 10_000,
	}
}

// ensureQueue creates a queue's consumer unless it exists.
func (s *Server) ensureQueue(ctx context.Context, queue string) error {
	if _, ok := s.queues.Load(queue); ok {
		return nil
	}
	_, err := s.tasks.CreateConsumer(ctx, queueConsumer(queue, s.cfg.AckWait, s.cfg.MaxDeliver))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
		return fmt.Errorf("scheduler: queue %s: %w", queue, err)
	}
	s.queues.Store(queue, struct{}{})
	return nil
}

func (s *Server) maxRetries(r *int) int {
	if r == nil {
		return s.cfg.DefaultMaxRetries
	}
	return *r
}

func (s *Server) timeoutMs(ms int64) int64 {
	if ms == 0 {
		return s.cfg.DefaultTimeout.Milliseconds()
	}
	return ms
}

// taskHeader is the header of a task's message.
func taskHeader(rec *record) nats.Header {
	h := nats.Header{}
	h.Set(HeaderID, rec.ID)
	h.Set(HeaderType, rec.Type)
	h.Set(HeaderQueue, rec.Queue)
	h.Set(HeaderMaxRetries, strconv.Itoa(rec.MaxRetries))
	h.Set(HeaderTimeout, strconv.FormatInt(rec.TimeoutMs, 10))
	if rec.Schedule != "" {
		h.Set(HeaderSchedule, rec.Schedule)
	}
	return h
}

// noStreamWait bounds how long a submit sends its writes again while no
// stream takes them, well within a client's default 5 s.
const noStreamWait = 2 * time.Second

func (s *Server) submit(ctx context.Context, r *SubmitRequest) (*SubmitReply, error) {
	if r.Tasks != nil {
		return s.submitBatch(ctx, r.Tasks), nil
	}
	return s.submitOne(ctx, r)
}

// batchWorkers bounds the tasks of a batch submitted at once: their writes
// are pipelined, each task's in the order a single submit makes them.
const batchWorkers = 64

// submitBatch submits each task of a batch on its own, up to batchWorkers
// at a time, and answers each.
func (s *Server) submitBatch(ctx context.Context, tasks []SubmitRequest) *SubmitReply {
	results := make([]SubmitResult, len(tasks))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(batchWorkers, len(tasks)) {
		wg.Go(func() {
			for i := range next {
				t := &tasks[i]
				err := t.Validate()
				if err == nil && t.Tasks != nil {
					err = ErrInvalid.With("a task of a batch holds no tasks")
				}
				var r *SubmitReply
				if err == nil {
					r, err = s.submitOne(ctx, t)
				}
				if err != nil {
					results[i] = SubmitResult{ID: t.ID, Error: bus.AsError(err)}
					continue
				}
				results[i] = SubmitResult{ID: r.ID, State: r.State, RunAt: r.RunAt}
			}
		})
	}
	for i := range tasks {
		next <- i
	}
	close(next)
	wg.Wait()
	return &SubmitReply{Tasks: results}
}

func (s *Server) submitOne(ctx context.Context, r *SubmitRequest) (*SubmitReply, error) {
	if len(r.Payload) > s.cfg.MaxPayload {
		return nil, ErrPayloadTooLarge.With("payload of %d bytes exceeds the limit of %d", len(r.Payload), s.cfg.MaxPayload)
	}
	now := time.Now()
	runAt := r.RunAt.Time
	if r.DelayMs > 0 {
		runAt = now.Add(time.Duration(r.DelayMs) * time.Millisecond)
	}
	delayed := !runAt.IsZero() && runAt.After(now)
	id := r.ID
	if id == "" {
		id = nuid.Next()
	}
	rec := record{TaskInfo: TaskInfo{
		ID: id, Queue: r.Queue, Type: r.Type, State: StateQueued,
		MaxRetries: s.maxRetries(r.MaxRetries), TimeoutMs: s.timeoutMs(r.TimeoutMs),
		UniqueKey: r.UniqueKey, CreatedAt: bus.Time{Time: now},
	}, Backoff: r.Backoff}
	h := taskHeader(&rec)
	var m *nats.Msg
	if delayed {
		rec.State, rec.RunAt = StateScheduled, bus.Time{Time: runAt}
		h.Set(HeaderRunAt, runAt.UTC().Format(time.RFC3339Nano))
		// A distinct id: the task's own id belongs to its queue message.
		h.Set(jetstream.MsgIDHeader, "due-"+rec.ID)
		if fire := runAt.Add(-s.cfg.Lead); fire.After(now.Add(s.cfg.Lead / 2)) {
			// The server's schedule releases it to staging Lead early.
			m = &nats.Msg{Subject: atPrefix + r.Queue + "." + rec.ID, Header: h, Data: r.Payload}
			h.Set("Nats-Schedule", "@at "+fire.UTC().Format(time.RFC3339Nano))
			h.Set("Nats-Schedule-Target", duePrefix+r.Queue)
		} else {
			// Due too soon for a schedule: staged at once.
			m = &nats.Msg{Subject: duePrefix + r.Queue, Header: h, Data: r.Payload}
		}
	} else {
		h.Set(jetstream.MsgIDHeader, rec.ID)
		m = &nats.Msg{Subject: TaskSubjectPrefix + r.Queue, Header: h, Data: r.Payload}
	}
	if err := s.submitRoom(ctx); err != nil {
		return nil, err
	}
	if err := s.ensureQueue(ctx, r.Queue); err != nil {
		return nil, err
	}
	// While a stream elects a leader no stream takes a write: each write
	// is sent again until then (see bus.RetryNoStream).
	until := now.Add(noStreamWait)
	var ukey string
	if r.UniqueKey != "" {
		ukey = uniqueKey(r.Queue, r.UniqueKey)
		if err := s.claimUnique(ctx, ukey, r, rec.ID, until); err != nil {
			return nil, err
		}
	}
	// The state first, holding the message; then the message; then the
	// state without it. See doc.go: the queue and the states do not drift.
	rec.Pending = &pendingMsg{Subject: m.Subject, Header: m.Header, Data: m.Data}
	var rev uint64
	err := bus.RetryNoStream(ctx, until, func() (err error) {
		rev, err = s.create(ctx, &rec)
		if isFull(err) {
			s.full(ctx)
			rev, err = s.create(ctx, &rec)
		}
		return err
	})
	// No stream responding means nothing was stored: only other unanswered
	// writes may have landed.
	if err != nil && bus.Unanswered(err) && !bus.NoStream(err) {
		rev, err = s.settleCreate(ctx, &rec, err)
		if errors.Is(err, errUnsettled) {
			// The key stays with a task that may exist; claimUnique
			// frees it after RepairAfter if the task does not.
			return nil, bus.ErrUnavailable.With("task %s: writing its state got no answer, and whether it stands is unknown: look it up before submitting again", rec.ID)
		}
	}
	if errors.Is(err, jetstream.ErrKeyExists) && r.ID != "" {
		// The client's id names a task already: the same submit sent
		// again, answered with that task (its unique key, if any, names it
		// too), or another task's id, refused.
		return s.submitted(ctx, r)
	}
	if err != nil {
		s.giveBackUnique(ctx, ukey)
		return nil, fmt.Errorf("scheduler: writing the task's state: %w", err)
	}
	// The state carries the message: if this publication gets no answer
	// (or did land, unanswered), the repair publishes it again and the
	// deduplication absorbs a second copy, so the task exists from here.
	// Any other failure (a refusal from the stream, a message too large to
	// send) would fail again: it undoes the submit.
	var ack *jetstream.PubAck
	err = bus.RetryNoStream(ctx, until, func() (err error) {
		ack, err = s.js.PublishMsg(ctx, m)
		return err
	})
	switch {
	case err != nil && !bus.Unanswered(err):
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if derr := s.kv.Purge(cctx, stateKey(rec.ID), jetstream.LastRevision(rev)); derr != nil {
			return nil, bus.ErrUnavailable.With("task %s: enqueueing failed (%v) and its state could not be taken back (%v)", rec.ID, err, derr)
		}
		s.giveBackUnique(ctx, ukey)
		return nil, fmt.Errorf("scheduler: enqueueing: %w", err)
	case err != nil:
		s.log.Warn().Err(err).Str("task", rec.ID).Int64("repair_in_ms", s.cfg.RepairAfter.Milliseconds()).Msg("enqueueing got no answer; the repair enqueues the task")
	}
	// The state keeps the message until the task starts (or is released,
	// for a delayed task): the write that moves it on drops it. A task
	// still waiting after RepairAfter has it dropped by the repair, whose
	// publication the deduplication absorbs. No write is spent on
	// confirming each enqueue.
	if err == nil && !delayed {
		s.noteSeq(rec.ID, rev, ack.Sequence)
	}
	s.emit("submitted", &rec, nil)
	return &SubmitReply{ID: rec.ID, State: rec.State, RunAt: rec.RunAt}, nil
}

// submitted answers a submit whose client-made id names an existing task:
// with that task when it is the same submit (same queue and type), with
// ErrDuplicate otherwise.
func (s *Server) submitted(ctx context.Context, r *SubmitRequest) (*SubmitReply, error) {
	rec, _, err := s.get(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	if rec.Queue != r.Queue || rec.Type != r.Type {
		return nil, ErrDuplicate.With("id %s names a task of queue %s and type %s; %s%s", r.ID, rec.Queue, rec.Type, duplicateMarker, rec.ID)
	}
	return &SubmitReply{ID: rec.ID, State: rec.State, RunAt: rec.RunAt}, nil
}

// errUnsettled: settleCreate could not tell whether the state stands.
var errUnsettled = errors.New("unsettled")

// settleCreate decides a task's first state write that got no answer
// (cause): it may have landed. If it did, it returns its revision and the
// submit goes on, so that the task is not submitted twice when the caller
// tries again with its unique key given back. If it did not, a purge of the
// key makes sure it never lands later (a create expects no earlier write of
// the key), and settleCreate returns cause: the submit fails cleanly. When
// neither can be told, it returns errUnsettled.
func (s *Server) settleCreate(ctx context.Context, rec *record, cause error) (uint64, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	e, err := s.kv.Get(cctx, stateKey(rec.ID))
	if err == nil {
		if data, merr := json.Marshal(rec); merr != nil || !bytes.Equal(data, e.Value()) {
			// Not this write: a task the client's id named already.
			return 0, jetstream.ErrKeyExists
		}
		s.cache(rec, e.Revision())
		return e.Revision(), nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, errUnsettled
	}
	if err := s.kv.Purge(cctx, stateKey(rec.ID)); err != nil {
		return 0, errUnsettled
	}
	return 0, cause
}

// giveBackUnique removes the unique key of a submit that failed, if it has
// one. Best effort: a key left behind is taken over by a later submit once
// it is seen to name no task (claimUnique).
func (s *Server) giveBackUnique(ctx context.Context, ukey string) {
	if ukey == "" {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = s.kv.Purge(cctx, ukey)
}

// claimUnique takes a queue's unique key for a new task, or answers
// ErrDuplicate with the task that holds it. A key naming no task was left
// by a submit that failed before writing the state and could not give the
// key back; once it is older than RepairAfter (longer than a submit takes
// between its two writes) it is taken over. A key older than the retention
// may have outlived its finished task's state, so it stands.
func (s *Server) claimUnique(ctx context.Context, ukey string, r *SubmitRequest, id string, until time.Time) error {
	uf := time.Duration(r.UniqueForMs) * time.Millisecond
	if uf == 0 {
		uf = time.Hour
	}
	for attempt := 0; ; attempt++ {
		err := bus.RetryNoStream(ctx, until, func() error {
			_, err := s.kv.Create(ctx, ukey, []byte(id), jetstream.KeyTTL(uf))
			return err
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) || attempt == 2 {
			return fmt.Errorf("scheduler: unique key: %w", err)
		}
		e, err := s.kv.Get(ctx, ukey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired or given back meanwhile
		}
		if err != nil {
			return fmt.Errorf("scheduler: unique key: %w", err)
		}
		existing := string(e.Value())
		if existing == id {
			return nil // this submit's own, sent again with its id
		}
		_, _, err = s.get(ctx, existing)
		age := time.Since(e.Created())
		switch {
		case err == nil || !errors.Is(err, ErrNotFound) || age >= s.cfg.Retention:
			return ErrDuplicate.With("queue %s already has a task with unique key %q; %s%s", r.Queue, r.UniqueKey, duplicateMarker, existing)
		case age < s.cfg.RepairAfter:
			return bus.ErrUnavailable.With("queue %s: a task with unique key %q is being submitted; try again in %s", r.Queue, r.UniqueKey, s.cfg.RepairAfter)
		}
		// Left behind: take it over unless someone else just did.
		if err := s.kv.Purge(ctx, ukey, jetstream.LastRevision(e.Revision())); err != nil && !isConflict(err) {
			return fmt.Errorf("scheduler: unique key: %w", err)
		}
	}
}

func (s *Server) status(ctx context.Context, r *StatusRequest) (*TaskInfo, error) {
	rec, _, err := s.get(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	return &rec.TaskInfo, nil
}

func (s *Server) cancel(ctx context.Context, r *CancelRequest) (*CancelReply, error) {
	var was string
	rec, err := s.update(ctx, r.ID, func(rec *record) error {
		was = rec.State
		if terminal(rec.State) {
			return ErrFinished.With("task %s has %s", rec.ID, rec.State)
		}
		rec.State, rec.FinishedAt, rec.Pending, rec.NextRetryAt = StateCancelled, bus.Time{Time: time.Now()}, nil, bus.Time{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The state says cancelled: a worker that gets the task is told to drop
	// it. Removing the message now only saves that delivery.
	switch was {
	case StateScheduled:
		if err := s.tasks.Purge(ctx, jetstream.WithPurgeSubject(atPrefix+rec.Queue+"."+rec.ID)); err != nil {
			s.log.Warn().Err(err).Str("task", rec.ID).Msg("cannot remove the schedule of a cancelled task; it is dropped when due")
		}
	case StateQueued, StateFailed:
		if rec.Seq != 0 {
			_ = s.tasks.DeleteMsg(ctx, rec.Seq)
		}
	}
	// Workers running it cancel its handler's context on this event.
	s.emit("cancelled", &rec, map[string]any{"was": was})
	return &CancelReply{ID: rec.ID, Was: was, Done: true}, nil
}

// backoff is the delay before retrying after the given attempt.
func (s *Server) backoff(b *Backoff, attempt int) time.Duration {
	kind, initial, maxMs := "exponential", int64(1000), int64(600_000)
	if b != nil {
		if b.Kind != "" {
			kind = b.Kind
		}
		if b.InitialMs > 0 {
			initial = b.InitialMs
		}
		if b.MaxMs > 0 {
			maxMs = b.MaxMs
		}
	}
	d := time.Duration(initial) * time.Millisecond
	if kind == "constant" {
		return d
	}
	for i := 1; i < attempt && d < time.Duration(maxMs)*time.Millisecond; i++ {
		d *= 2
	}
	d = min(d, time.Duration(maxMs)*time.Millisecond)
	// ±25% jitter, so that tasks failing together do not retry together.
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return max(d+jitter, time.Millisecond)
}
