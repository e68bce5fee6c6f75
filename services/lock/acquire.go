package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/meshkit/mesh/pkg/bus"
)

// acquire joins the line in the subscription's callback (the endpoint is
// Inline): the keys of the requests an instance receives are published in
// the order the requests arrived, so their revisions, their places in line,
// keep that order. When the acknowledgement shows the key first in line
// (nobody holds the lock), the grant is answered from there; otherwise the
// request waits on a worker.
func (s *Server) acquire(_ context.Context, c *bus.Call) {
	r := new(AcquireRequest)
	if err := s.admit(c, r); err != nil {
		c.Reply(nil, err)
		return
	}
	arrived := time.Now()
	id := nuid.Next()
	rec := record{Owner: r.Owner, TTLms: r.TTLms, Limit: r.Limit, Since: bus.Time{Time: arrived}}
	if limit, ok := s.mirror.limit(r.Name); ok && limit != r.limit() {
		c.Go(func(ctx context.Context) { c.Reply(s.acquireChecked(ctx, r, id, rec, arrived)) })
		return
	}
	key := nats.NewMsg(s.prefix + s.key(r.Name, id))
	key.Data, _ = json.Marshal(rec)
	s.writes.Publish(key, func(ack *jetstream.PubAck, err error) {
		var rev uint64
		if err == nil {
			rev = ack.Sequence
			// A grant after an expiry waits until the expiry is told,
			// on a worker.
			if s.mirror.freeBefore(r.Name, rev, r.Limit) && !s.mirror.expiring(r.Name) {
				c.Reply(s.grant(r, rec, rev, time.Now()), nil)
				return
			}
		}
		c.Go(func(ctx context.Context) {
			w := s.waiter(r, id, rec, arrived)
			c.Reply(w.wait(ctx, rev, err))
		})
	}, joinOpts(r)...)
}

// admit decodes an acquire request into r and checks it.
func (s *Server) admit(c *bus.Call, r *AcquireRequest) error {
	if err := c.Decode(r); err != nil {
		return err
	}
	if err := checkTTL(r.TTLms, s.cfg.MaxTTL.Milliseconds()); err != nil {
		return err
	}
	if r.Deadline != nil && !r.Deadline.IsZero() && time.Since(r.Deadline.Time) > DeadlineSkew {
		return ErrExpired.With("lock %s: the request arrived %v after its deadline", r.Name, time.Since(r.Deadline.Time).Round(time.Millisecond))
	}
	return nil
}

// acquireChecked serves, on a worker, a request for a name that the
// mirror shows held or waited for with another limit: it is refused with
// limit_mismatch, writing nothing, if a view caught up with the bucket
// shows it still (the mirror may lag: the others may have left); else it
// joins the line.
func (s *Server) acquireChecked(ctx context.Context, r *AcquireRequest, id string, rec record, arrived time.Time) (*AcquireReply, error) {
	if err := s.catchUp(ctx); err != nil {
		return nil, err
	}
	if limit, ok := s.mirror.limit(r.Name); ok && limit != r.limit() {
		return nil, ErrLimitMismatch.With("lock %s has limit %d while it has holders or waiters; this request asked for %d", r.Name, limit, r.limit())
	}
	data, _ := json.Marshal(rec)
	var rev uint64
	ack, err := s.js.Publish(ctx, s.prefix+s.key(r.Name, id), data, joinOpts(r)...)
	if err == nil {
		rev = ack.Sequence
	}
	return s.waiter(r, id, rec, arrived).wait(ctx, rev, err)
}

// grant answers a request whose key, written at token, holds the lock.
func (s *Server) grant(r *AcquireRequest, rec record, token uint64, written time.Time) *AcquireReply {
	s.emit("acquired", r.Name, &contender{token: token, rec: rec})
	return &AcquireReply{Token: token, ExpiresAt: bus.Time{Time: written.Add(time.Duration(r.TTLms) * time.Millisecond)}}
}

// refuseStaleAfter: a refusal decided this long after the request's key was
// written is decided again on a view caught up with the bucket.
const refuseStaleAfter = 20 * time.Millisecond

// maxRefusals bounds how many times a refusal is decided again because the
// lock changed before the refused key was taken out; past it, the key is
// taken out regardless.
const maxRefusals = 3

