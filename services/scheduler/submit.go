package scheduler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/meshkit/mesh/pkg/bus"
)

// noStreamWait bounds how long a submit sends its message again while no
// stream takes it, well within a client's default 5 s.
const noStreamWait = 2 * time.Second

// uniqueGrace: a unique key that names no task (no message, schedule or
// record) is taken over once it is older than this, longer than a submit
// takes between taking the key and storing its message: it was left by a
// submit that failed in between.
var uniqueGrace = 10 * time.Second

func uniqueKey(queue, key string) string {
	h := sha256.Sum256([]byte(key))
	return "u." + queue + "." + hex.EncodeToString(h[:16])
}

// newTask is a submitted task, ready to be stored: its one write is msg.
type newTask struct {
	info TaskInfo
	msg  *nats.Msg
	ukey string // its unique key in the bucket, if any
}

// prepare checks a submit the request's Validate let through against the
// service's bounds, and makes its task.
func (s *Server) prepare(r *SubmitRequest, now time.Time) (*newTask, error) {
	if len(r.Payload) > s.cfg.MaxPayload {
		return nil, ErrPayloadTooLarge.With("payload of %d bytes exceeds the limit of %d", len(r.Payload), s.cfg.MaxPayload)
	}
	runAt := r.RunAt.Time
	if r.DelayMs > 0 {
		runAt = now.Add(time.Duration(r.DelayMs) * time.Millisecond)
	}
	t := &newTask{info: TaskInfo{
		ID: r.ID, Queue: r.Queue, Type: r.Type, State: StateQueued,
		MaxRetries: s.maxRetries(r.MaxRetries), TimeoutMs: s.timeoutMs(r.TimeoutMs),
		UniqueKey: r.UniqueKey, CreatedAt: bus.Time{Time: now},
	}}
	if t.info.ID == "" {
		t.info.ID = nuid.Next()
	}
	if r.UniqueKey != "" {
		t.ukey = uniqueKey(r.Queue, r.UniqueKey)
	}
	if runAt.IsZero() || !runAt.After(now) {
		t.msg = taskMsg(&t.info, r.Backoff, r.Payload)
		return t, nil
	}
	t.info.State, t.info.RunAt = StateScheduled, bus.Time{Time: runAt}
	h := headerOf(&t.info, r.Backoff)
	h.Set(HeaderRunAt, runAt.UTC().Format(time.RFC3339Nano))
	h.Set(HeaderCreatedAt, now.UTC().Format(time.RFC3339Nano))
	// An id of its own: the task's id goes with its queue message.
	h.Set(jetstream.MsgIDHeader, "at-"+t.info.ID)
	due := duePrefix + r.Queue + "." + t.info.ID
	if fire := runAt.Add(-s.cfg.Lead); fire.After(now.Add(s.cfg.Lead / 2)) {
		// The server's schedule releases it to staging Lead early.
		t.msg = &nats.Msg{Subject: atPrefix + r.Queue + "." + t.info.ID, Header: h, Data: r.Payload}
		h.Set("Nats-Schedule", "@at "+fire.UTC().Format(time.RFC3339Nano))
		h.Set("Nats-Schedule-Target", due)
	} else {
		// Due too soon for a schedule: staged at once.
		t.msg = &nats.Msg{Subject: due, Header: h, Data: r.Payload}
	}
	return t, nil
}

func (s *Server) submit(ctx context.Context, r *SubmitRequest) (*SubmitReply, error) {
	if r.Tasks != nil {
		return s.submitBatch(ctx, r.Tasks), nil
	}
	now := time.Now()
	t, err := s.prepare(r, now)
	if err != nil {
		return nil, err
	}
	until := now.Add(noStreamWait)
	live, err := s.claim(ctx, r, t, until)
	if err != nil {
		return nil, err
	}
	if live {
		return s.existing(ctx, r, &t.info)
	}
	var ack *jetstream.PubAck
	err = bus.RetryNoStream(ctx, until, func() (err error) {
		ack, err = s.js.PublishMsg(ctx, t.msg)
		return err
	})
	return s.stored(ctx, r, t, ack, err)
}

