package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
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
// put on the staging subjects: delayed tasks a little before their run_at,
// and the ticks of periodic schedules.
func (s *Server) onDue(msg jetstream.Msg) {
	h := msg.Headers()
	if strings.HasPrefix(h.Get("Nats-Scheduler"), everyPrefix) {
		s.goAsync(func() { s.tick(msg) })
		return
	}
	runAt, err := time.Parse(time.RFC3339Nano, h.Get(HeaderRunAt))
	if err != nil || h.Get(HeaderID) == "" {
		s.log.Error().Str("subject", msg.Subject()).Msg("staged message without a task id or run_at; dropped")
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

// release publishes a delayed task to its queue at its run_at, then marks it
// queued and acknowledges the staging message. The publication comes first,
// for punctuality; a task cancelled meanwhile is dropped by the worker that
// reports it started (its state says cancelled).
func (s *Server) release(msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := msg.Headers()
	id, queue := h.Get(HeaderID), strings.TrimPrefix(msg.Subject(), duePrefix)
	if rec, _, ok := s.cached(id); ok && terminal(rec.State) {
		_ = msg.Ack() // cancelled through this instance while held
		return
	}
	m := &nats.Msg{Subject: TaskSubjectPrefix + queue, Header: cleanHeader(h), Data: msg.Data()}
	m.Header.Set(jetstream.MsgIDHeader, id)
	// Retry for a while (a reconnection, a new stream leader): the staging
	// message would come back only after its ack wait otherwise.
	var ack *jetstream.PubAck
	var err error
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		ack, err = s.js.PublishMsg(pctx, m)
		pcancel()
		if err == nil {
			break
		}
		if s.nc.IsClosed() {
			return // this instance is gone: the message is handed over after its ack wait
		}
		select {
		case <-s.stop:
		case <-time.After(wait):
			if ctx.Err() == nil {
				continue
			}
		}
		s.log.Warn().Err(err).Str("task", id).Msg("cannot release a delayed task; it is handed over")
		_ = msg.Nak()
		return
	}
	rec, err := s.update(ctx, id, func(rec *record) error {
		if rec.State != StateScheduled {
			return errNoChange
		}
		rec.State, rec.Seq, rec.Pending = StateQueued, ack.Sequence, nil
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		s.log.Warn().Err(err).Str("task", id).Msg("released a delayed task but cannot mark it queued; retrying")
		_ = msg.NakWithDelay(100 * time.Millisecond)
		return
	}
	_ = msg.Ack()
	if err == nil && rec.State == StateQueued {
		s.emit("queued", &rec, nil)
	}
}

// cleanHeader copies a staged message's header without the server's
// scheduling headers.
func cleanHeader(h nats.Header) nats.Header {
	out := nats.Header{}
	for k, v := range h {
		if strings.HasPrefix(k, "Nats-Schedul") || k == jetstream.MsgIDHeader || strings.HasPrefix(k, "Nats-Expected") {
			continue
		}
		out[k] = v
	}
	return out
}

// tick makes the one task of a periodic schedule's tick. The server fires
// the tick once (the schedule lives in the replicated stream) and the
// staging consumer hands it to one instance; a redelivered tick makes the
// same id, so it is enqueued once.
func (s *Server) tick(msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	h := msg.Headers()
	name := strings.TrimPrefix(h.Get("Nats-Scheduler"), everyPrefix)
	queue := strings.TrimPrefix(msg.Subject(), duePrefix)
	id := name + "-" + strconv.FormatInt(meta.Timestamp.UnixMilli(), 10) + "-" + strconv.FormatUint(meta.Sequence.Stream, 10)
	retries, _ := strconv.Atoi(h.Get(HeaderMaxRetries))
	timeout, _ := strconv.ParseInt(h.Get(HeaderTimeout), 10, 64)
	var backoff *Backoff
	if b := h.Get(headerBackoff); b != "" {
		backoff = new(Backoff)
		_ = json.Unmarshal([]byte(b), backoff)
	}
	rec := record{TaskInfo: TaskInfo{
		ID: id, Queue: queue, Type: h.Get(HeaderType), State: StateQueued, MaxRetries: retries,
		TimeoutMs: s.timeoutMs(timeout), Schedule: name, CreatedAt: bus.Time{Time: meta.Timestamp},
	}, Backoff: backoff}
	m := &nats.Msg{Subject: TaskSubjectPrefix + queue, Header: taskHeader(&rec), Data: msg.Data()}
	m.Header.Set(jetstream.MsgIDHeader, id)
	if err := s.ensureQueue(ctx, queue); err != nil {
		_ = msg.NakWithDelay(time.Second)
		return
	}
	fresh := true
	if _, err := s.create(ctx, &rec); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			_ = msg.NakWithDelay(100 * time.Millisecond)
			return
		}
		fresh = false // a redelivered tick: its state exists
	}
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		_ = msg.NakWithDelay(100 * time.Millisecond)
		return
	}
	_ = msg.Ack()
	if fresh {
		s.emit("submitted", &rec, map[string]any{"schedule": name})
	}
}

