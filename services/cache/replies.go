package cache

import (
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
)

// replies sends requests whose replies are handed to callbacks by one
// subscription, instead of a goroutine waiting for each: a node answers a
// set from its replica's reply (answering its bus.Call there), with no worker and so no
// hand-off between goroutines, each of which costs a thread's wake-up.
type replies struct {
	nc     *nats.Conn
	prefix string
	sub    *nats.Subscription

	mu      sync.Mutex
	n       uint64
	waiting map[string]*waiter
}

type waiter struct {
	req   *nats.Msg
	done  func(*nats.Msg, error)
	timer *time.Timer
}

func newReplies(nc *nats.Conn) (*replies, error) {
	r := &replies{nc: nc, prefix: nc.NewInbox() + ".", waiting: map[string]*waiter{}}
	sub, err := nc.Subscribe(r.prefix+"*", func(m *nats.Msg) { r.finish(m.Subject[len(r.prefix):], m, nil) })
	if err != nil {
		return nil, err
	}
	r.sub = sub
	return r, nil
}

// send publishes m as a request and calls done once with its reply or its
// error, as bus.RequestMsg gives them (no responders: bus.ErrUnavailable
// matching nats.ErrNoResponders; no reply within timeout: bus.ErrTimeout).
// done runs on the subscription's goroutine or a timer's, and must not
// block.
func (r *replies) send(m *nats.Msg, timeout time.Duration, done func(*nats.Msg, error)) {
	r.mu.Lock()
	r.n++
	id := strconv.FormatUint(r.n, 36)
	w := &waiter{req: m, done: done}
	r.waiting[id] = w
	w.timer = time.AfterFunc(timeout, func() { r.finish(id, nil, nats.ErrTimeout) })
	r.mu.Unlock()
	m.Reply = r.prefix + id
	if err := r.nc.PublishMsg(m); err != nil {
		r.finish(id, nil, err)
	}
}

func (r *replies) finish(id string, m *nats.Msg, err error) {
	r.mu.Lock()
	w := r.waiting[id]
	delete(r.waiting, id)
	r.mu.Unlock()
	if w == nil {
		return // answered already, or timed out
	}
	w.timer.Stop()
	if m != nil && len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		m, err = nil, nats.ErrNoResponders
	}
	w.done(bus.ReplyOf(w.req, m, err))
}

// close stops receiving replies; the requests still waiting time out.
func (r *replies) close() { _ = r.sub.Unsubscribe() }
