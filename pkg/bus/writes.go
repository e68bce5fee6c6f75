package bus

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Writes publishes JetStream messages and hands each one's acknowledgement
// to a callback, on the goroutine that receives acknowledgements, instead
// of a goroutine waiting for it: an Inline handler answers its Call from
// there, with no hand-off to a worker and back (each costs a thread's
// wake-up).
type Writes struct {
	js   jetstream.JetStream
	acks sync.Map // *nats.Msg -> func(*jetstream.PubAck, error)
}

// NewWrites returns Writes on nc whose acknowledgements that do not come
// within timeout are jetstream.ErrAsyncPublishTimeout.
func NewWrites(nc *nats.Conn, timeout time.Duration) (*Writes, error) {
	w := &Writes{}
	var err error
	w.js, err = jetstream.New(nc, jetstream.WithPublishAsyncAckHandler(w.onAck),
		jetstream.WithPublishAsyncErrHandler(w.onErr), jetstream.WithPublishAsyncTimeout(timeout))
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Publish publishes m and calls done once with its acknowledgement or
// error: from the goroutine that receives acknowledgements, so done must
// not block, or at once when m could not be sent. m must not be reused.
func (w *Writes) Publish(m *nats.Msg, done func(*jetstream.PubAck, error), opts ...jetstream.PublishOpt) {
	w.acks.Store(m, done)
	if _, err := w.js.PublishMsgAsync(m, opts...); err != nil {
		w.onErr(nil, m, err)
	}
}

func (w *Writes) onAck(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
	if f, ok := w.acks.LoadAndDelete(m); ok {
		f.(func(*jetstream.PubAck, error))(ack, nil)
	}
}

func (w *Writes) onErr(_ jetstream.JetStream, m *nats.Msg, err error) {
	if f, ok := w.acks.LoadAndDelete(m); ok {
		f.(func(*jetstream.PubAck, error))(nil, err)
	}
}
