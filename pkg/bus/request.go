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
	data, err := MsgPack.Marshal(req)
	if err != nil {
		return resp, fmt.Errorf("bus: encoding request for %s: %w", subject, err)
	}
	reply, err := RequestMsg(ctx, nc, &nats.Msg{Subject: subject, Data: data})
	if err != nil {
		return resp, err
	}
	if err := DetectCodec(reply.Header, reply.Data).Unmarshal(reply.Data, &resp); err != nil {
		return resp, fmt.Errorf("bus: decoding reply from %s: %w", subject, err)
	}
	return resp, nil
}

// RequestMsg sends m and returns the reply, with the errors of Request: a
// reply carrying a coded error is returned as that *Error.
func RequestMsg(ctx context.Context, nc *nats.Conn, m *nats.Msg) (*nats.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	reply, err := nc.RequestMsgWithContext(ctx, m)
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