// repairLoop publishes again the messages of the tasks still waiting
// RepairAfter after their submit (see doc.go). At start it looks at every
// state; then, every RepairAfter, at the states written in the three
// RepairAfter before its last scan that succeeded, so that its cost
// follows the rate of submits, not the number of states kept, and at the
// tasks whose repair failed before (the stream still away), however long
// that lasts.
func (s *Server) repairLoop() {
	defer s.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	var since time.Time // zero: every state
	var left []string   // tasks whose repair failed
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(s.cfg.RepairAfter, 10*time.Second))
		start := time.Now()
		failed, err := s.repair(ctx, since, left)
		if err == nil {
			since, left = start.Add(-3*s.cfg.RepairAfter), failed
		} else if ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("repair scan failed")
		}
		cancel()
		t.Reset(s.cfg.RepairAfter)
	}
}

// repair enqueues the tasks left pending, among the states written since
// the given time (zero: all) and the tasks named in retry. It returns the
// tasks whose repair failed; an error means the scan itself failed.
func (s *Server) repair(ctx context.Context, since time.Time, retry []string) (failed []string, err error) {
	todo := map[string]record{}
	pending := func(rec *record) bool {
		return rec.Pending != nil && (rec.State == StateQueued || rec.State == StateScheduled) && time.Since(rec.CreatedAt.Time) > s.cfg.RepairAfter
	}
	if since.IsZero() {
		err = s.scan(ctx, jetstream.DeliverLastPerSubjectPolicy, since, func(rec *record) bool {
			if pending(rec) {
				todo[rec.ID] = *rec
			}
			return true
		})
	} else {
		// Every write since then, in order: the last one of each task is its
		// state now (a later write would be after since too).
		last := map[string]record{}
		err = s.scan(ctx, jetstream.DeliverByStartTimePolicy, since, func(rec *record) bool {
			last[rec.ID] = *rec
			return true
		})
		for id, rec := range last {
			if pending(&rec) {
				todo[id] = rec
			}
		}
	}
	if err != nil {
		return retry, err
	}
	for _, id := range retry {
		if _, ok := todo[id]; ok {
			continue
		}
		rec, _, err := s.get(ctx, id)
		switch {
		case err == nil && pending(&rec):
			todo[id] = rec
		case err != nil && !errors.Is(err, ErrNotFound):
			failed = append(failed, id)
		}
	}
	var errs []error // one task's failure does not hold up the others
	for id, rec := range todo {
		if err := s.repairOne(ctx, &rec); err != nil {
			failed = append(failed, id)
			errs = append(errs, fmt.Errorf("task %s: %w", id, err))
		}
	}
	if len(errs) > 0 {
		s.log.Warn().Err(errors.Join(errs...)).Int("tasks", len(errs)).Msg("cannot enqueue tasks again yet; retrying at the next scan")
	}
	return failed, nil
}

// repairOne publishes a pending task's message again and drops it from the
// state.
func (s *Server) repairOne(ctx context.Context, rec *record) error {
	if err := s.ensureQueue(ctx, rec.Queue); err != nil {
		return err
	}
	ack, err := s.js.PublishMsg(ctx, rec.Pending.msg())
	if err != nil {
		return err
	}
	_, err = s.update(ctx, rec.ID, func(r *record) error {
		if r.Pending == nil {
			return errNoChange
		}
		r.Pending = nil
		if r.State == StateQueued {
			r.Seq = ack.Sequence
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	s.log.Info().Str("task", rec.ID).Bool("duplicate", ack.Duplicate).Msg("repaired the enqueue of a task")
	return nil
}

// scan calls fn with the state of every task (policy
// DeliverLastPerSubjectPolicy), or with every state written since a time
// in order (DeliverByStartTimePolicy), until fn returns false.
func (s *Server) scan(ctx context.Context, policy jetstream.DeliverPolicy, since time.Time, fn func(*record) bool) error {
	stream, err := s.js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return err
	}
	var start *time.Time
	if policy == jetstream.DeliverByStartTimePolicy {
		start = &since
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     kvPrefix + "t.>",
		DeliverPolicy:     policy,
		OptStartTime:      start,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: 30 * time.Second,
		MemoryStorage:     true,
	})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = stream.DeleteConsumer(cctx, cons.CachedInfo().Name)
	}()
	left := cons.CachedInfo().NumPending
	for left > 0 {
		wait := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			wait = max(min(wait, time.Until(dl)), time.Millisecond)
		}
		batch, err := cons.Fetch(int(min(left, 1000)), jetstream.FetchMaxWait(wait))
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err == nil {
				left = meta.NumPending
			}
			if op := m.Headers().Get("KV-Operation"); op != "" || len(m.Data()) == 0 {
				continue
			}
			var rec record
			if json.Unmarshal(m.Data(), &rec) != nil {
				continue
			}
			if !fn(&rec) {
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			return ctx.Err()
		}
	}
	return nil
}