// claim ensures the task's queue and takes its unique key, if any. A
// delayed task whose id names a task still in a queue is that task (live):
// its schedule's subject is not the queue's, so the store would take it,
// and drop it at its release.
func (s *Server) claim(ctx context.Context, r *SubmitRequest, t *newTask, until time.Time) (live bool, err error) {
	if err := s.ensureQueue(ctx, r.Queue); err != nil {
		return false, err
	}
	if t.info.State == StateScheduled {
		m, err := readLast(ctx, s.nc, Stream, TaskSubjectPrefix+"*."+t.info.ID)
		if err != nil {
			return false, fmt.Errorf("scheduler: reading task %s: %w", t.info.ID, err)
		}
		if m != nil {
			return true, nil
		}
	}
	if t.ukey == "" {
		return false, nil
	}
	return false, s.claimUnique(ctx, t.ukey, r, t.info.ID, until)
}

// stored answers a submit once its message's write is answered (ack) or
// failed (err). A message the store already has (sent again within the
// deduplication window, or of a task still in its queue) is the task the
// id names: the same submit sent again if it has the same queue and type,
// answered with that task; another task's id otherwise, refused.
func (s *Server) stored(ctx context.Context, r *SubmitRequest, t *newTask, ack *jetstream.PubAck, err error) (*SubmitReply, error) {
	switch {
	case err == nil && ack.Duplicate, liveTwin(err):
		return s.existing(ctx, r, &t.info)
	case err != nil && bus.Unanswered(err):
		// It may stand: the unique key stays with its id, so that the
		// same submit sent again finds it.
		return nil, bus.ErrUnavailable.With("task %s: storing it got no answer (%v), and whether it stands is unknown: submit it again with the same id", t.info.ID, err)
	case err != nil:
		s.giveBackUnique(ctx, t.ukey)
		return nil, fmt.Errorf("scheduler: storing task %s: %w", t.info.ID, err)
	}
	s.emitTask("submitted", &t.info, nil)
	return &SubmitReply{ID: t.info.ID, State: t.info.State, RunAt: t.info.RunAt}, nil
}

// existing answers a submit whose id names a task the store has.
func (s *Server) existing(ctx context.Context, r *SubmitRequest, t *TaskInfo) (*SubmitReply, error) {
	info, err := s.find(ctx, t.ID)
	if errors.Is(err, ErrNotFound) {
		// Deduplicated, then finished and its record gone already.
		return &SubmitReply{ID: t.ID, State: t.State, RunAt: t.RunAt}, nil
	}
	if err != nil {
		return nil, err
	}
	if info.Queue != r.Queue || info.Type != r.Type {
		return nil, ErrDuplicate.With("id %s names a task of queue %s and type %s; %s%s", t.ID, info.Queue, info.Type, duplicateMarker, t.ID)
	}
	return &SubmitReply{ID: info.ID, State: info.State, RunAt: info.RunAt}, nil
}

