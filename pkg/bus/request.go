package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// DefaultTimeout bounds a Request whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// Request sends req to subject in msgpack and decodes the reply into a Resp.
//
// A reply that carries a coded error is returned as an *Error, so errors.Is
// matches it against the service's sentinels. No service listening is
// ErrUnavailable (also matching nats.ErrNoResponders); no reply before ctx's
// deadline (or DefaultTimeout when ctx has none) is ErrTimeout (also matching
// context.DeadlineExceeded).
func Request[Req, Resp any](ctx context.Context, nc *nats.Conn, subject string, req Req) (Resp, error) {
	var resp Resp
	buf, err := MsgPack.encode(req)
	if err != nil {
		return resp, fmt.Errorf("bus: encoding request for %s: %w", subject, err)
	}
	m := &nats.Msg{Subject: subject, Data: buf.Bytes()}
	if DetectCodec(nil, m.Data) != MsgPack {
		// Not a map (a scalar, say), so it would be read as JSON: say what it is.
		m.Header = nats.Header{HeaderContentType: []string{ContentTypeMsgPack}}
	}
	reply, err := RequestMsg(ctx, nc, m)
	putBuffer(buf) // published, so copied
	if err != nil {
		return resp, err
	}
	// The reply is in the codec of the request.
	if err := MsgPack.Unmarshal(reply.Data, &resp); err != nil {
		return resp, fmt.Errorf("bus: decoding reply from %s: %w", subject, err)
	}
	return resp, nil
}

// RequestMsg sends m and returns the reply, with the errors of Request: a
// reply carrying a coded error is returned as that *Error.
func RequestMsg(ctx context.Context, nc *nats.Conn, m *nats.Msg) (*nats.Msg, error) {
	if _, ok := ctx.Deadline(); ok {
		reply, err := nc.RequestMsgWithContext(ctx, m)
		return ReplyOf(m, reply, err)
	}
	return RequestMsgWithin(ctx, nc, m, DefaultTimeout)
}

// RequestMsgWithin is RequestMsg waiting at most d for the reply (and never
// past ctx's deadline): one attempt of a request that may be tried
// elsewhere when it times out.
func RequestMsgWithin(ctx context.Context, nc *nats.Conn, m *nats.Msg, d time.Duration) (*nats.Msg, error) {
	var reply *nats.Msg
	var err error
	switch dl, ok := ctx.Deadline(); {
	case ok && time.Until(dl) <= d:
		reply, err = nc.RequestMsgWithContext(ctx, m)
	case ctx.Done() == nil: // cannot be cancelled: no context machinery needed
		reply, err = nc.RequestMsg(m, d)
	default:
		c, cancel := context.WithTimeout(ctx, d)
		reply, err = nc.RequestMsgWithContext(c, m)
		cancel()
	}
	return ReplyOf(m, reply, err)
}

// ReplyOf turns the outcome of request m (its reply, or the error of
// sending it or of waiting for its reply) into what RequestMsg returns: a
// reply carrying a coded error is that *Error, no responders is
// ErrUnavailable, a timeout ErrTimeout. It is for requests sent by other
// means than RequestMsg, such as a reply subject of one's own.
func ReplyOf(m, reply *nats.Msg, err error) (*nats.Msg, error) {
	switch {
	case err == nil:
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w (%w)", ErrUnavailable.With("no service is listening on %s", m.Subject), err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return nil, fmt.Errorf("%w (%w)", ErrTimeout.With("no reply on %s in time", m.Subject), context.DeadlineExceeded)
	default:
		return nil, fmt.Errorf("bus: request on %s: %w", m.Subject, err)
	}
	if e := ReplyError(reply); e != nil {
		return nil, e
	}
	return reply, nil
}
