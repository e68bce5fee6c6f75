package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

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
// record's queue, or in every queue when it has no record), or every one
// of a queue.
func (s *Server) deadOf(ctx context.Context, r *DeadRequest) ([]*jetstream.RawStreamMsg, error) {
	queue := r.Queue
	if r.ID != "" {
		rec, _, ok, err := readRecord(ctx, s.nc, "", r.ID)
		if err != nil {
			return nil, fmt.Errorf("scheduler: reading the record of task %s: %w", r.ID, err)
		}
		if ok {
			queue = rec.Queue
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

// casTries bounds the compare-and-set writes of a record that another
// write keeps coming first to.
const casTries = 5

// requeue runs a dead task again, with the same id and its attempts reset:
// its record first (queued, attempts 0, compare-and-set on the dead
// record), then its message, carrying that record's sequence
// (HeaderRecordSeq: the worker expects it), then the dead letter is
// deleted. Each step can be repeated: a requeue that died after writing
// the record is finished by the next one (a record that says queued: the
// message is published again, the deduplication or the refusal of a
// second message of a live task absorbs a copy); a record that says
// anything else but dead means that the task ran again since: only the
// delete is left.
func (s *Server) requeue(ctx context.Context, raw *jetstream.RawStreamMsg) error {
	id := raw.Header.Get(HeaderID)
	queue := strings.TrimPrefix(raw.Subject, DeadSubjectPrefix)
	var info TaskInfo
	var seq uint64
	for try := 0; ; try++ {
		rec, last, ok, err := readRecord(ctx, s.nc, queue, id)
		if err != nil {
			return fmt.Errorf("reading its record: %w", err)
		}
		if ok && rec.State == StateQueued {
			info, seq = rec, last
			break
		}
		if ok && rec.State != StateDead {
			return s.deleteDead(ctx, raw.Sequence)
		}
		// Made anew from the dead letter (a record past its retention has
		// gone): a requeued task starts again.
		info, _ = taskOfMsg(raw.Header, raw.Time)
		info.State, info.Queue, info.RunAt = StateQueued, queue, bus.Time{}
		if ok {
			info.CreatedAt = rec.CreatedAt
		}
		m, err := recordMsg(info, last)
		if err != nil {
			return err
		}
		ack, err := s.js.PublishMsg(ctx, m)
		if writtenFirst(err) && try < casTries {
			continue
		}
		if err != nil {
			return fmt.Errorf("writing its record: %w", err)
		}
		seq = ack.Sequence
		break
	}
	if err := s.ensureQueue(ctx, queue); err != nil {
		return err
	}
	h := cleanHeader(raw.Header)
	h.Del(HeaderLastError)
	h.Set(HeaderRecordSeq, strconv.FormatUint(seq, 10))
	// Its record's: the message is stored now.
	h.Set(HeaderCreatedAt, info.CreatedAt.UTC().Format(time.RFC3339Nano))
	// The task's id may still be in the queue's deduplication window:
	// the requeued message has an id of its own.
	m := queuedMsg(queue, id, h, raw.Data, "requeue-"+id+"-"+strconv.FormatUint(raw.Sequence, 10))
	if _, err := s.js.PublishMsg(ctx, m); err != nil && !liveTwin(err) {
		return fmt.Errorf("enqueueing it: %w (its record says queued: requeue it again)", err)
	}
	s.emitTask("requeued", &info, nil)
	return s.deleteDead(ctx, raw.Sequence)
}

// onAdvisory handles the server's max-deliveries advisory of a queue: the
// task it names was delivered MaxDeliver times without an outcome and stays
// in the work queue, never delivered again, until it is removed: it goes to
// the dead letters and its record says dead, then it is deleted from the
// queue.
func (s *Server) onAdvisory(msg jetstream.Msg) {
	s.goAsync(func() {
		var adv struct {
			Stream     string `json:"stream"`
			StreamSeq  uint64 `json:"stream_seq"`
			Deliveries int    `json:"deliveries"`
		}
		if err := json.Unmarshal(msg.Data(), &adv); err != nil || adv.Stream != Stream || adv.StreamSeq == 0 {
			_ = msg.Term()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		raw, err := s.tasks.GetMsg(ctx, adv.StreamSeq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			_ = msg.Ack() // already gone
			return
		}
		if err == nil {
			err = s.bury(ctx, raw, adv.Deliveries)
		}
		if err == nil {
			err = s.tasks.DeleteMsg(ctx, adv.StreamSeq)
		}
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.Warn().Err(err).Uint64("seq", adv.StreamSeq).Msg("cannot move a task out of deliveries to the dead letters yet")
			_ = msg.NakWithDelay(time.Second)
			return
		}
		_ = msg.Ack()
	})
}

// bury moves the task of message raw, delivered the given times without an
// outcome, to the dead letters: a copy of its message to
// mesh.dead.<queue>, then its record dead (compare-and-set; a record
// written first is read and decided on again). A task whose record says
// it has finished keeps its outcome: its worker wrote it but did not
// acknowledge the message. The caller deletes the message.
func (s *Server) bury(ctx context.Context, raw *jetstream.RawStreamMsg, deliveries int) error {
	msg, _ := taskOfMsg(raw.Header, raw.Time)
	queue, _, _ := strings.Cut(strings.TrimPrefix(raw.Subject, TaskSubjectPrefix), ".")
	msg.Queue = queue
	reason := fmt.Sprintf("delivered %d times without an outcome", deliveries)
	dead := deadLetter(raw.Header, raw.Data, queue, reason)
	if msg.ID == "" {
		// Not a task of this service: kept in the dead letters all the same.
		_, err := s.js.PublishMsg(ctx, dead)
		return err
	}
	dead.Header.Set(jetstream.MsgIDHeader, deadLetterID(msg.ID, raw.Sequence, deliveries))
	var letter uint64 // the dead letter's sequence, once stored
	for try := 0; ; try++ {
		info := msg
		rec, seq, ok, err := readRecord(ctx, s.nc, queue, msg.ID)
		if err != nil {
			return err
		}
		if ok && sameTask(&rec, msg.CreatedAt.Time) {
			if terminal(rec.State) {
				if letter != 0 {
					// Finished by another party since the letter was written.
					return s.deleteDead(ctx, letter)
				}
				return nil
			}
			info = rec
		}
		if letter == 0 {
			ack, err := s.js.PublishMsg(ctx, dead)
			if err != nil {
				return fmt.Errorf("scheduler: dead-lettering task %s: %w", msg.ID, err)
			}
			letter = ack.Sequence
		}
		info.State, info.Attempts, info.LastError = StateDead, max(info.Attempts, deliveries), reason
		info.FinishedAt, info.NextRetryAt = bus.Time{Time: time.Now()}, bus.Time{}
		err = s.putRecord(ctx, &info, seq)
		if writtenFirst(err) && try < casTries {
			continue
		}
		if err != nil {
			return fmt.Errorf("scheduler: writing the dead record of task %s: %w", msg.ID, err)
		}
		s.emitTask("dead", &info, map[string]any{"error": reason})
		return nil
	}
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
