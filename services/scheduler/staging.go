package scheduler

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// stagingAckWait is the ack wait of the staging consumer: an instance that
// dies holding delayed tasks hands them over after this long. A task is
// held at most half of it; one due later is given back until closer to
// its run_at.
const stagingAckWait = 5 * time.Second

// held is a delayed task this instance holds until its run_at.
type held struct {
	msg   jetstream.Msg
	timer *time.Timer
}

// onDue receives what the server's schedules (or a submit due very soon)
// put on the staging subjects: delayed tasks a little before their run_at
// (mesh.scheduler.due.<queue>.<id>), and the ticks of periodic schedules
// (mesh.scheduler.tick.<name>).
func (s *Server) onDue(msg jetstream.Msg) {
	h := msg.Headers()
	if strings.HasPrefix(h.Get("Nats-Scheduler"), everyPrefix) {
		s.goAsync(func() { s.tick(msg) })
		return
	}
	runAt, err := time.Parse(time.RFC3339Nano, h.Get(HeaderRunAt))
	if err != nil || h.Get(HeaderID) == "" || h.Get(HeaderQueue) == "" {
		s.log.Error().Str("subject", msg.Subject()).Msg("staged message without a task id, queue or run_at; dropped")
		_ = msg.Term()
		return
	}
	d := time.Until(runAt)
	if d > stagingAckWait/2 {
		// Not due for a while (a clock step, a long Lead): come back closer
		// to run_at.
		_ = msg.NakWithDelay(d - min(s.cfg.Lead, stagingAckWait/4))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		_ = msg.Nak()
		return
	}
	hd := &held{msg: msg}
	s.wg.Add(1)
	s.held[hd] = struct{}{}
	hd.timer = time.AfterFunc(max(d, 0), func() {
		defer s.wg.Done()
		s.mu.Lock()
		delete(s.held, hd)
		s.mu.Unlock()
		s.release(msg)
	})
}

// goAsync runs fn in a goroutine that Stop waits for.
func (s *Server) goAsync(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// release publishes a delayed task to its queue at its run_at, then
// acknowledges the staging message; nothing else is written (the task's
// message is its record while it is live). A task cancelled while held
// is dropped: a cancel writes the task's record, then purges its staging
// message.
func (s *Server) release(msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := msg.Headers()
	info, _ := taskOfMsg(h, time.Now())
	id, queue := info.ID, info.Queue
	if meta, err := msg.Metadata(); err == nil {
		if _, err := s.tasks.GetMsg(ctx, meta.Sequence.Stream); errors.Is(err, jetstream.ErrMsgNotFound) {
			return // cancelled, or staged again by a newer copy that comes on its own
		}
	}
	if rec, _, ok, err := readRecord(ctx, s.nc, queue, id); err == nil && ok && terminal(rec.State) && sameTask(&rec, info.CreatedAt.Time) {
		_ = msg.Ack() // cancelled, its staging message not purged yet
		return
	}
	isNew, ok := s.publishHard(ctx, queuedMsg(queue, id, cleanHeader(h), msg.Data(), id), id)
	if !ok {
		_ = msg.Nak()
		return
	}
	_ = msg.Ack()
	if !isNew {
		return // released before (a publication that got no answer, or an acknowledgement lost)
	}
	info.State = StateQueued
	s.emitTask("queued", &info, nil)
}

// publishHard publishes the message of task id to its queue, sending it
// again for a while (a reconnection, a new stream leader): the staging
// message would come back only after its ack wait otherwise. The task's
// message already in its queue (an earlier publication that got no
// answer, or a tick handled twice) counts as published, but not as new.
// Not ok: give the staging message back.
func (s *Server) publishHard(ctx context.Context, m *nats.Msg, id string) (isNew, ok bool) {
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		ack, err := s.js.PublishMsg(pctx, m)
		pcancel()
		switch {
		case err == nil:
			return !ack.Duplicate, true
		case liveTwin(err):
			return false, true
		case s.nc.IsClosed():
			return false, false // this instance is gone: the message is handed over after its ack wait
		}
		select {
		case <-s.stop:
		case <-time.After(wait):
			if ctx.Err() == nil {
				continue
			}
		}
		s.log.Warn().Err(err).Str("task", id).Msg("cannot enqueue a delayed task or a tick; it is handed over")
		return false, false
	}
}

// queuedMsg is the message that puts task id in its queue, with header h:
// deduplicated by msgID, and stored only while the task has no message
// there.
func queuedMsg(queue, id string, h nats.Header, payload []byte, msgID string) *nats.Msg {
	h.Set(jetstream.MsgIDHeader, msgID)
	h.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	return &nats.Msg{Subject: taskSubject(queue, id), Header: h, Data: payload}
}

// cleanHeader copies a staged message's header without the server's
// scheduling, deduplication, expectation and rollup headers.
func cleanHeader(h nats.Header) nats.Header {
	out := nats.Header{}
	for k, v := range h {
		if strings.HasPrefix(k, "Nats-Schedul") || strings.HasPrefix(k, "Nats-Expected") ||
			k == jetstream.MsgIDHeader || k == jetstream.MsgRollup || k == "Nats-TTL" {
			continue
		}
		out[k] = v
	}
	return out
}

// tick makes the one task of a periodic schedule's tick. The server fires
// the tick once (the schedule lives in the replicated stream) and the
// staging consumer hands it to one instance; a redelivered tick makes the
// same id, so it is enqueued once (the deduplication window, or the
// refusal of a second message of a live task).
//
// A schedule's ticks share its staging subject, mesh.scheduler.tick.<name>,
// which holds one message: a tick replaces the one before it there if
// that one is still waiting. So while no instance takes ticks one waits,
// the latest, rather than a backlog; a tick already handed to an instance
// when the next comes still makes its task (the instance acknowledges a
// message that has gone, which changes nothing).
func (s *Server) tick(msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	h := cleanHeader(msg.Headers())
	name := strings.TrimPrefix(msg.Headers().Get("Nats-Scheduler"), everyPrefix)
	queue := h.Get(HeaderQueue)
	if CheckQueue(queue) != nil {
		s.log.Error().Str("schedule", name).Msg("tick without a queue; dropped")
		_ = msg.Term()
		return
	}
	id := name + "-" + strconv.FormatInt(meta.Timestamp.UnixMilli(), 10) + "-" + strconv.FormatUint(meta.Sequence.Stream, 10)
	for _, k := range []string{headerEvery, headerCron, headerTZ, headerCreated} {
		h.Del(k)
	}
	h.Set(HeaderID, id)
	h.Set(HeaderSchedule, name)
	// Created at its tick, however late the tick is handled.
	h.Set(HeaderCreatedAt, meta.Timestamp.UTC().Format(time.RFC3339Nano))
	if err := s.ensureQueue(ctx, queue); err != nil {
		_ = msg.NakWithDelay(time.Second)
		return
	}
	isNew, ok := s.publishHard(ctx, queuedMsg(queue, id, h, msg.Data(), id), id)
	if !ok {
		_ = msg.NakWithDelay(100 * time.Millisecond)
		return
	}
	_ = msg.Ack()
	if !isNew {
		return // a tick handled twice
	}
	info, _ := taskOfMsg(h, time.Now())
	info.State = StateQueued
	s.emitTask("submitted", &info, map[string]any{"schedule": name})
}
