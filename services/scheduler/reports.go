package scheduler

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// started serves a worker's report that it is about to run a delivery: the
// task becomes running, unless it was cancelled or has finished (the worker
// drops the message), or its attempts are spent (it goes to the dead
// letters). A report that does not match a delivery the task can have is
// refused (ErrStaleReport), and one for a task without a state
// (ErrNotFound): neither changes anything.
func (s *Server) started(ctx context.Context, r *StartedRequest) (*StartedReply, error) {
	now := time.Now()
	// The message at the sequence claimed is read unless the state knows
	// it already; the consumer is asked unless it is known to have
	// delivered that far. Both at most once, whatever the state read.
	var (
		reply        StartedReply
		f            consumerFacts
		spent        bool
		seen, looked bool
		asked        bool
	)
	rec, err := s.update(ctx, r.ID, func(rec *record) (err error) {
		if rec.Queue == r.Queue && rec.Seq != r.StreamSeq && !looked {
			if seen, err = s.isTaskMsg(ctx, r.ID, r.Queue, r.StreamSeq); err != nil {
				return err
			}
			looked = true
		}
		if rec.Queue == r.Queue && !terminal(rec.State) && !asked {
			if f, err = s.consumerFacts(ctx, r.Queue, r.StreamSeq); err != nil {
				return err
			}
			asked = true
		}
		if err := checkStart(rec, r, f, seen, now); err != nil {
			return err
		}
		reply, spent, err = start(rec, r, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	if spent {
		rec, err = s.kill(ctx, r.ID, r.StreamSeq, fmt.Sprintf("delivered %d times, more than 1 + max_retries (%d); last error: %s", r.Attempt-rec.Interrupted, rec.MaxRetries, rec.LastError))
		if err != nil {
			return nil, err
		}
		return &StartedReply{Action: ActionTerm, State: rec.State}, nil
	}
	if reply.Run {
		s.emit("started", &rec, map[string]any{"worker": r.Worker})
	}
	return &reply, nil
}

// start decides a start report, already checked against the delivery, on a
// task's state rec: it makes rec running, or returns errNoChange with the
// reply to a task that has finished, or with spent for a task whose
// attempts are spent.
func start(rec *record, r *StartedRequest, now time.Time) (reply StartedReply, spent bool, err error) {
	switch {
	case terminal(rec.State):
		return StartedReply{Action: ActionTerm, State: rec.State}, false, errNoChange
	case r.Attempt-rec.Interrupted > rec.MaxRetries+1:
		return StartedReply{}, true, errNoChange
	}
	rec.State, rec.Attempts, rec.StartedAt, rec.Seq = StateRunning, r.Attempt-rec.Interrupted, bus.Time{Time: now}, r.StreamSeq
	rec.Delivery, rec.NextRetryAt, rec.Pending = r.Attempt, bus.Time{}, nil
	return StartedReply{Run: true, State: StateRunning}, false, nil
}

// startedNow serves a start report in the subscription's callback (the
// endpoint is Inline) when this instance has the task's state cached, the
// state knows the message's sequence, the queue's consumer is known to
// have delivered it, and the task is to run: it writes the state with a
// compare-and-set on the cached revision and answers from the
// acknowledgement (bus.Deferred), with no worker. Anything else, a
// conflict or a refusal on the cached state included, is left to started.
func (s *Server) startedNow(_ context.Context, m *bus.Msg) (any, error) {
	r := new(StartedRequest)
	if err := m.Decode(r); err != nil {
		return nil, err
	}
	slow := bus.Continue(func(ctx context.Context) (any, error) { return s.started(ctx, r) })
	rec, rev, ok := s.cached(r.ID)
	if !ok {
		return slow, nil
	}
	f, ok := s.knownFacts(r.Queue, r.StreamSeq)
	if !ok {
		return slow, nil
	}
	now := time.Now()
	if checkStart(&rec, r, f, false, now) != nil {
		return slow, nil
	}
	reply, _, err := start(&rec, r, now)
	if err != nil {
		return slow, nil
	}
	return s.writeState(&rec, rev, slow, func() any {
		s.emit("started", &rec, map[string]any{"worker": r.Worker})
		return &reply
	})
}

// finished serves a worker's report of an attempt's outcome. A report that
// does not follow the start of the same delivery is refused
// (ErrStaleReport), and one for a task without a state (ErrNotFound):
// neither changes anything.
func (s *Server) finished(ctx context.Context, r *FinishedRequest) (*FinishedReply, error) {
	now := time.Now()
	var reply FinishedReply
	final, event := false, ""
	rec, err := s.update(ctx, r.ID, func(rec *record) (err error) {
		if err := checkFinish(rec, r); err != nil {
			return err
		}
		reply, final, event, err = s.finish(rec, r, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	if final {
		rec, err = s.kill(ctx, r.ID, r.StreamSeq, truncate(r.Error, MaxErrorLen))
		if err != nil {
			return nil, err
		}
		return &FinishedReply{Action: ActionTerm, State: rec.State}, nil
	}
	s.emitFinished(event, &rec, r, &reply)
	return &reply, nil
}

// finish decides an attempt's outcome report, already checked against the
// delivery, on a task's state rec: it changes rec and names the event to
// emit, or returns errNoChange with the reply to a task that is no longer
// running this delivery (a report sent again: the reply is the first's),
// or with final for a task to move to the dead letters.
func (s *Server) finish(rec *record, r *FinishedRequest, now time.Time) (reply FinishedReply, final bool, event string, err error) {
	switch {
	case rec.State == StateSucceeded:
		return FinishedReply{Action: ActionAck, State: rec.State}, false, "", errNoChange
	case terminal(rec.State):
		return FinishedReply{Action: ActionTerm, State: rec.State}, false, "", errNoChange
	case rec.State == StateFailed:
		delay := max(rec.NextRetryAt.Sub(now).Milliseconds(), 1)
		return FinishedReply{Action: ActionNak, DelayMs: delay, State: rec.State}, false, "", errNoChange
	case rec.State != StateRunning:
		return FinishedReply{Action: ActionNak, State: rec.State}, false, "", errNoChange
	case r.Interrupted:
		rec.State, rec.Interrupted = StateQueued, rec.Interrupted+1
		return FinishedReply{Action: ActionNak, State: rec.State}, false, "", nil
	case r.Error == "":
		rec.State, rec.FinishedAt, rec.LastError = StateSucceeded, bus.Time{Time: now}, ""
		res := r.Result
		rec.ResultTruncated = len(res) > s.cfg.MaxResult
		if rec.ResultTruncated {
			res = res[:s.cfg.MaxResult]
		}
		rec.Result, rec.ResultEncoding = encodeText(res)
		reply, event = FinishedReply{Action: ActionAck, State: rec.State}, "succeeded"
	case r.SkipRetry || r.Attempt-rec.Interrupted >= rec.MaxRetries+1:
		rec.LastError = truncate(r.Error, MaxErrorLen)
		return FinishedReply{}, true, "", errNoChange
	default:
		delay := s.backoff(rec.Backoff, r.Attempt)
		rec.State, rec.LastError = StateFailed, truncate(r.Error, MaxErrorLen)
		rec.NextRetryAt = bus.Time{Time: now.Add(delay)}
		reply, event = FinishedReply{Action: ActionNak, DelayMs: max(delay.Milliseconds(), 1), State: rec.State}, "failed"
	}
	rec.Attempts = max(rec.Attempts, r.Attempt-rec.Interrupted)
	return reply, false, event, nil
}

// emitFinished emits the event of an outcome, if any.
func (s *Server) emitFinished(event string, rec *record, r *FinishedRequest, reply *FinishedReply) {
	if event == "" {
		return
	}
	extra := map[string]any{}
	if r.Error != "" {
		extra["error"] = rec.LastError
		extra["retry_in_ms"] = reply.DelayMs
	}
	s.emit(event, rec, extra)
}

// finishedNow serves an outcome report in the subscription's callback, as
// startedNow does a start report: when the task's state is cached and the
// outcome is not a move to the dead letters, the state is written with a
// compare-and-set on the cached revision and the report answered from the
// acknowledgement. Anything else is left to finished.
func (s *Server) finishedNow(_ context.Context, m *bus.Msg) (any, error) {
	r := new(FinishedRequest)
	if err := m.Decode(r); err != nil {
		return nil, err
	}
	slow := bus.Continue(func(ctx context.Context) (any, error) { return s.finished(ctx, r) })
	rec, rev, ok := s.cached(r.ID)
	if !ok || checkFinish(&rec, r) != nil {
		return slow, nil
	}
	reply, _, event, err := s.finish(&rec, r, time.Now())
	if err != nil {
		return slow, nil
	}
	return s.writeState(&rec, rev, slow, func() any {
		s.emitFinished(event, &rec, r, &reply)
		return &reply
	})
}

// writeState writes rec with a compare-and-set on rev in the subscription's
// callback and answers from the acknowledgement with done's reply; if the
// write fails, slow answers.
func (s *Server) writeState(rec *record, rev uint64, slow bus.Continue, done func() any) (any, error) {
	w, err := s.stateWrite(rec)
	if err != nil {
		return nil, err
	}
	return bus.Deferred(func(answer func(any, error)) {
		s.writes.Publish(w, func(ack *jetstream.PubAck, err error) {
			if s.wrote(rec, ack, err) != nil {
				answer(slow, nil)
				return
			}
			s.wroteBytes(len(w.Data))
			answer(done(), nil)
		}, jetstream.WithExpectLastSequencePerSubject(rev))
	}), nil
}

// kill moves a task to the dead letters: a copy of its message goes to
// mesh.dead.<queue> (deduplicated by id), then its state becomes dead. The
// caller removes the message from the queue (a worker's term, or a delete).
func (s *Server) kill(ctx context.Context, id string, seq uint64, lastErr string) (record, error) {
	rec, _, err := s.get(ctx, id)
	if err != nil {
		return rec, err
	}
	if terminal(rec.State) {
		return rec, nil
	}
	m := &nats.Msg{Subject: DeadSubjectPrefix + rec.Queue, Header: taskHeader(&rec)}
	if seq != 0 {
		if raw, err := s.tasks.GetMsg(ctx, seq); err == nil && raw.Header.Get(HeaderID) == id {
			m.Header, m.Data = cleanHeader(raw.Header), raw.Data
		}
	}
	m.Header.Set(HeaderLastError, truncate(lastErr, MaxErrorLen))
	m.Header.Set(jetstream.MsgIDHeader, deadMsgID(&rec))
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		return rec, fmt.Errorf("scheduler: dead-lettering task %s: %w", id, err)
	}
	rec, err = s.update(ctx, id, func(r *record) error {
		if terminal(r.State) {
			return errNoChange
		}
		r.State, r.LastError, r.FinishedAt, r.NextRetryAt, r.Pending = StateDead, lastErr, bus.Time{Time: time.Now()}, bus.Time{}, nil
		return nil
	})
	if err != nil {
		return rec, err
	}
	if rec.State == StateDead {
		s.emit("dead", &rec, map[string]any{"error": lastErr})
	}
	return rec, nil
}