// submitBatch submits each task of a batch on its own, their messages
// pipelined (one round trip to the store for the batch), and answers each.
func (s *Server) submitBatch(ctx context.Context, tasks []SubmitRequest) *SubmitReply {
	type sent struct {
		t    *newTask
		ack  *jetstream.PubAck
		err  error
		done chan struct{}
	}
	results := make([]SubmitResult, len(tasks))
	pending := make([]*sent, len(tasks))
	now := time.Now()
	until := now.Add(noStreamWait)
	for i := range tasks {
		r := &tasks[i]
		err := r.Validate()
		if err == nil && r.Tasks != nil {
			err = ErrInvalid.With("a task of a batch holds no tasks")
		}
		var t *newTask
		if err == nil {
			t, err = s.prepare(r, now)
		}
		live := false
		if err == nil {
			live, err = s.claim(ctx, r, t, until)
		}
		if err == nil && live {
			var e *SubmitReply
			if e, err = s.existing(ctx, r, &t.info); err == nil {
				results[i] = SubmitResult{ID: e.ID, State: e.State, RunAt: e.RunAt}
				continue
			}
		}
		if err != nil {
			results[i] = SubmitResult{ID: r.ID, Error: bus.AsError(err)}
			continue
		}
		p := &sent{t: t, done: make(chan struct{})}
		pending[i] = p
		s.writes.Publish(t.msg, func(ack *jetstream.PubAck, err error) {
			p.ack, p.err = ack, err
			close(p.done)
		})
	}
	for i, p := range pending {
		if p == nil {
			continue
		}
		<-p.done
		if bus.NoStream(p.err) {
			// Nothing was stored: sent again, on its own, while a
			// stream elects its leader.
			p.err = bus.RetryNoStream(ctx, until, func() (err error) {
				p.ack, err = s.js.PublishMsg(ctx, p.t.msg)
				return err
			})
		}
		r, err := s.stored(ctx, &tasks[i], p.t, p.ack, p.err)
		if err != nil {
			results[i] = SubmitResult{ID: p.t.info.ID, Error: bus.AsError(err)}
			continue
		}
		results[i] = SubmitResult{ID: r.ID, State: r.State, RunAt: r.RunAt}
	}
	return &SubmitReply{Tasks: results}
}

// giveBackUnique removes the unique key of a submit that failed, if it has
// one. Best effort: a key left behind is taken over by a later submit once
// it is seen to name no task (claimUnique).
func (s *Server) giveBackUnique(ctx context.Context, ukey string) {
	if ukey == "" {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = s.kv.Purge(cctx, ukey)
}

// claimUnique takes a queue's unique key for a new task, or answers
// ErrDuplicate with the task that holds it. The key of the same submit
// sent again (same id) is its own. A key naming no task, older than
// uniqueGrace, was left by a submit that failed before storing its task:
// it is taken over.
func (s *Server) claimUnique(ctx context.Context, ukey string, r *SubmitRequest, id string, until time.Time) error {
	uf := time.Duration(r.UniqueForMs) * time.Millisecond
	if uf == 0 {
		uf = time.Hour
	}
	for attempt := 0; ; attempt++ {
		err := bus.RetryNoStream(ctx, until, func() error {
			_, err := s.kv.Create(ctx, ukey, []byte(id), jetstream.KeyTTL(uf))
			return err
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) || attempt == 2 {
			return fmt.Errorf("scheduler: unique key: %w", err)
		}
		e, err := s.kv.Get(ctx, ukey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired or given back meanwhile
		}
		if err != nil {
			return fmt.Errorf("scheduler: unique key: %w", err)
		}
		existing := string(e.Value())
		if existing == id {
			return nil // this submit's own, sent again with its id
		}
		dup := ErrDuplicate.With("queue %s already has a task with unique key %q; %s%s", r.Queue, r.UniqueKey, duplicateMarker, existing)
		if time.Since(e.Created()) < uniqueGrace {
			return dup
		}
		if _, err := s.find(ctx, existing); !errors.Is(err, ErrNotFound) {
			return dup
		}
		// Left behind: take it over unless someone else just did.
		if err := s.kv.Purge(ctx, ukey, jetstream.LastRevision(e.Revision())); err != nil && !writtenFirst(err) {
			return fmt.Errorf("scheduler: unique key: %w", err)
		}
	}
}

func (s *Server) emitTask(what string, info *TaskInfo, extra map[string]any) {
	data := map[string]any{"id": info.ID, "queue": info.Queue, "type": info.Type, "state": info.State, "attempts": info.Attempts}
	for k, v := range extra {
		data[k] = v
	}
	_ = s.events.Emit(what, data)
}
