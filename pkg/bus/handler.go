package bus

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Handler serves one request: it answers r exactly once, with Reply,
// ReplyRaw or ReplyPooled, either before it returns or later from any
// goroutine (the callback of a JetStream write's acknowledgement, say), or
// hands the work to one of the service's workers with r.Go.
//
// Handlers run concurrently, up to Config.MaxConcurrent at once per
// service, except those of an Inline endpoint (see Endpoint.Inline). ctx is
// cancelled when the service is stopped and its grace period is over. A
// handler that panics before answering is answered ErrInternal.
type Handler func(ctx context.Context, r *Call)

// Call is one incoming request and the handle that answers it. The first
// answer (Reply, ReplyRaw, ReplyPooled) is sent and counted in the
// endpoint's stats; later ones do nothing. Until it is answered, the
// service's Stop waits for it.
type Call struct {
	msg     Msg
	s       *Service
	ep      *endpoint
	start   time.Time
	replied atomic.Bool
}

// Data is the request's body.
func (r *Call) Data() []byte { return r.msg.Data }

// Header is the request's header, nil when it has none.
func (r *Call) Header() nats.Header { return r.msg.Header }

// Subject is the subject the request was sent to.
func (r *Call) Subject() string { return r.msg.Subject }

// Codec is the codec of the request, also used for the reply.
func (r *Call) Codec() Codec { return r.msg.Codec }

// Decode decodes the request body into v as Msg.Decode does.
func (r *Call) Decode(v any) error { return r.msg.Decode(v) }

// Reply answers the request with v, encoded in the request's codec, or,
// when err is not nil, with err as a coded error (see AsError).
func (r *Call) Reply(v any, err error) {
	if !r.claim() {
		return
	}
	if err != nil {
		r.s.send(r, nil, AsError(err))
	} else {
		buf, merr := r.msg.Codec.encode(v)
		if merr != nil {
			r.s.send(r, nil, ErrInternal.With("encoding the reply: %v", merr))
		} else {
			r.s.send(r, buf.Bytes(), nil)
		}
		if buf != nil {
			putBuffer(buf) // the reply is copied when published
		}
	}
	r.s.pending.Done()
}

// ReplyRaw answers the request with data as it is, without encoding.
func (r *Call) ReplyRaw(data []byte) {
	if !r.claim() {
		return
	}
	r.s.send(r, data, nil)
	r.s.pending.Done()
}

// ReplyPooled answers the request with *buf as it is, like ReplyRaw, and
// then puts buf back in pool (a *sync.Pool, say), as the connection copies
// it: a handler that answers often reuses its buffers. buf goes back to the
// pool even if the request was answered already.
func (r *Call) ReplyPooled(buf *[]byte, pool interface{ Put(any) }) {
	if !r.claim() {
		pool.Put(buf)
		return
	}
	r.s.send(r, *buf, nil)
	pool.Put(buf)
	r.s.pending.Done()
}

// Go runs fn on one of the service's workers, as the handlers of endpoints
// that are not Inline run, with the handlers' context: for the part of an
// Inline handler's work that may block (a request to another service, a
// wait). fn answers the request, as a handler does; if the service is
// stopping and fn cannot run, the request is answered ErrUnavailable.
func (r *Call) Go(fn func(ctx context.Context)) {
	r.s.enqueue(job{c: r, fn: fn})
}

// claim reports whether the caller is the first to answer.
func (r *Call) claim() bool { return r.replied.CompareAndSwap(false, true) }

// Typed adapts a function of a typed request to a Handler: the body is
// decoded into a Req (and validated, see Validator) before fn is called,
// and what fn returns is the reply.
func Typed[Req, Resp any](fn func(ctx context.Context, req *Req) (Resp, error)) Handler {
	return func(ctx context.Context, r *Call) {
		req := new(Req)
		if err := r.Decode(req); err != nil {
			r.Reply(nil, err)
			return
		}
		r.Reply(fn(ctx, req))
	}
}

// Msg is one incoming request, as a LegacyHandler gets it.
type Msg struct {
	*nats.Msg
	Codec Codec // the codec of the request, also used for the reply
}

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

// LegacyHandler is the handler of the earlier contract, which returns its
// reply: a value, or one of the markers Raw, Pooled, Continue and Deferred.
// An Endpoint still takes one as its Handler.
//
// Deprecated: write a Handler, which answers through its *Call.
type LegacyHandler func(ctx context.Context, req *Msg) (any, error)

// Raw is a LegacyHandler's reply sent as it is, without encoding.
//
// Deprecated: call Call.ReplyRaw.
type Raw []byte

// Pooled is a LegacyHandler's reply sent as it is, like Raw, from a buffer
// that the service puts back in Pool once the reply is sent.
//
// Deprecated: call Call.ReplyPooled.
type Pooled struct {
	Buf  *[]byte
	Pool interface{ Put(any) }
}

// Continue is what a LegacyHandler of an Inline endpoint returns when a
// request needs work that may block: the service runs the function on a
// worker and replies with its result.
//
// Deprecated: call Call.Go.
type Continue func(ctx context.Context) (any, error)

// Deferred is what a LegacyHandler returns when its reply comes from a
// callback: the service calls it at once with reply, which must be called
// exactly once, from any goroutine. reply takes what a LegacyHandler
// returns, a Continue included.
//
// Deprecated: answer the *Call from the callback.
type Deferred func(reply func(resp any, err error))

// handler returns h, a Handler or a LegacyHandler (named or not), as a
// Handler, or nil if it is neither.
func handler(h any) Handler {
	switch h := h.(type) {
	case Handler:
		return h
	case func(context.Context, *Call):
		return h
	case LegacyHandler:
		return legacy(h)
	case func(context.Context, *Msg) (any, error):
		return legacy(h)
	}
	return nil
}

// legacy serves a LegacyHandler through a Call.
func legacy(h LegacyHandler) Handler {
	return func(ctx context.Context, r *Call) {
		r.answer(h(ctx, &r.msg))
	}
}

// answer answers what a LegacyHandler returned.
func (r *Call) answer(resp any, err error) {
	if err != nil {
		r.Reply(nil, err)
		return
	}
	switch v := resp.(type) {
	case Raw:
		r.ReplyRaw(v)
	case Pooled:
		r.ReplyPooled(v.Buf, v.Pool)
	case Continue:
		r.Go(func(ctx context.Context) { r.answer(v(ctx)) })
	case Deferred:
		v(r.answer)
	default:
		r.Reply(resp, nil)
	}
}
