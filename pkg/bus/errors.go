package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// Error is a coded error: the form every error takes on the wire.
//
// Status is HTTP-like (400 invalid, 404 not found, 408 timeout, 409 conflict,
// 413 too large, 429 overloaded, 500 internal, 503 unavailable) and travels in
// micro's Nats-Service-Error-Code header. Code is a stable snake_case string
// ("lock_held") and Message a human sentence; both travel in the body
// {"code":..., "message":...} and the message in the Nats-Service-Error header.
//
// Services declare their sentinels with NewError and return them, or a copy
// with a more precise message made by With. errors.Is matches two Errors with
// the same Code, so a client that received a reply error can match it against
// the service's sentinel on the far side of the network. A generic sentinel of
// this package (ErrInvalid, ErrNotFound, ...) also matches every error of its
// Status: errors.Is(err, bus.ErrConflict) is true for a "lock_held" error.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// NewError returns a coded error, usually kept as a package sentinel.
func NewError(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

// Generic errors, one per status. They match any Error of the same status.
var (
	ErrInvalid     = NewError(400, "invalid", "invalid request")
	ErrNotFound    = NewError(404, "not_found", "not found")
	ErrTimeout     = NewError(408, "timeout", "timed out")
	ErrConflict    = NewError(409, "conflict", "conflict")
	ErrTooLarge    = NewError(413, "too_large", "too large")
	ErrOverloaded  = NewError(429, "overloaded", "overloaded")
	ErrInternal    = NewError(500, "internal", "internal error")
	ErrUnavailable = NewError(503, "unavailable", "service unavailable")
)

// ErrUnknownField is a request with a field its endpoint does not know
// (a misspelt "ttl" for "ttl_ms"): refused rather than ignored, so that a
// slip never silently changes what a request does. It is a 400, so it also
// matches ErrInvalid.
var ErrUnknownField = NewError(400, "unknown_field", "unknown field")

var generic = map[int]*Error{}

func init() {
	for _, e := range []*Error{ErrInvalid, ErrNotFound, ErrTimeout, ErrConflict, ErrTooLarge, ErrOverloaded, ErrInternal, ErrUnavailable} {
		generic[e.Status] = e
	}
}

func (e *Error) Error() string {
	return e.Code + ": " + e.Message
}

// Is reports whether target is an Error with the same Code, or a generic
// sentinel of this package with the same Status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code || (generic[t.Status] == t && t.Status == e.Status)
}

// With returns a copy of e with the message set by format, keeping Status and
// Code, so errors.Is still matches e.
func (e *Error) With(format string, args ...any) *Error {
	return &Error{Status: e.Status, Code: e.Code, Message: fmt.Sprintf(format, args...)}
}

// AsError turns a handler's error into the coded error sent on the wire: an
// *Error in its chain as is; NATS or JetStream not answering (no response
// from a stream, no responders, a lost connection, a call that ran out of
// time) as ErrUnavailable, since the request may succeed if retried and the
// outcome of a write is unknown; a JetStream API error that the server
// codes 503 ("JetStream system temporarily unavailable", ...) as
// ErrUnavailable too; anything else as ErrInternal carrying its message. A
// handler's context has no deadline, so a deadline in the chain is one of
// the service's own calls timing out, not the client's request: ErrTimeout
// is for a service to give explicitly.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var api *jetstream.APIError
	if Unanswered(err) || (errors.As(err, &api) && api.Code == 503) {
		return ErrUnavailable.With("%s", err.Error())
	}
	return ErrInternal.With("%s", err.Error())
}

// Unanswered reports an error of NATS or JetStream not answering (a leader
// election, a lost connection, a call that ran out of time): the request
// may succeed if retried, and the outcome of a write is unknown rather than
// failed. An answer that refuses (a JetStream API error) is not one.
func Unanswered(err error) bool {
	for _, e := range []error{context.DeadlineExceeded, jetstream.ErrNoStreamResponse, nats.ErrTimeout, nats.ErrNoResponders,
		nats.ErrConnectionClosed, nats.ErrConnectionReconnecting, nats.ErrDisconnected, nats.ErrConnectionDraining} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Conflict reports a JetStream compare-and-set that failed: the subject's
// last sequence was not the one expected (10071), or, on a clustered
// stream, another write naming the subject, as the one it writes or the
// one it checks, was still being replicated (InFlight).
func Conflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// InFlight reports a compare-and-set that a clustered stream refused
// because another write naming the same subject was still being replicated
// (10164): nothing tells whether the expected sequence was right, and the
// write may succeed once that one is applied.
func InFlight(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// NoStream reports an error that says no stream took a JetStream write (no
// responders: the stream is electing a leader, or is gone). Nothing was
// stored, so the write may be sent again as it was.
func NoStream(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// RetryNoStream calls write until it returns anything but a NoStream error,
// pausing between calls (100 ms, doubling up to 1 s), as long as the next
// call can start before until and ctx lasts. It returns write's last error.
// nats.go itself sends a write nobody takes twice more, 250 ms apart; an
// election after a node's loss takes seconds.
func RetryNoStream(ctx context.Context, until time.Time, write func() error) error {
	err := write()
	for pause := 100 * time.Millisecond; NoStream(err); pause = min(2*pause, time.Second) {
		wait := min(pause, time.Until(until))
		if wait <= 0 {
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return err
		}
		err = write()
	}
	return err
}

// errorReply builds the reply message for err in codec c.
func errorReply(c Codec, err *Error) *nats.Msg {
	body, merr := c.Marshal(err)
	if merr != nil {
		body = nil
	}
	m := &nats.Msg{Data: body, Header: nats.Header{}}
	m.Header.Set(micro.ErrorHeader, err.Message)
	m.Header.Set(micro.ErrorCodeHeader, strconv.Itoa(err.Status))
	return m
}

// ReplyError returns the coded error carried by a reply, an *Error, or nil
// when the reply is not an error. The code comes from the body when it has
// one, else it is the generic code of the status.
func ReplyError(m *nats.Msg) error {
	if m.Header == nil {
		return nil
	}
	status := m.Header.Get(micro.ErrorCodeHeader)
	if status == "" {
		return nil
	}
	e := &Error{Message: m.Header.Get(micro.ErrorHeader)}
	e.Status, _ = strconv.Atoi(status)
	var body Error
	if DetectCodec(m.Header, m.Data).Unmarshal(m.Data, &body) == nil && body.Code != "" {
		e.Code = body.Code
		if body.Message != "" {
			e.Message = body.Message
		}
	}
	if e.Code == "" {
		if g, ok := generic[e.Status]; ok {
			e.Code = g.Code
		} else {
			e.Code = "error_" + status
		}
	}
	return e
}