// waiter is an acquire request in line: its key waits until it holds the
// lock, or the request gives up and takes it out (leave).
type waiter struct {
	s       *Server
	r       *AcquireRequest
	id      string    // the key's id
	rec     record    // what the key holds; its Token is the key's first revision
	arrived time.Time // when the request arrived
	rev     uint64    // the key's last revision
	written time.Time // when the key was last written (its lease runs from there)
	acked   time.Time // when the key's first write was acknowledged

	giveUp   bool // the request is refused as soon as its key does not hold
	waited   bool // the key did not hold at first
	caughtUp bool // the line was looked at on a view caught up with the bucket
	// refusals decided again because what they rested on changed, and
	// when a refusal's purge first conflicted (see again).
	refusals   int
	conflicted time.Time
}

func (s *Server) waiter(r *AcquireRequest, id string, rec record, arrived time.Time) *waiter {
	return &waiter{s: s, r: r, id: id, rec: rec, arrived: arrived}
}

// wait waits in line for the request's key, written at rev, or, when
// writing it failed (joinErr), writes it again while no stream takes it.
//
// The mirror wakes the request when the lock changes. While it waits, the
// key is renewed at ttl/3, so that it outlives the request only by the ttl
// if this instance dies. A refusal is decided only once the mirror has
// seen the request's own key: every release that completed before the
// request began was written before that key, so it is in view.
func (w *waiter) wait(ctx context.Context, rev uint64, joinErr error) (*AcquireReply, error) {
	s, r := w.s, w.r
	if err := w.join(ctx, rev, joinErr); err != nil {
		return nil, err
	}
	var deadline <-chan time.Time
	if r.WaitMs > 0 {
		t := time.NewTimer(time.Duration(r.WaitMs)*time.Millisecond - time.Since(w.arrived))
		defer t.Stop()
		deadline = t.C
	}
	w.giveUp = r.WaitMs == 0
	// The caller's deadline, when the request carries one (the Go SDK
	// sends it), also ends the wait: past it nobody reads the answer, so
	// the request leaves the line rather than take the lock for a caller
	// that is gone. A request already past its deadline (it arrived within
	// the clock skew allowed, or waited on a busy instance) is answered at
	// once, as a try.
	var callerGone <-chan time.Time
	if r.Deadline != nil && !r.Deadline.IsZero() {
		if d := time.Until(r.Deadline.Time); d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			callerGone = t.C
		} else {
			w.giveUp = true
		}
	}
	refresh := time.NewTicker(time.Duration(r.TTLms) * time.Millisecond / 3)
	defer refresh.Stop()
	var behind <-chan time.Time // bounds the wait for the mirror to see the key
	if w.giveUp {
		behind = time.After(5 * time.Second)
	}
	// When the mirror already knows every key written before this one, it
	// can tell at once whether this key holds the lock, without waiting to
	// see the key itself.
	for !s.mirror.freeBefore(r.Name, w.rec.Token, r.Limit) {
		changed, seen := s.mirror.watch(r.Name, w.rev)
		if seen {
			next, err := w.look(ctx)
			if err != nil {
				return nil, err
			}
			if next == holds {
				break
			}
			if next == lookAgain {
				continue
			}
		}
		w.waited = true
		select {
		case <-changed:
		case <-callerGone:
			return nil, w.gone(ctx)
		case <-refresh.C:
			if err := w.keepPlace(ctx); err != nil {
				return nil, err
			}
		case <-deadline:
			w.giveUp, deadline, behind = true, nil, time.After(5*time.Second)
		case <-behind:
			return nil, w.leave(ctx, bus.ErrUnavailable.With("lock %s: the lock service is behind its bucket", r.Name))
		case <-ctx.Done():
			return nil, w.leave(ctx, bus.ErrUnavailable.With("lock %s: the lock service is stopping", r.Name))
		}
	}
	return w.grant(ctx, callerGone != nil)
}

// join completes the key's write: rev is its revision, or joinErr why
// writing it failed; while no stream takes it, it is written again.
func (w *waiter) join(ctx context.Context, rev uint64, joinErr error) error {
	if err := joinErr; err != nil {
		if bus.NoStream(err) {
			// No stream took the key: nothing is stored to take out.
			rev, err = w.s.rejoin(ctx, w.r, w.id, w.rec, w.arrived)
		}
		switch {
		case bus.NoStream(err):
			return bus.ErrUnavailable.With("lock %s: joining the line: the bucket takes no writes", w.r.Name)
		case errors.Is(err, jetstream.ErrAsyncPublishTimeout):
			return w.leave(ctx, bus.ErrTimeout.With("lock %s: joining the line: no acknowledgement from the bucket", w.r.Name))
		case err != nil:
			return w.leave(ctx, fmt.Errorf("lock %s: joining the line: %w", w.r.Name, err))
		}
	}
	w.rev, w.rec.Token = rev, rev
	w.written = time.Now()
	w.acked = w.written
	return nil
}

