package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// errStoreFull refuses a submit while live tasks fill the state bucket.
var errStoreFull = bus.ErrOverloaded.With("the task state store is full of live tasks (its bound in bytes): try again later")

// The state bucket is bounded in bytes (StateMaxBytes) and refuses a write
// that would pass the bound. So that finished tasks never block new work
// or outcomes, the finished states go first: when the bucket holds more
// than cleanHigh of its bound, an instance deletes the oldest finished
// states (succeeded, dead, cancelled; by stream order, oldest first) until
// it holds less than cleanLow; live states (scheduled, queued, running,
// failed) and unique keys are never deleted. Each instance looks every
// CleanEvery, and at once when a write finds the bucket full (then the
// write is tried again). A submit is refused (503) only when the bucket is
// still above submitHigh once cleaned, that is when live tasks fill it:
// what is left above it is kept for outcomes, which always find room.
const (
	cleanHigh  = 0.80
	cleanLow   = 0.60
	submitHigh = 0.90
)

// cleaner keeps the figures of the bucket's cleaning.
type cleaner struct {
	mu      sync.Mutex // one cleaning at a time in an instance
	bytes   atomic.Int64
	deleted atomic.Uint64 // finished states deleted by this instance
	futile  atomic.Int64  // when a cleaning last found too few finished states (unix ns)
	kick    chan struct{}
}

// isFull reports a write refused because the bucket is at its bound.
func isFull(err error) bool {
	return err != nil && strings.Contains(err.Error(), "maximum bytes exceeded")
}

func (s *Server) cleanLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.CleanEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		case <-s.clean.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := s.cleanStates(ctx, cleanHigh); err != nil {
			s.log.Warn().Err(err).Msg("cleaning the finished states")
		}
		cancel()
	}
}

// full tells the cleaner that a write found the bucket full, and cleans at
// once (bounded by ctx) so that the write can be tried again.
func (s *Server) full(ctx context.Context) {
	if err := s.cleanStates(ctx, cleanLow); err != nil {
		s.log.Warn().Err(err).Msg("cleaning the finished states")
	}
}

// wroteBytes counts a state write of n bytes in the bucket's figure, an
// estimate until the next cleaning reads it again (an overwrite counts
// as growth: the estimate errs towards cleaning early).
func (s *Server) wroteBytes(n int) { s.clean.bytes.Add(int64(n + 64)) }

// submitRoom refuses a submit while live tasks fill the bucket: above
// submitHigh (as last seen), finished states are cleaned first.
func (s *Server) submitRoom(ctx context.Context) error {
	if s.aboveSubmitHigh() {
		if time.Since(time.Unix(0, s.clean.futile.Load())) > s.cfg.CleanEvery {
			// Not for every submit while live tasks fill it.
			s.full(ctx)
		}
		if s.aboveSubmitHigh() {
			return errStoreFull
		}
	}
	return nil
}

func (s *Server) aboveSubmitHigh() bool {
	return float64(s.clean.bytes.Load()) > submitHigh*float64(s.cfg.StateMaxBytes)
}

// cleanStates deletes the oldest finished states when the bucket holds
// more than the fraction from of its bound, down to cleanLow.
func (s *Server) cleanStates(ctx context.Context, from float64) error {
	s.clean.mu.Lock()
	defer s.clean.mu.Unlock()
	stream, err := s.js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	bytes := int64(info.State.Bytes)
	s.clean.bytes.Store(bytes)
	if float64(bytes) < from*float64(s.cfg.StateMaxBytes) {
		return nil
	}
	target := bytes - int64(cleanLow*float64(s.cfg.StateMaxBytes))
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{kvPrefix + "t.>"}, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return err
	}
	var freed int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16) // deletes in flight
	var firstErr atomic.Value
	for left := info.State.Msgs; left > 0 && freed < target; {
		batch, err := cons.Fetch(int(min(left, 1000)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			break
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			left = meta.NumPending
			if freed >= target || m.Headers().Get("KV-Operation") != "" {
				continue
			}
			st, ok := finishedState(m.Data())
			if !ok || s.holdsUniqueKey(ctx, &st) {
				continue
			}
			freed += int64(len(m.Data()) + len(m.Subject()) + 64)
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				// A bucket denies deletes by sequence: a purge of the key,
				// only at this revision (a newer state stays), whose
				// marker expires in a second.
				id := strings.TrimPrefix(m.Subject(), kvPrefix+"t.")
				err := s.kv.Purge(ctx, stateKey(id), jetstream.LastRevision(meta.Sequence.Stream), jetstream.PurgeTTL(time.Second))
				switch {
				case err == nil:
					s.clean.deleted.Add(1)
					s.uncache(id)
				case !isConflict(err) && !errors.Is(err, jetstream.ErrKeyNotFound):
					firstErr.CompareAndSwap(nil, err)
				}
			})
		}
		if n == 0 {
			break
		}
	}
	wg.Wait()
	if freed < target {
		s.clean.futile.Store(time.Now().UnixNano())
	}
	if info, err := stream.Info(ctx); err == nil {
		s.clean.bytes.Store(int64(info.State.Bytes))
	}
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

// stateHead is what the cleaner reads of a state.
type stateHead struct {
	ID        string `json:"id"`
	Queue     string `json:"queue"`
	State     string `json:"state"`
	UniqueKey string `json:"unique_key"`
}

// finishedState reads a state (JSON) and reports whether it is a finished
// task's.
func finishedState(data []byte) (stateHead, bool) {
	var h stateHead
	return h, json.Unmarshal(data, &h) == nil && terminal(h.State)
}

// holdsUniqueKey reports whether a finished task still holds its unique
// key: its state stays while the key names it, since a key naming no
// state is taken over by the next submit (claimUnique).
func (s *Server) holdsUniqueKey(ctx context.Context, h *stateHead) bool {
	if h.UniqueKey == "" {
		return false
	}
	e, err := s.kv.Get(ctx, uniqueKey(h.Queue, h.UniqueKey))
	return err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) || err == nil && string(e.Value()) == h.ID
}
