package bus

import (
	"bytes"
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

// Handler serves one request. It returns the reply value, encoded in the
// request's codec (a Raw or Pooled value is sent as it is), or an error,
// sent as a coded error (see AsError).
// Handlers run concurrently, up to Config.MaxConcurrent at once per service.
// ctx is cancelled when the service is stopped and its grace period is over.
type Handler func(ctx context.Context, req *Msg) (any, error)

// Msg is one incoming request.
type Msg struct {
	*nats.Msg
	Codec Codec // the codec of the request, also used for the reply
}

// Raw is a reply sent as it is, without encoding.
type Raw []byte

// Pooled is a reply sent as it is, like Raw, from a buffer that the
// service puts back in Pool (a *sync.Pool) once the reply is sent, as the
// connection copies it: a handler that answers often reuses its buffers.
type Pooled struct {
	Buf  *[]byte
	Pool interface{ Put(any) }
}

// Continue is what an Inline handler returns when a request needs work that
// may block (a request to another service, a wait): the service runs the
// function on a worker, as it runs the handlers of other endpoints, and
// replies with its result.
type Continue func(ctx context.Context) (any, error)

// Deferred is what an Inline handler returns when its reply comes from a
// callback, such as the acknowledgement of a JetStream write arriving: the
// service calls it at once, in the subscription's callback, with reply,
// which must be called exactly once, from any goroutine, and must not
// block meanwhile. reply takes what a handler returns, a Continue included.
// This saves the hand-offs to a worker and back that waiting for the
// acknowledgement there would cost.
type Deferred func(reply func(resp any, err error))

// Validator is implemented by request types that check themselves after
// decoding. An error that is not an *Error becomes ErrInvalid.
type Validator interface {
	Validate() error
}

// Decode decodes the request body into v, a pointer to a struct, strictly,
// and validates it when v is a Validator. A field v does not have is
// ErrUnknownField; a malformed body, a wrong type or text that is not UTF-8
// is ErrInvalid; both name the field (see decode.go).
func (r *Msg) Decode(v any) error {
	if err := r.Codec.decodeRequest(r.Data, v); err != nil {
		return err
	}
	if val, ok := v.(Validator); ok {
		if err := val.Validate(); err != nil {
			var e *Error
			if errors.As(err, &e) {
				return err
			}
			return ErrInvalid.With("%s", err.Error())
		}
	}
	return nil
}

// Typed adapts a function of a typed request to a Handler: the body is
// decoded into a Req (and validated, see Validator) before fn is called.
func Typed[Req, Resp any](fn func(ctx context.Context, req *Req) (Resp, error)) Handler {
	return func(ctx context.Context, r *Msg) (any, error) {
		req := new(Req)
		if err := r.Decode(req); err != nil {
			return nil, err
		}
		return fn(ctx, req)
	}
}

// Endpoint is one request/reply endpoint of a service.
type Endpoint struct {
	Name     string // shown by `nats micro info`; letters, digits, '-' and '_'
	Subject  string // the subject it listens on
	Handler  Handler
	Metadata map[string]string
	// NoQueue makes every instance receive every request (for subjects that
	// name one instance). By default instances share requests through the
	// service's queue group.
	NoQueue bool
	// Inline runs the handler in the subscription's callback, one request
	// at a time, without the hand-off to a worker: for handlers that answer
	// from memory in a microsecond or so, where the hand-off would cost more
	// than the work. Such a handler must not block; for a request that
	// needs to, it returns a Continue, which runs on a worker.
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

type job struct {
	ep *endpoint
	m  *nats.Msg
	// Set when an Inline handler continues on a worker.
	cont  Continue
	codec Codec
	start time.Time
}

type endpoint struct {
	Endpoint
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
		seen[e.Name] = true
		ep := &endpoint{Endpoint: e}
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
		s.gate.RLock()
		if s.closing {
			s.gate.RUnlock()
			s.refuse(ep, m)
			return
		}
		s.pending.Add(1)
		s.gate.RUnlock()
		if ep.Inline {
			s.serve(job{ep: ep, m: m})
			return
		}
		s.enqueue(job{ep: ep, m: m})
	}
}

// enqueue hands a counted request to a worker.
func (s *Service) enqueue(j job) {
	select {
	case s.queue <- j:
	case <-s.stopping:
		s.refuse(j.ep, j.m)
		s.pending.Done()
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

func (s *Service) refuse(ep *endpoint, m *nats.Msg) {
	s.reply(ep, m, DetectCodec(m.Header, m.Data), time.Now(), nil, ErrUnavailable.With("service %s is stopping", s.cfg.Name))
}

// serve runs a counted request's handler (or its continuation) and replies,
// unless an Inline handler continues on a worker.
func (s *Service) serve(j job) {
	ep, m := j.ep, j.m
	var (
		resp any
		err  error
	)
	if j.cont != nil {
		resp, err = s.call(ep, m.Subject, func() (any, error) { return j.cont(s.ctx) })
	} else {
		j.start = time.Now()
		j.codec = DetectCodec(m.Header, m.Data)
		if s.cfg.MaxRequestBytes > 0 && len(m.Data) > s.cfg.MaxRequestBytes {
			err = ErrTooLarge.With("request of %d bytes exceeds the limit of %d", len(m.Data), s.cfg.MaxRequestBytes)
		} else {
			req := &Msg{Msg: m, Codec: j.codec}
			resp, err = s.call(ep, m.Subject, func() (any, error) { return ep.Handler(s.ctx, req) })
		}
		if d, ok := resp.(Deferred); ok && err == nil {
			var once sync.Once // a handler that panics after replying
			later := j         // only a deferred request's job goes to the heap
			reply := func(resp any, err error) { once.Do(func() { s.settle(later, resp, err) }) }
			if _, err := s.call(ep, m.Subject, func() (any, error) { d(reply); return nil, nil }); err != nil {
				reply(nil, err)
			}
			return
		}
	}
	s.settle(j, resp, err)
}

// settle replies to a counted request, unless it continues on a worker.
func (s *Service) settle(j job, resp any, err error) {
	if cont, ok := resp.(Continue); ok && err == nil && j.cont == nil {
		j.cont = cont
		s.enqueue(j)
		return
	}
	s.reply(j.ep, j.m, j.codec, j.start, resp, err)
	s.pending.Done()
}

func (s *Service) call(ep *endpoint, subject string, fn func() (any, error)) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Str("endpoint", ep.Name).Str("subject", subject).
				Interface("panic", r).Bytes("stack", debug.Stack()).Msg("handler panicked")
			resp, err = nil, ErrInternal.With("internal error: the %s handler failed", ep.Name)
		}
	}()
	return fn()
}

// reply records a request in the stats and sends its reply (or error).
func (s *Service) reply(ep *endpoint, m *nats.Msg, c Codec, start time.Time, resp any, err error) {
	var (
		data []byte // a successful reply
		cerr *Error
	)
	if err == nil {
		var merr error
		switch r := resp.(type) {
		case Raw:
			data = r
		case Pooled:
			data = *r.Buf
			defer r.Pool.Put(r.Buf) // the reply is copied when published
		default:
			var buf *bytes.Buffer
			buf, merr = c.encode(resp)
			if buf != nil {
				defer putBuffer(buf)
				data = buf.Bytes()
			}
		}
		switch {
		case merr != nil:
			cerr = ErrInternal.With("encoding the reply: %v", merr)
		case int64(len(data)) > s.nc.MaxPayload():
			cerr = ErrTooLarge.With("reply of %d bytes exceeds the server's max payload", len(data))
		}
	} else {
		cerr = AsError(err)
	}
	// Counted before the reply leaves, so that a client that has its reply
	// finds the request in the stats.
	d := time.Since(start)
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
			rerr = m.RespondMsg(errorReply(c, cerr))
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