// next is what a waiter does after a look at the line.
type next int

const (
	waitChange next = iota // wait for the line to change
	lookAgain              // look at the line again at once
	holds                  // the key holds the lock
)

// look decides, on the mirror's view of the line, which has seen the
// request's key, whether the key holds the lock, or the request is to be
// refused (its key taken out), or waits.
func (w *waiter) look(ctx context.Context) (next, error) {
	s, r := w.s, w.r
	present, holding, mismatch, g := s.mirror.position(r.Name, w.id)
	switch {
	case holding:
		return holds, nil
	case mismatch && !w.caughtUp:
		// Decided on a view caught up with the bucket, as a refusal is
		// (below): the first in line may have left.
		return lookAgain, w.catchUp(ctx)
	case mismatch:
		// The first in line asked with another limit. The key is taken out
		// only while that key stands unchanged, else the line is looked at
		// again, as for a refusal.
		limit, _ := s.mirror.limit(r.Name)
		return w.refuse(ctx, g, ErrLimitMismatch.With("lock %s has limit %d while it has holders or waiters; this request asked for %d", r.Name, limit, r.limit()))
	case !present:
		// The key is gone: it expired while the request waited.
		return 0, w.leave(ctx, bus.ErrInternal.With("lock %s: the waiting request's key expired", r.Name))
	case w.giveUp && !w.caughtUp && time.Since(w.acked) > refuseStaleAfter:
		// A refusal decided long after the key was written may rest on a
		// view that lags the bucket: the keys ahead may be gone, and this
		// key first in line. Refused then, it would stand there until taken
		// out, and others would be told the lock is held while nobody holds
		// it. Decide on a view that has caught up with the bucket instead.
		return lookAgain, w.catchUp(ctx)
	case w.giveUp:
		cause := ErrLocked.With("lock %s is held", r.Name)
		if r.WaitMs > 0 {
			cause = ErrWaitTimeout.With("lock %s was still held after %dms", r.Name, r.WaitMs)
		}
		return w.refuse(ctx, g, cause)
	}
	return waitChange, nil
}

// catchUp waits for a view of the line caught up with the bucket.
func (w *waiter) catchUp(ctx context.Context) error {
	w.caughtUp = true
	if err := w.s.catchUp(ctx); err != nil {
		return w.leave(ctx, err)
	}
	return nil
}

// refuse takes the key out of the line while what the refusal rests on
// (g) stands, answering cause; if that changed, the line is looked at again
// (again).
func (w *waiter) refuse(ctx context.Context, g guard, cause error) (next, error) {
	err := w.s.refuse(ctx, w.r.Name, w.id, g)
	if err == nil {
		return 0, cause
	}
	if !bus.Conflict(err) {
		return 0, w.leave(ctx, cause)
	}
	// The keys ahead may be gone, and this one first in line.
	w.caughtUp = true
	return lookAgain, w.again(ctx, cause, g)
}

// again follows a refusal whose purge conflicted (cause is what the refusal
// answers, g what it rested on): the name changed after the view that
// refused this key, or, on a cluster, another request's write naming one
// of the keys checked was in flight (another refusal checking the same
// holder, the holder's lease started at its grant). The line is looked at
// again on a view caught up with the bucket, so that the write in flight
// is in view. Only a change of what the refusal rested on counts towards
// maxRefusals, past which the key is taken out regardless; a write in
// flight that changed nothing counts only once it kept conflicting for
// holderPatience.
func (w *waiter) again(ctx context.Context, cause error, g guard) error {
	if w.conflicted.IsZero() {
		w.conflicted = time.Now()
	}
	if err := w.s.catchUp(ctx); err != nil {
		return w.leave(ctx, err)
	}
	if w.s.mirror.stands(w.r.Name, w.id, g) && time.Since(w.conflicted) < holderPatience {
		return nil
	}
	if w.refusals == maxRefusals {
		return w.leave(ctx, cause)
	}
	w.refusals++
	return nil
}

