package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// Subjects of the dead letters.
const (
	SubjectDeadList    = "mesh.scheduler.dead.list"
	SubjectDeadRequeue = "mesh.scheduler.dead.requeue"
	SubjectDeadDelete  = "mesh.scheduler.dead.delete"
)

// DeadListRequest asks for one page of dead tasks, oldest first.
type DeadListRequest struct {
	Queue  string `json:"queue,omitempty"`  // only this queue
	Limit  int    `json:"limit,omitempty"`  // zero: 100; at most MaxListLimit
	Cursor string `json:"cursor,omitempty"` // the next_cursor of the previous page
}

// DeadTask is a task in the dead letters.
type DeadTask struct {
	ID           string   `json:"id,omitempty"` // empty for a message of no task of the service
	Queue        string   `json:"queue"`
	Type         string   `json:"type,omitempty"`
	LastError    string   `json:"last_error,omitempty"`
	DiedAt       bus.Time `json:"died_at"`
	Seq          uint64   `json:"seq"` // in the dead-letter stream
	PayloadBytes int      `json:"payload_bytes"`
}

// DeadListReply is one page of dead tasks.
type DeadListReply struct {
	Tasks      []DeadTask `json:"tasks"`
	NextCursor string     `json:"next_cursor,omitempty"` // empty on the last page
}

// DeadRequest names the dead tasks to requeue or delete: one task (ID),
// or every dead task of a queue (Queue and All).
type DeadRequest struct {
	ID    string `json:"id,omitempty"`
	Queue string `json:"queue,omitempty"`
	All   bool   `json:"all,omitempty"`
}

// DeadReply lists the tasks requeued or deleted.
type DeadReply struct {
	IDs []string `json:"ids"`
}

// Validate implements bus.Validator.
func (r *DeadListRequest) Validate() error {
	if r.Queue != "" {
		if err := CheckQueue(r.Queue); err != nil {
			return err
		}
	}
	if r.Limit < 0 || r.Limit > MaxListLimit {
		return ErrInvalid.With("limit must be in [0, %d], got %d", MaxListLimit, r.Limit)
	}
	if r.Cursor != "" {
		if _, err := strconv.ParseUint(r.Cursor, 10, 64); err != nil {
			return ErrInvalid.With("cursor %q is not one this service gave", r.Cursor)
		}
	}
	return nil
}

// Validate implements bus.Validator.
func (r *DeadRequest) Validate() error {
	switch {
	case r.ID != "" && (r.All || r.Queue != ""):
		return ErrInvalid.With("give id, or queue with all: true, not both")
	case r.ID != "":
		return checkID(r.ID)
	case r.Queue == "" || !r.All:
		return ErrInvalid.With("give id, or queue with all: true")
	}
	return CheckQueue(r.Queue)
}

// deadMsgs calls fn with the messages of the dead letters on filter from
// stream sequence from on, in order, until fn returns false or none is left.
func (s *Server) deadMsgs(ctx context.Context, filter string, from uint64, fn func(*jetstream.RawStreamMsg) bool) error {
	for seq := max(from, 1); ; {
		raw, err := s.dead.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("scheduler: reading the dead letters: %w", err)
		}
		if !fn(raw) {
			return nil
		}
		seq = raw.Sequence + 1
	}
}

func deadFilter(queue string) string {
	if queue == "" {
		return DeadSubjectPrefix + "*"
	}
	return DeadSubjectPrefix + queue
}

func deadTask(raw *jetstream.RawStreamMsg) DeadTask {
	return DeadTask{
		ID: raw.Header.Get(HeaderID), Queue: strings.TrimPrefix(raw.Subject, DeadSubjectPrefix),
		Type: raw.Header.Get(HeaderType), LastError: raw.Header.Get(HeaderLastError),
		DiedAt: bus.Time{Time: raw.Time}, Seq: raw.Sequence, PayloadBytes: len(raw.Data),
	}
}

func (s *Server) deadList(ctx context.Context, r *DeadListRequest) (*DeadListReply, error) {
	limit := r.Limit
	if limit == 0 {
		limit = 100
	}
	var from uint64
	if r.Cursor != "" {
		from, _ = strconv.ParseUint(r.Cursor, 10, 64)
		from++
	}
	reply := &DeadListReply{Tasks: []DeadTask{}}
	err := s.deadMsgs(ctx, deadFilter(r.Queue), from, func(raw *jetstream.RawStreamMsg) bool {
		if len(reply.Tasks) == limit {
			reply.NextCursor = strconv.FormatUint(reply.Tasks[limit-1].Seq, 10)
			return false
		}
		reply.Tasks = append(reply.Tasks, deadTask(raw))
		return true
	})
	if err != nil {
		return nil, err
	}
	return reply, nil
}

