package scheduler

// What staging.go, dead.go and queues.go still use of the store's first
// version, until they move to the records of HistoryStream; it goes with
// them. A task's state is its record here: get reads it, put and update
// write it with a compare-and-set on its sequence, create writes nothing
// (a task's message is its creation).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// v1Config holds the Config fields the first version's code still reads.
type v1Config struct {
	// StateMaxBytes: unused (see HistoryMaxBytes).
	StateMaxBytes int64
	// RepairAfter: unused (a submit's one write is its commit).
	RepairAfter time.Duration
}

type v1Server struct {
	states v1States
	clean  struct {
		bytes   atomic.Int64
		deleted atomic.Uint64
	}
}

type v1States struct{}

func (v1States) stats() CacheInfo { return CacheInfo{} }

// kvPrefix is the subject prefix of the bucket's keys.
const kvPrefix = "$KV." + Bucket + "."

type record struct {
	TaskInfo
	Backoff     *Backoff    `json:"backoff,omitempty"`
	Seq         uint64      `json:"seq,omitempty"`
	Delivery    int         `json:"delivery,omitempty"`
	Interrupted int         `json:"interrupted,omitempty"`
	Requeues    int         `json:"requeues,omitempty"`
	Pending     *pendingMsg `json:"pending,omitempty"`
}

type pendingMsg struct {
	Subject string      `json:"subject"`
	Header  nats.Header `json:"header"`
	Data    []byte      `json:"data,omitempty"`
}

func (p *pendingMsg) msg() *nats.Msg {
	m := nats.NewMsg(p.Subject)
	for k, v := range p.Header {
		m.Header[k] = append([]string(nil), v...)
	}
	m.Data = p.Data
	return m
}

// errNoChange stops an update without writing.
var errNoChange = errors.New("no change")

func (s *Server) get(ctx context.Context, id string) (record, uint64, error) {
	rec, seq, ok, err := readRecord(ctx, s.nc, "", id)
	if err != nil {
		return record{}, 0, err
	}
	if !ok {
		return record{}, 0, ErrNotFound.With("no record of task %s", id)
	}
	return record{TaskInfo: rec}, seq, nil
}

func (s *Server) put(ctx context.Context, rec *record, rev uint64) (uint64, error) {
	m, err := recordMsg(rec.TaskInfo, rev)
	if err != nil {
		return 0, err
	}
	ack, err := s.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

func (s *Server) create(context.Context, *record) (uint64, error) { return 0, nil }

func (s *Server) update(ctx context.Context, id string, fn func(*record) error) (record, error) {
	for attempt := 0; ; attempt++ {
		rec, rev, err := s.get(ctx, id)
		if err != nil {
			return rec, err
		}
		if err := fn(&rec); err != nil {
			if errors.Is(err, errNoChange) {
				return rec, nil
			}
			return rec, err
		}
		if _, err = s.put(ctx, &rec, rev); err == nil || !writtenFirst(err) || attempt >= 20 {
			if err != nil {
				err = fmt.Errorf("scheduler: writing task %s: %w", id, err)
			}
			return rec, err
		}
	}
}

func (s *Server) cached(string) (record, uint64, bool) { return record{}, 0, false }

func (s *Server) noteSeq(string, uint64, uint64) {}

func (s *Server) emit(what string, rec *record, extra map[string]any) {
	s.emitTask(what, &rec.TaskInfo, extra)
}

func taskHeader(rec *record) nats.Header { return headerOf(&rec.TaskInfo, rec.Backoff) }

// onAdvisory handles the server's max-deliveries advisory of a queue: the
// task it names was delivered MaxDeliver times without an outcome and stays
// in the work queue, never delivered again, until it is removed: it goes to
// the dead letters, its record says dead, then it is deleted from the queue.
func (s *Server) onAdvisory(msg jetstream.Msg) {
	s.goAsync(func() {
		var adv struct {
			Stream     string `json:"stream"`
			StreamSeq  uint64 `json:"stream_seq"`
			Deliveries uint64 `json:"deliveries"`
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
		if err != nil {
			_ = msg.NakWithDelay(time.Second)
			return
		}
		reason := fmt.Sprintf("delivered %d times without an outcome", adv.Deliveries)
		if err := s.kill(ctx, raw, int(adv.Deliveries), reason); err != nil {
			s.log.Warn().Err(err).Uint64("seq", adv.StreamSeq).Msg("cannot move a task past its deliveries to the dead letters; retrying")
			_ = msg.NakWithDelay(time.Second)
			return
		}
		if err := s.tasks.DeleteMsg(ctx, adv.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			_ = msg.NakWithDelay(time.Second)
			return
		}
		_ = msg.Ack()
	})
}

// kill moves a task's message to the dead letters and writes its record
// dead, unless its record says it finished.
func (s *Server) kill(ctx context.Context, raw *jetstream.RawStreamMsg, attempts int, lastErr string) error {
	info, _ := taskOfMsg(raw.Header, raw.Time)
	if info.Queue == "" {
		info.Queue = strings.TrimPrefix(raw.Subject, TaskSubjectPrefix)
		info.Queue, _, _ = strings.Cut(info.Queue, ".")
	}
	var expect uint64
	if info.ID != "" {
		rec, seq, ok, err := readRecord(ctx, s.nc, info.Queue, info.ID)
		if err != nil {
			return err
		}
		if ok && sameTask(&rec, info.CreatedAt.Time) {
			if terminal(rec.State) {
				return nil
			}
			info = rec
		}
		expect = seq
	}
	m := deadLetter(raw.Header, raw.Data, info.Queue, lastErr)
	m.Header.Set(jetstream.MsgIDHeader, deadLetterID(info.ID, raw.Sequence, attempts))
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("scheduler: dead-lettering task %s: %w", info.ID, err)
	}
	if info.ID == "" {
		return nil
	}
	info.State, info.Attempts, info.LastError = StateDead, max(info.Attempts, attempts), lastErr
	info.FinishedAt, info.NextRetryAt = bus.Time{Time: time.Now()}, bus.Time{}
	if err := s.putRecord(ctx, &info, expect); err != nil && !writtenFirst(err) {
		return err
	}
	s.emitTask("dead", &info, map[string]any{"error": lastErr})
	return nil
}
