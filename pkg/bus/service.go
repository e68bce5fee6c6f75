package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"
)

// Endpoint is one request/reply endpoint of a service.
type Endpoint struct {
	Name    string // shown by `nats micro info`; letters, digits, '-' and '_'
	Subject string // the subject it listens on
	// Handler is a Handler, or a LegacyHandler until the services that
	// still write one answer through a *Call.
	Handler  any
	Metadata map[string]string
	// NoQueue makes every instance receive every request (for subjects that
	// name one instance). By default instances share requests through the
	// service's queue group.
	NoQueue bool
	// Inline runs the handler in the subscription's callback, one request
	// at a time, without the hand-off to a worker: for handlers that answer
	// from memory in a microsecond or so, or from the acknowledgement of a
	// JetStream write (Writes), where the hand-off would cost more than the
	// work. Such a handler must not block; for a request that needs to, it
	// calls Call.Go, which runs the rest on a worker.
	Inline bool
}

// Observer is told of every request a service served, e.g. to export
// metrics. err is nil for a successful reply. It must be safe for concurrent
// use and fast.
type Observer interface {
	ObserveRequest(service, endpoint string, d time.Duration, err *Error)
}

// Config describes a service.
type Config struct {
	Name        string // service name ([A-Za-z0-9_-]+), e.g. "lock"; required
	Version     string // semantic version, e.g. "0.1.0"; required
	Description string
	Metadata    map[string]string
	Endpoints   []Endpoint
	// QueueGroup shared by the instances of the service. Zero: the name.
	QueueGroup string
	// MaxConcurrent bounds the handlers running at once. When all are busy,
	// further requests wait in a queue of 4×MaxConcurrent, then in the
	// subscriptions' pending buffers. Zero: 256.
	MaxConcurrent int
	// MaxRequestBytes rejects larger request bodies with ErrTooLarge.
	// Zero: no limit beyond the server's max payload.
	MaxRequestBytes int
	// Logger for panics and reply failures. Zero: no logs.
	Logger zerolog.Logger
	// Observer is told of every request. Zero: none.
	Observer Observer
}

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$`)
)

// Service is a request/reply service that speaks the NATS micro protocol:
// `nats micro ls|info|stats|ping` find it, with its version, endpoints and
// per-endpoint request, error and latency figures.
//
// It departs from nats.go/micro in one way: micro runs each endpoint's
// handler serially inside its subscription callback and counts an error only
// if the handler reported it before returning. A Service queues every request
// for worker goroutines, at most Config.MaxConcurrent at once, and counts
// requests, errors and processing time when the reply is sent. It reuses micro's types and
// subjects for discovery, so nothing differs on the wire.
type Service struct {
	nc      *nats.Conn
	cfg     Config
	id      string
	log     zerolog.Logger
	eps     []*endpoint
	ctx     context.Context // handlers' context
	cancel  context.CancelFunc
	started time.Time

	queue   chan job     // requests waiting for a worker
	workers atomic.Int32 // running workers, at most MaxConcurrent
	pending sync.WaitGroup
	gate    sync.RWMutex // held shared while a callback counts a request in pending
	closing bool         // under gate: no request may be counted any more

	mu       sync.Mutex
	running  bool
	stopping chan struct{}        // closed when Stop stops waiting for the subscriptions
	subs     []*nats.Subscription // control subjects
	done     chan struct{}
}

// job is a request for a worker: its handler to run, or fn, the work it
// handed over (Call.Go).
type job struct {
	c  *Call
	fn func(ctx context.Context)
}

type endpoint struct {
	Endpoint
	handler   Handler
	queue     string
	sub       *nats.Subscription
	requests  atomic.Int64
	errors    atomic.Int64
	procNanos atomic.Int64
	mu        sync.Mutex
	lastError string
}

// NewService checks cfg and returns a service ready to Start.
func NewService(nc *nats.Conn, cfg Config) (*Service, error) {
	if nc == nil {
		return nil, errors.New("bus: nil connection")
	}
	if !nameRE.MatchString(cfg.Name) {
		return nil, fmt.Errorf("bus: service name %q: want letters, digits, '-' or '_'", cfg.Name)
	}
	if !semverRE.MatchString(cfg.Version) {
		return nil, fmt.Errorf("bus: service %s: version %q is not semantic (e.g. 1.2.3)", cfg.Name, cfg.Version)
	}
	if cfg.QueueGroup == "" {
		cfg.QueueGroup = cfg.Name
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 256
	}
	s := &Service{
		nc:    nc,
		cfg:   cfg,
		id:    nuid.Next(),
		log:   cfg.Logger.With().Str("service", cfg.Name).Logger(),
		queue: make(chan job, 4*cfg.MaxConcurrent),
		done:  make(chan struct{}),
	}
	seen := map[string]bool{}
	for _, e := range cfg.Endpoints {
		switch {
		case !nameRE.MatchString(e.Name):
			return nil, fmt.Errorf("bus: service %s: endpoint name %q: want letters, digits, '-' or '_'", cfg.Name, e.Name)
		case seen[e.Name]:
			return nil, fmt.Errorf("bus: service %s: endpoint %q declared twice", cfg.Name, e.Name)
		case e.Subject == "" || !subjectValid(e.Subject):
			return nil, fmt.Errorf("bus: service %s: endpoint %s: invalid subject %q", cfg.Name, e.Name, e.Subject)
		case e.Handler == nil:
			return nil, fmt.Errorf("bus: service %s: endpoint %s: nil handler", cfg.Name, e.Name)
		}
		h := handler(e.Handler)
		if h == nil {
			return nil, fmt.Errorf("bus: service %s: endpoint %s: handler of type %T, want a bus.Handler", cfg.Name, e.Name, e.Handler)
		}
		seen[e.Name] = true
		ep := &endpoint{Endpoint: e, handler: h}
		if !e.NoQueue {
			ep.queue = cfg.QueueGroup
		}
		s.eps = append(s.eps, ep)
	}
	return s, nil
}

func subjectValid(s string) bool {
	toks := strings.Split(s, ".")
	for i, tok := range toks {
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") || (tok == ">" && i != len(toks)-1) {
			return false
		}
	}
	return true
}

// ID is this instance's id, unique among the instances of the service.
func (s *Service) ID() string { return s.id }

// Name is the service name.
func (s *Service) Name() string { return s.cfg.Name }

// Done is closed once the service has stopped.
func (s *Service) Done() <-chan struct{} { return s.done }

// Start subscribes the endpoints and the micro discovery subjects, and
// returns once the server has them. The
// handlers' context derives from ctx, with its cancellation removed: a
// service stops through Stop.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running || s.stopping != nil {
		return errors.New("bus: service already started")
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.stopping = make(chan struct{})
	s.started = time.Now().UTC()
	for _, ep := range s.eps {
		var err error
		cb := s.dispatcher(ep)
		if ep.queue != "" {
			ep.sub, err = s.nc.QueueSubscribe(ep.Subject, ep.queue, cb)
		} else {
			ep.sub, err = s.nc.Subscribe(ep.Subject, cb)
		}
		if err != nil {
			s.unsubscribeLocked()
			return fmt.Errorf("bus: service %s: subscribe %s: %w", s.cfg.Name, ep.Subject, err)
		}
	}
	for _, v := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		reply := s.control(v)
		for _, subj := range []string{
			mustControlSubject(v, "", ""),
			mustControlSubject(v, s.cfg.Name, ""),
			mustControlSubject(v, s.cfg.Name, s.id),
		} {
			sub, err := s.nc.Subscribe(subj, reply)
			if err != nil {
				s.unsubscribeLocked()
				return fmt.Errorf("bus: service %s: subscribe %s: %w", s.cfg.Name, subj, err)
			}
			s.subs = append(s.subs, sub)
		}
	}
	s.running = true
	// Once Start returns, the server knows the subscriptions: a request sent
	// by another connection reaches the service. (While disconnected, the
	// subscriptions are sent on reconnect.)
	if s.nc.IsConnected() {
		if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
			s.log.Warn().Err(err).Msg("subscriptions not confirmed by the server")
		}
	}
	return nil
}

func mustControlSubject(v micro.Verb, name, id string) string {
	subj, err := micro.ControlSubject(v, name, id)
	if err != nil {
		panic(err) // names are validated in NewService
	}
	return subj
}

func (s *Service) unsubscribeLocked() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
	for _, ep := range s.eps {
		if ep.sub != nil {
			_ = ep.sub.Unsubscribe()
		}
	}
}

// Stop stops taking requests (requests already delivered to this instance
// are still served), waits for the handlers in flight, and returns. If ctx
// ends first, the handlers' context is cancelled and Stop returns ctx.Err().
func (s *Service) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.running {
		s.mu.Unlock()
		return nil
	}
	s.running = false
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	var closed []<-chan nats.SubStatus
	for _, ep := range s.eps {
		ch := ep.sub.StatusChanged(nats.SubscriptionClosed)
		if err := ep.sub.Drain(); err == nil {
			closed = append(closed, ch)
		} else {
			_ = ep.sub.Unsubscribe()
		}
	}
	s.mu.Unlock()

	var err error
	for _, ch := range closed {
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			break
		}
	}
	close(s.stopping) // a callback still waiting for room in the queue answers 503
	s.gate.Lock()
	s.closing = true
	s.gate.Unlock()
	idle := make(chan struct{})
	go func() { s.pending.Wait(); close(idle) }()
	if err == nil {
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	s.cancel()
	if err != nil {
		for _, ep := range s.eps {
			_ = ep.sub.Unsubscribe()
		}
		<-idle // handlers see ctx cancelled; they must return
	}
	close(s.done)
	return err
}

// dispatcher returns the subscription callback of an endpoint: it serves an
// Inline endpoint's request at once, and queues the others for a worker,
// starting one if fewer than MaxConcurrent run. A worker serves requests
// until the queue is empty, so a burst is answered by few goroutines whose
// replies leave in few writes, while a handler that blocks (a lock waiting
// for its holder) holds up only its own worker.
func (s *Service) dispatcher(ep *endpoint) nats.MsgHandler {
	return func(m *nats.Msg) {
		c := &Call{msg: Msg{Msg: m}, s: s, ep: ep}
		s.gate.RLock()
		if s.closing {
			s.gate.RUnlock()
			s.refuse(c)
			return
		}
		s.pending.Add(1) // until the call is answered
		s.gate.RUnlock()
		if ep.Inline {
			s.serve(job{c: c})
			return
		}
		s.enqueue(job{c: c})
	}
}

// enqueue hands a counted request to a worker.
func (s *Service) enqueue(j job) {
	select {
	case s.queue <- j:
	case <-s.stopping:
		j.c.Reply(nil, s.stoppingErr())
		return
	}
	if s.claimWorker() {
		go s.work()
	}
}

// claimWorker takes a worker slot if one is free.
func (s *Service) claimWorker() bool {
	for {
		n := s.workers.Load()
		if n >= int32(s.cfg.MaxConcurrent) {
			return false
		}
		if s.workers.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// work serves queued requests until the queue is empty.
func (s *Service) work() {
	for {
		select {
		case j := <-s.queue:
			s.serve(j)
			continue
		default:
		}
		s.workers.Add(-1)
		// A request queued after the check above may have found every slot
		// taken; take it up unless another worker can.
		if len(s.queue) == 0 || !s.claimWorker() {
			return
		}
	}
}

func (s *Service) stoppingErr() *Error {
	return ErrUnavailable.With("service %s is stopping", s.cfg.Name)
}

// refuse answers a request that came as the service stops, which Stop
// does not wait for.
func (s *Service) refuse(c *Call) {
	c.msg.Codec = DetectCodec(c.msg.Header, c.msg.Data)
	c.start = time.Now()
	c.replied.Store(true)
	s.send(c, nil, s.stoppingErr())
}

// serve runs a counted request's handler, or the work it handed over, and
// answers the request if that panics first.
func (s *Service) serve(j job) {
	c := j.c
	defer func() {
		if p := recover(); p != nil {
			s.log.Error().Str("endpoint", c.ep.Name).Str("subject", c.msg.Subject).
				Interface("panic", p).Bytes("stack", debug.Stack()).Msg("handler panicked")
			c.Reply(nil, ErrInternal.With("internal error: the %s handler failed", c.ep.Name))
		}
	}()
	if j.fn != nil {
		j.fn(s.ctx)
		return
	}
	c.start = time.Now()
	c.msg.Codec = DetectCodec(c.msg.Header, c.msg.Data)
	if s.cfg.MaxRequestBytes > 0 && len(c.msg.Data) > s.cfg.MaxRequestBytes {
		c.Reply(nil, ErrTooLarge.With("request of %d bytes exceeds the limit of %d", len(c.msg.Data), s.cfg.MaxRequestBytes))
		return
	}
	c.ep.handler(s.ctx, c)
}

// send records a request in the stats and sends its reply, data or cerr.
func (s *Service) send(c *Call, data []byte, cerr *Error) {
	ep, m := c.ep, c.msg.Msg
	if cerr == nil && int64(len(data)) > s.nc.MaxPayload() {
		cerr = ErrTooLarge.With("reply of %d bytes exceeds the server's max payload", len(data))
	}
	// Counted before the reply leaves, so that a client that has its reply
	// finds the request in the stats.
	d := time.Since(c.start)
	ep.requests.Add(1)
	ep.procNanos.Add(int64(d))
	if cerr != nil {
		ep.errors.Add(1)
		ep.mu.Lock()
		ep.lastError = cerr.Error()
		ep.mu.Unlock()
		if cerr.Status >= 500 {
			s.log.Error().Str("endpoint", ep.Name).Str("code", cerr.Code).Msg(cerr.Message)
		}
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.ObserveRequest(s.cfg.Name, ep.Name, d, cerr)
	}
	if m.Reply != "" {
		var rerr error
		if cerr != nil {
			rerr = m.RespondMsg(errorReply(c.msg.Codec, cerr))
		} else {
			rerr = m.Respond(data)
		}
		if rerr != nil {
			s.log.Warn().Err(rerr).Str("endpoint", ep.Name).Msg("cannot send reply")
		}
	}
}

func (s *Service) identity() micro.ServiceIdentity {
	md := s.cfg.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return micro.ServiceIdentity{Name: s.cfg.Name, ID: s.id, Version: s.cfg.Version, Metadata: md}
}

// Info describes the service as `nats micro info` shows it.
func (s *Service) Info() micro.Info {
	info := micro.Info{
		ServiceIdentity: s.identity(),
		Type:            micro.InfoResponseType,
		Description:     s.cfg.Description,
		Endpoints:       []micro.EndpointInfo{},
	}
	for _, ep := range s.eps {
		info.Endpoints = append(info.Endpoints, micro.EndpointInfo{
			Name: ep.Name, Subject: ep.Subject, QueueGroup: ep.queue, Metadata: ep.Metadata,
		})
	}
	return info
}

// Stats returns the per-endpoint figures as `nats micro stats` shows them.
func (s *Service) Stats() micro.Stats {
	st := micro.Stats{
		ServiceIdentity: s.identity(),
		Type:            micro.StatsResponseType,
		Started:         s.started,
		Endpoints:       []*micro.EndpointStats{},
	}
	for _, ep := range s.eps {
		n := ep.requests.Load()
		es := &micro.EndpointStats{
			Name:           ep.Name,
			Subject:        ep.Subject,
			QueueGroup:     ep.queue,
			NumRequests:    int(n),
			NumErrors:      int(ep.errors.Load()),
			ProcessingTime: time.Duration(ep.procNanos.Load()),
		}
		if n > 0 {
			es.AverageProcessingTime = es.ProcessingTime / time.Duration(n)
		}
		ep.mu.Lock()
		es.LastError = ep.lastError
		ep.mu.Unlock()
		st.Endpoints = append(st.Endpoints, es)
	}
	return st
}

func (s *Service) control(v micro.Verb) nats.MsgHandler {
	return func(m *nats.Msg) {
		var body any
		switch v {
		case micro.PingVerb:
			body = micro.Ping{ServiceIdentity: s.identity(), Type: micro.PingResponseType}
		case micro.InfoVerb:
			body = s.Info()
		default:
			body = s.Stats()
		}
		data, err := json.Marshal(body)
		if err == nil {
			err = m.Respond(data)
		}
		if err != nil {
			s.log.Warn().Err(err).Str("subject", m.Subject).Msg("cannot answer discovery request")
		}
	}
}
