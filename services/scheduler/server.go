package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	// Zero: 3 (DefaultMaxRetries; the Client's direct path assumes it).
	DefaultMaxRetries int
	// DefaultTimeout applies to a task submitted without timeout_ms. Zero:
	// 30 minutes (DefaultTimeout; the Client's direct path assumes it).
	DefaultTimeout time.Duration
	// MaxPayload bounds a task's payload. Zero: 256 KiB (DefaultMaxPayload;
	// the Client's direct path assumes it).
	MaxPayload int
	// MaxResult bounds the result kept in a task's record; a longer one is
	// truncated. Workers apply it (WorkerConfig.MaxResult). Zero: 16 KiB.
	MaxResult int
	// Retention is how long the record of a task's outcome is kept, at
	// most (HistoryStream's MaxAge). Zero: 24 hours.
	Retention time.Duration
	// HistoryMaxBytes bounds the task records (HistoryStream): past it the
	// oldest records go first, so finished tasks never block new work.
	// Zero: 1 GiB.
	HistoryMaxBytes int64
	// DeadRetention is how long dead tasks stay in the dead-letter stream.
	// Zero: 7 days.
	DeadRetention time.Duration
	// AckWait of the queues' consumers: a worker that goes silent (no
	// progress report) for this long loses its task to another. Workers
	// report progress at a third of it. Zero: 30s.
	AckWait time.Duration
	// MaxDeliver of the queues' consumers: a backstop for tasks whose
	// workers never finish them (they die, or do not speak the protocol);
	// past it the server's max-deliveries advisory makes the task dead.
	// Per-task retries (max_retries) are enforced by the workers before it.
	// Zero: MaxRetries + 2.
	MaxDeliver int
	// DedupWindow of the task stream: a task id published twice within it
	// is stored once. Zero: 2 minutes.
	DedupWindow time.Duration
	// Lead is how long before run_at the server's schedule releases a
	// delayed task to the scheduler, which holds it on a timer of its own
	// until run_at. At least 250ms (the server's schedule timer
	// resolution). Zero: 1s.
	Lead time.Duration
	// MaxConcurrent bounds the requests served at once. Zero: 1024.
	MaxConcurrent int
	// Logger, zero: no logs. Observer, zero: none.
	Logger   zerolog.Logger
	Observer bus.Observer
}

// Defaults of Config and of a task, which the Client's direct path
// assumes of the service.
const (
	DefaultMaxRetries = 3
	DefaultTimeout    = 30 * time.Minute
	DefaultMaxPayload = 256 << 10
	DefaultMaxResult  = 16 << 10
)

func (c *Config) defaults() {
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.DefaultMaxRetries <= 0 {
		c.DefaultMaxRetries = DefaultMaxRetries
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = DefaultTimeout
	}
	if c.MaxPayload <= 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.MaxResult <= 0 {
		c.MaxResult = DefaultMaxResult
	}
	if c.Retention <= 0 {
		c.Retention = 24 * time.Hour
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
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 1024
	}
}

// Server is one instance of the scheduler service. Several may run at once:
// a queued task is its message in its queue, a finished one its record in
// HistoryStream; an instance's memory holds only the delayed tasks it is
// about to release.
type Server struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	writes *bus.Writes // the messages of a batch, pipelined
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
	consumes   []jetstream.ConsumeContext

	mu      sync.Mutex
	held    map[*held]struct{} // delayed tasks on their timers
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// New returns a scheduler service instance ready to Start.
func New(nc *nats.Conn, cfg Config) (*Server, error) {
	cfg.defaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &Server{nc: nc, js: js, cfg: cfg, log: cfg.Logger.With().Str("service", "scheduler").Logger(),
		held: map[*held]struct{}{}, stop: make(chan struct{})}
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

// tasksStream is the configuration of Stream. A queued task is its
// message, one subject per task (mesh.tasks.<queue>.<id>), which holds
// one message: a task's message is stored only if its subject holds none
// (it carries Nats-Expected-Last-Subject-Sequence 0), so a second message
// of a live task is refused, and a submit sent again within the
// deduplication window is answered as a duplicate. (Refusing it with
// DiscardNewPerSubject would do the same without the header, but
// nats-server refuses discard new on a stream with message schedules.)
func tasksStream(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              Stream,
		Description:       "Mesh task queues (mesh.tasks.<queue>.<id>), delayed-task schedules and staging, periodic schedules",
		Subjects:          []string{TaskSubjectPrefix + ">", atPrefix + ">", duePrefix + ">", everyPrefix + ">", tickPrefix + ">"},
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		Duplicates:        cfg.DedupWindow,
		MaxMsgsPerSubject: 1,
		// A task's message is read by its id (status, cancel).
		AllowDirect: true,
		// A periodic schedule's new definition replaces the old one.
		AllowRollup: true,
		// Message schedules fire delayed and periodic tasks.
		AllowMsgSchedules: true,
	}
}

// queueConsumer is the configuration of a queue's durable consumer, on
// its tasks' subjects.
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
	cfg := queueConsumer(queue, s.cfg.AckWait, s.cfg.MaxDeliver)
	_, err := s.tasks.CreateConsumer(ctx, cfg)
	if errors.Is(err, jetstream.ErrConsumerExists) {
		// A queue of the store's first version filtered mesh.tasks.<queue>:
		// moved to its tasks' subjects, paused or not as it was.
		var c jetstream.Consumer
		if c, err = s.tasks.Consumer(ctx, queue); err == nil && c.CachedInfo().Config.FilterSubject != cfg.FilterSubject {
			cfg.PauseUntil = c.CachedInfo().Config.PauseUntil
			_, err = s.tasks.UpdateConsumer(ctx, cfg)
		}
	}
	if err != nil {
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