// deadOf finds the dead messages a request names: a task's (in its
// state's queue, or in every queue when its state has expired), or every
// one of a queue.
func (s *Server) deadOf(ctx context.Context, r *DeadRequest) ([]*jetstream.RawStreamMsg, error) {
	queue := r.Queue
	if r.ID != "" {
		if rec, _, err := s.get(ctx, r.ID); err == nil {
			queue = rec.Queue
		} else if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
	}
	var found []*jetstream.RawStreamMsg
	err := s.deadMsgs(ctx, deadFilter(queue), 0, func(raw *jetstream.RawStreamMsg) bool {
		if r.ID == "" || raw.Header.Get(HeaderID) == r.ID {
			found = append(found, raw)
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if len(found) == 0 && r.ID != "" {
		return nil, ErrNotFound.With("task %s is not in the dead letters", r.ID)
	}
	return found, nil
}

func (s *Server) deadRequeue(ctx context.Context, r *DeadRequest) (*DeadReply, error) {
	msgs, err := s.deadOf(ctx, r)
	if err != nil {
		return nil, err
	}
	reply := &DeadReply{IDs: []string{}}
	for _, raw := range msgs {
		id := raw.Header.Get(HeaderID)
		if id == "" {
			continue // not a task of this service: it can only be deleted
		}
		if err := s.requeue(ctx, raw); err != nil {
			return reply, fmt.Errorf("scheduler: requeueing task %s (requeued before it: %v): %w", id, reply.IDs, err)
		}
		reply.IDs = append(reply.IDs, id)
	}
	return reply, nil
}

// requeue runs a dead task again, with the same id and its attempts
// reset. As a submit does, it writes the task's state first, carrying the
// message (so the repair enqueues it if this instance dies before its
// publication), then publishes the message, then deletes the dead one. A
// state that is no longer dead was requeued already (by a requeue that
// died before deleting the dead message): only the delete is left.
func (s *Server) requeue(ctx context.Context, raw *jetstream.RawStreamMsg) error {
	id := raw.Header.Get(HeaderID)
	queue := strings.TrimPrefix(raw.Subject, DeadSubjectPrefix)
	h := cleanHeader(raw.Header)
	h.Del(HeaderLastError)
	// The task's id may still be in the queue's deduplication window:
	// the requeued message has an id of its own.
	h.Set(jetstream.MsgIDHeader, id+"-requeue-"+strconv.FormatUint(raw.Sequence, 10))
	m := &nats.Msg{Subject: TaskSubjectPrefix + queue, Header: h, Data: raw.Data}
	if err := s.ensureQueue(ctx, queue); err != nil {
		return err
	}
	rec, rev, err := s.get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		// Its state expired before its dead letter: made again from the
		// message.
		maxRetries, _ := strconv.Atoi(h.Get(HeaderMaxRetries))
		timeoutMs, _ := strconv.ParseInt(h.Get(HeaderTimeout), 10, 64)
		rec = record{TaskInfo: TaskInfo{ID: id, Queue: queue, Type: h.Get(HeaderType), MaxRetries: maxRetries,
			TimeoutMs: s.timeoutMs(timeoutMs), Schedule: h.Get(HeaderSchedule), CreatedAt: bus.Time{Time: time.Now()}}}
	case err != nil:
		return err
	case rec.State != StateDead:
		return s.deleteDead(ctx, raw.Sequence)
	}
	rec.State, rec.Attempts, rec.LastError, rec.Result, rec.ResultEncoding, rec.ResultTruncated = StateQueued, 0, "", "", "", false
	rec.StartedAt, rec.FinishedAt, rec.NextRetryAt, rec.RunAt = bus.Time{}, bus.Time{}, bus.Time{}, bus.Time{}
	rec.Seq, rec.Delivery, rec.Interrupted = 0, 0, 0
	rec.Requeues++
	rec.Pending = &pendingMsg{Subject: m.Subject, Header: m.Header, Data: m.Data}
	if rev, err = s.put(ctx, &rec, rev); err != nil {
		return fmt.Errorf("writing its state: %w", err)
	}
	ack, err := s.js.PublishMsg(ctx, m)
	switch {
	case err != nil && !bus.Unanswered(err):
		return fmt.Errorf("enqueueing it: %w (its state says queued: the repair enqueues it)", err)
	case err == nil:
		s.noteSeq(id, rev, ack.Sequence)
	}
	s.emit("requeued", &rec, nil)
	return s.deleteDead(ctx, raw.Sequence)
}

// deadMsgID is the deduplication id of a task's dead letter: the same for
// one death (reported twice, say), another after each requeue.
func deadMsgID(rec *record) string {
	if rec.Requeues == 0 {
		return rec.ID
	}
	return rec.ID + "-dead-" + strconv.Itoa(rec.Requeues)
}

func (s *Server) deleteDead(ctx context.Context, seq uint64) error {
	if err := s.dead.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("scheduler: deleting dead letter %d: %w", seq, err)
	}
	return nil
}

func (s *Server) deadDelete(ctx context.Context, r *DeadRequest) (*DeadReply, error) {
	msgs, err := s.deadOf(ctx, r)
	if err != nil {
		return nil, err
	}
	reply := &DeadReply{IDs: []string{}}
	for _, raw := range msgs {
		if err := s.deleteDead(ctx, raw.Sequence); err != nil {
			return reply, err
		}
		if id := raw.Header.Get(HeaderID); id != "" {
			reply.IDs = append(reply.IDs, id)
		}
	}
	return reply, nil
}
