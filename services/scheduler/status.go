package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// scheduledSubject matches a delayed task's schedule (mesh.scheduler.at.)
// and staging (mesh.scheduler.due.) messages, not the periodic schedules'.
func scheduledSubject(id string) string { return "mesh.scheduler.*.*." + id }

// found is a task as the store holds it: its message in its queue (msg),
// or its schedule (sched), and its record if any.
type found struct {
	info   TaskInfo
	msg    *nats.Msg // in its queue
	sched  *nats.Msg // its schedule or staging message
	rec    TaskInfo
	recSeq uint64 // 0: no record (of this task)
}

// lookup finds a task by id: its message in a queue, else its schedule,
// else its record. A task of none is ErrNotFound.
func (s *Server) lookup(ctx context.Context, id string) (*found, error) {
	f := &found{}
	var err error
	if f.msg, err = readLast(ctx, s.nc, Stream, TaskSubjectPrefix+"*."+id); err != nil {
		return nil, fmt.Errorf("scheduler: reading task %s: %w", id, err)
	}
	m := f.msg
	if m == nil {
		if f.sched, err = readLast(ctx, s.nc, Stream, scheduledSubject(id)); err != nil {
			return nil, fmt.Errorf("scheduler: reading task %s: %w", id, err)
		}
		m = f.sched
	}
	queue := ""
	if m != nil {
		f.info, _ = taskOfMsg(m.Header, storedAt(m))
		queue = f.info.Queue
	}
	rec, seq, ok, err := readRecord(ctx, s.nc, queue, id)
	if err != nil {
		return nil, err
	}
	switch {
	case ok && (m == nil || sameTask(&rec, f.info.CreatedAt.Time)):
		f.rec, f.recSeq = rec, seq
	case ok:
		f.recSeq = seq // an earlier task's: the next write replaces it
	case m == nil:
		return nil, ErrNotFound.With("no task %s (records are kept for %s, within %d bytes)", id, s.cfg.Retention, s.cfg.HistoryMaxBytes)
	}
	if m == nil {
		f.info = f.rec
	}
	return f, nil
}

// state tells the state of a task found, as its queue holds it: a task
// whose message is in its queue is queued, running once delivered, failed
// while a retry waits; one whose message waits for its run_at is
// scheduled; else its record says.
func (s *Server) state(ctx context.Context, f *found) (TaskInfo, error) {
	info := f.info
	switch {
	case f.msg != nil && f.recSeq != 0 && f.rec.ID != "" && f.rec.State != StateQueued:
		// Failed, waiting for its retry; or finished, its message about
		// to be removed.
		return f.rec, nil
	case f.msg != nil:
		info.State = StateQueued
		if f.rec.ID != "" {
			info.Attempts, info.LastError, info.Returned = f.rec.Attempts, f.rec.LastError, f.rec.Returned
		}
		c, err := s.tasks.Consumer(ctx, info.Queue)
		if err != nil {
			return info, fmt.Errorf("scheduler: queue %s: %w", info.Queue, err)
		}
		if msgSeq(f.msg) <= c.CachedInfo().Delivered.Stream {
			info.State = StateRunning
			info.Attempts++ // the attempt under way
		}
	case f.sched != nil:
		info.State = StateScheduled
	}
	return info, nil
}

// find returns a task's state.
func (s *Server) find(ctx context.Context, id string) (TaskInfo, error) {
	f, err := s.lookup(ctx, id)
	if err != nil {
		return TaskInfo{}, err
	}
	return s.state(ctx, f)
}

func (s *Server) status(ctx context.Context, r *StatusRequest) (*TaskInfo, error) {
	info, err := s.find(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	return &info, nil
}

// putRecord writes a task's record if its last record is still expect (0:
// none).
func (s *Server) putRecord(ctx context.Context, info *TaskInfo, expect uint64) error {
	m, err := recordMsg(*info, expect)
	if err != nil {
		return err
	}
	_, err = s.js.PublishMsg(ctx, m)
	return err
}

// cancel cancels a task in any state but a final one: its record says
// cancelled (a compare-and-set on the record read, so that an outcome
// stored meanwhile wins, or loses to it), then its message is removed from
// its queue or its schedule, and the live event task.cancelled tells the
// workers: one running it cancels its handler's context, one holding it
// does not run it. A worker that gets it anyway drops it when its outcome's
// write finds the record cancelled.
func (s *Server) cancel(ctx context.Context, r *CancelRequest) (*CancelReply, error) {
	for attempt := 0; ; attempt++ {
		f, err := s.lookup(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		info, err := s.state(ctx, f)
		if err != nil {
			return nil, err
		}
		if terminal(info.State) {
			return nil, ErrFinished.With("task %s has %s", r.ID, info.State)
		}
		was := info.State
		info.State, info.FinishedAt, info.NextRetryAt = StateCancelled, bus.Time{Time: time.Now()}, bus.Time{}
		err = s.putRecord(ctx, &info, f.recSeq)
		if writtenFirst(err) && attempt < 5 {
			continue // an outcome, or another cancel, came first
		}
		if err != nil {
			return nil, fmt.Errorf("scheduler: cancelling task %s: %w", r.ID, err)
		}
		switch {
		case f.msg != nil:
			if err := s.tasks.DeleteMsg(ctx, msgSeq(f.msg)); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				s.log.Warn().Err(err).Str("task", r.ID).Msg("cannot remove a cancelled task's message; a worker drops it")
			}
		case f.sched != nil:
			for _, subj := range []string{atPrefix + info.Queue + "." + r.ID, duePrefix + info.Queue + "." + r.ID} {
				if err := s.tasks.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
					s.log.Warn().Err(err).Str("task", r.ID).Msg("cannot remove a cancelled task's schedule; a worker drops it")
				}
			}
		}
		s.emitTask("cancelled", &info, map[string]any{"was": was})
		return &CancelReply{ID: r.ID, Was: was, Done: true}, nil
	}
}