// keepPlace renews the key while it waits.
func (w *waiter) keepPlace(ctx context.Context) error {
	at := time.Now() // the server's TTL runs from a moment after
	rev, err := w.s.keepPlace(ctx, w.r.Name, w.id, w.rec, w.rev)
	if err != nil {
		return w.leave(ctx, fmt.Errorf("lock %s: renewing the place in line: %w", w.r.Name, err))
	}
	w.rev, w.written = rev, at
	return nil
}

// gone answers a request whose caller's deadline passed.
func (w *waiter) gone(ctx context.Context) error {
	return w.leave(ctx, ErrWaitTimeout.With("lock %s: the caller's deadline passed while it waited", w.r.Name))
}

// leave takes the key out of the line before answering cause. The key is
// this request's alone, so no compare-and-set is needed. If that fails,
// the key may hold the lock (or a place in line) until its TTL runs out,
// so the answer is "unavailable", an unknown outcome, rather than cause.
func (w *waiter) leave(ctx context.Context, cause error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := w.s.purge(cctx, w.r.Name, w.id, 0); err != nil {
		w.s.log.Warn().Err(err).Str("lock", w.r.Name).Msg("cannot leave the line; the key expires with its ttl")
		return bus.ErrUnavailable.With("%v, and the request's key could not be removed: it expires within %dms", cause, w.r.TTLms)
	}
	return cause
}

// grant answers a request whose key holds the lock; callerWaits tells
// whether the caller's deadline was still ahead when it began to wait.
func (w *waiter) grant(ctx context.Context, callerWaits bool) (*AcquireReply, error) {
	s, r := w.s, w.r
	// An expiry that let this key through is told first, so that the
	// expired event comes before this acquired event.
	if s.mirror.expiring(r.Name) {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s.mirror.awaitTold(tctx, r.Name)
		cancel()
	}
	if callerWaits && !time.Now().Before(r.Deadline.Time) {
		return nil, w.gone(ctx)
	}
	// If it waited, the lease starts now, with its TTL: the key is written
	// again (it was last written when it joined the line or at its last
	// renewal in line), unless that was less than 1% of the TTL ago.
	if w.waited && time.Since(w.written) > time.Duration(r.TTLms)*time.Millisecond/leaseSlack {
		w.written = time.Now()
		s.startLease(r.Name, w.id, w.rec, w.rev, w.written)
	}
	return s.grant(r, w.rec, w.rec.Token, w.written), nil
}

// keepPlace renews a waiting request's key, last written at rev, and
// returns its new revision. A conflict (on a cluster, a write in flight that
// checks the key, as a semaphore's refusal checks the keys ahead of it) is
// retried on a view caught up with the bucket while the key stands at rev,
// up to holderPatience.
func (s *Server) keepPlace(ctx context.Context, name, id string, rec record, rev uint64) (uint64, error) {
	until := time.Now().Add(holderPatience)
	for {
		seq, err := s.write(ctx, name, id, rec, rev)
		if err == nil || !bus.Conflict(err) {
			return seq, err
		}
		if err := s.retryConflict(ctx, name, "renewing the place in line", until, err); err != nil {
			return 0, err
		}
		if now, ok := s.mirror.rev(name, id); !ok || now != rev {
			return 0, err // expired, or taken out
		}
	}
}

// rejoin sends a request's key again while no stream takes it (the
// bucket's stream electing a leader, as when a NATS node dies) until the
// request's wait ends, or for a second for a try: nothing was stored, so no
// second key can be made. It returns the key's revision, or the last
// publication's error.
func (s *Server) rejoin(ctx context.Context, r *AcquireRequest, id string, rec record, arrived time.Time) (uint64, error) {
	until := arrived.Add(max(time.Duration(r.WaitMs)*time.Millisecond, time.Second))
	if r.Deadline != nil && !r.Deadline.IsZero() && r.Deadline.Add(-100*time.Millisecond).Before(until) {
		until = r.Deadline.Add(-100 * time.Millisecond) // answer before the caller gives up
	}
	ctx, cancel := context.WithDeadline(ctx, until.Add(time.Second)) // no call outlasts it by much
	defer cancel()
	data, _ := json.Marshal(rec)
	var rev uint64
	err := bus.RetryNoStream(ctx, until, func() error {
		ack, err := s.js.Publish(ctx, s.prefix+s.key(r.Name, id), data, joinOpts(r)...)
		if err == nil {
			rev = ack.Sequence
		}
		return err
	})
	return rev, err
}
