package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A worker's report claims a delivery: the message at stream_seq, delivered
// for the attempt-th time. Every report is checked against what the service
// and the queue's consumer know of that delivery before it changes
// anything (see doc.go, "Reports must match a delivery"); one that does not
// match is refused with ErrStaleReport.

// consumerFacts is what a report is checked against on the queue's
// consumer: the last stream sequence it has delivered (every message of the
// queue at or below it was delivered at least once), its MaxDeliver and
// its AckWait.
type consumerFacts struct {
	delivered  uint64
	maxDeliver int
	ackWait    time.Duration
}

// queueFacts caches a queue's consumerFacts. The delivered sequence only
// grows, so a cached value that covers a report's sequence needs no
// request, and is read without a lock; one that does not is refreshed,
// one request at a time, shared by the reports waiting on it.
type queueFacts struct {
	delivered atomic.Uint64
	conf      atomic.Pointer[consumerFacts] // maxDeliver and ackWait; nil: not asked yet
	refresh   sync.Mutex
}

func (q *queueFacts) load(seq uint64) (consumerFacts, bool) {
	c := q.conf.Load()
	if c == nil {
		return consumerFacts{}, false
	}
	f := *c
	f.delivered = q.delivered.Load()
	return f, f.delivered >= seq
}

func (s *Server) queueFacts(queue string) *queueFacts {
	if q, ok := s.facts.Load(queue); ok {
		return q.(*queueFacts)
	}
	q, _ := s.facts.LoadOrStore(queue, &queueFacts{})
	return q.(*queueFacts)
}

// knownFacts returns the cached facts of a queue if they cover seq, with no
// request and no wait (for reports served in the subscription's callback).
func (s *Server) knownFacts(queue string, seq uint64) (consumerFacts, bool) {
	return s.queueFacts(queue).load(seq)
}

// consumerFacts returns the facts of a queue's consumer, asking the consumer
// when the cached ones do not cover seq. A queue without a consumer has
// delivered nothing.
func (s *Server) consumerFacts(ctx context.Context, queue string, seq uint64) (consumerFacts, error) {
	q := s.queueFacts(queue)
	if f, ok := q.load(seq); ok {
		return f, nil
	}
	q.refresh.Lock()
	defer q.refresh.Unlock()
	if f, ok := q.load(seq); ok {
		return f, nil // refreshed while this one waited
	}
	cons, err := s.tasks.Consumer(ctx, queue)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return consumerFacts{}, nil
	}
	if err != nil {
		return consumerFacts{}, fmt.Errorf("scheduler: queue %s: %w", queue, err)
	}
	info := cons.CachedInfo()
	q.conf.Store(&consumerFacts{maxDeliver: info.Config.MaxDeliver, ackWait: info.Config.AckWait})
	for {
		d := q.delivered.Load()
		if info.Delivered.Stream <= d || q.delivered.CompareAndSwap(d, info.Delivered.Stream) {
			break
		}
	}
	f, _ := q.load(seq)
	return f, nil
}

// isTaskMsg reports whether the message at a report's stream sequence is
// the task's, in the report's queue (and so not acknowledged yet: the queue
// is a work queue).
func (s *Server) isTaskMsg(ctx context.Context, id, queue string, seq uint64) (bool, error) {
	raw, err := s.tasks.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("scheduler: reading the message of task %s: %w", id, err)
	}
	return raw.Subject == TaskSubjectPrefix+queue && raw.Header.Get(HeaderID) == id, nil
}

// skew allows for the clocks of two instances when a redelivery is checked
// against the time of the start it replaces.
const skew = 100 * time.Millisecond

// checkStart decides whether a start report matches a delivery the task
// can have, on its state rec and the facts of its queue's consumer; seen
// says the message at r.StreamSeq was read and is the task's. It returns
// nil or ErrStaleReport, and changes nothing.
//
// A task that has finished is only checked for its queue, type and
// message: the reply tells the worker to drop the message, and changes
// nothing.
func checkStart(rec *record, r *StartedRequest, f consumerFacts, seen bool, now time.Time) error {
	switch {
	case rec.Queue != r.Queue:
		return ErrStaleReport.With("task %s is in queue %s, not %s", rec.ID, rec.Queue, r.Queue)
	case rec.Type != r.Type:
		return ErrStaleReport.With("task %s has type %s, not %s", rec.ID, rec.Type, r.Type)
	case rec.Seq != r.StreamSeq && !seen:
		return ErrStaleReport.With("the message of task %s is not at stream sequence %d", rec.ID, r.StreamSeq)
	case terminal(rec.State):
		return nil
	case f.delivered < r.StreamSeq:
		return ErrStaleReport.With("the message of task %s at stream sequence %d has not been delivered", rec.ID, r.StreamSeq)
	case f.maxDeliver > 0 && r.Attempt > f.maxDeliver:
		return ErrStaleReport.With("attempt %d of task %s: queue %s delivers a message at most %d times", r.Attempt, rec.ID, rec.Queue, f.maxDeliver)
	case rec.Seq == r.StreamSeq && r.Attempt <= rec.Delivery:
		return ErrStaleReport.With("task %s: delivery %d was reported already (now at %d)", rec.ID, r.Attempt, rec.Delivery)
	case rec.State == StateRunning && now.Sub(rec.StartedAt.Time) < f.ackWait-skew:
		// A genuine redelivery comes an ack wait after the delivery it
		// replaces went silent.
		return ErrStaleReport.With("task %s runs under delivery %d, started %s ago, less than the queue's ack wait", rec.ID, rec.Delivery, now.Sub(rec.StartedAt.Time).Round(time.Millisecond))
	}
	return nil
}

// checkFinish decides whether an outcome report follows the start of the
// same delivery: the one the task's state last accepted. It returns nil or
// ErrStaleReport, and changes nothing.
func checkFinish(rec *record, r *FinishedRequest) error {
	switch {
	case rec.Queue != r.Queue:
		return ErrStaleReport.With("task %s is in queue %s, not %s", rec.ID, rec.Queue, r.Queue)
	case rec.Delivery == 0:
		return ErrStaleReport.With("task %s has no start reported", rec.ID)
	case rec.Seq != r.StreamSeq || rec.Delivery != r.Attempt:
		return ErrStaleReport.With("task %s: the start last reported is delivery %d of stream sequence %d, not %d of %d", rec.ID, rec.Delivery, rec.Seq, r.Attempt, r.StreamSeq)
	}
	return nil
}
