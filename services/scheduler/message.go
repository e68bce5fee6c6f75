package scheduler

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// taskMsg is the message of a queued task, on mesh.tasks.<queue>.<id>,
// deduplicated by its id and stored only while the task has no message in
// its queue. Its stream timestamp is the task's created_at.
func taskMsg(info *TaskInfo, backoff *Backoff, payload []byte) *nats.Msg {
	m := nats.NewMsg(taskSubject(info.Queue, info.ID))
	m.Header = headerOf(info, backoff)
	m.Header.Set(jetstream.MsgIDHeader, info.ID)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	m.Data = payload
	return m
}

// headerOf is the header that describes a task on its messages: the
// queue's, the schedule's, the dead letter's.
func headerOf(info *TaskInfo, backoff *Backoff) nats.Header {
	h := nats.Header{}
	h.Set(HeaderID, info.ID)
	h.Set(HeaderType, info.Type)
	h.Set(HeaderQueue, info.Queue)
	h.Set(HeaderMaxRetries, strconv.Itoa(info.MaxRetries))
	h.Set(HeaderTimeout, strconv.FormatInt(info.TimeoutMs, 10))
	if backoff != nil {
		b, _ := json.Marshal(backoff)
		h.Set(headerBackoff, string(b))
	}
	if info.Schedule != "" {
		h.Set(HeaderSchedule, info.Schedule)
	}
	if info.UniqueKey != "" {
		k := info.UniqueKey
		if strings.ContainsAny(k, "\r\n") {
			k = strconv.Quote(k) // a header value is one line
		}
		h.Set(HeaderUniqueKey, k)
	}
	return h
}

// taskOfMsg reads a task from the header of one of its messages, stored
// at the given time (its created_at, unless the header says otherwise).
func taskOfMsg(h nats.Header, stored time.Time) (TaskInfo, *Backoff) {
	info := TaskInfo{ID: h.Get(HeaderID), Queue: h.Get(HeaderQueue), Type: h.Get(HeaderType),
		Schedule: h.Get(HeaderSchedule), UniqueKey: h.Get(HeaderUniqueKey), CreatedAt: bus.Time{Time: stored}}
	info.MaxRetries, _ = strconv.Atoi(h.Get(HeaderMaxRetries))
	info.TimeoutMs, _ = strconv.ParseInt(h.Get(HeaderTimeout), 10, 64)
	if t, err := time.Parse(time.RFC3339Nano, h.Get(HeaderCreatedAt)); err == nil {
		info.CreatedAt = bus.Time{Time: t}
	}
	if t, err := time.Parse(time.RFC3339Nano, h.Get(HeaderRunAt)); err == nil {
		info.RunAt = bus.Time{Time: t}
	}
	var backoff *Backoff
	if b := h.Get(headerBackoff); b != "" {
		backoff = new(Backoff)
		if json.Unmarshal([]byte(b), backoff) != nil {
			backoff = nil
		}
	}
	return info, backoff
}

// storedAt is when a message read by readLast was stored.
func storedAt(m *nats.Msg) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
	return t
}

// sameTask tells whether a record is of the task a message carries, and
// not of an earlier task that had the same id (submitted again once the
// first had finished and left the deduplication window): the record of
// an earlier task was created before it.
func sameTask(rec *TaskInfo, created time.Time) bool {
	return !rec.CreatedAt.Before(created.Add(-time.Millisecond))
}

// retryDelay is the delay before the attempt after the given one (1 for
// the first) failed: initial_ms × 2^(attempt-1) capped at max_ms, with ±25%
// jitter so that tasks failing together do not retry together, or
// initial_ms for a constant backoff. Defaults: exponential, 1 s, 10 min.
func retryDelay(b *Backoff, attempt int) time.Duration {
	kind, initial, maxMs := "exponential", int64(1000), int64(600_000)
	if b != nil {
		if b.Kind != "" {
			kind = b.Kind
		}
		if b.InitialMs > 0 {
			initial = b.InitialMs
		}
		if b.MaxMs > 0 {
			maxMs = b.MaxMs
		}
	}
	d := time.Duration(initial) * time.Millisecond
	if kind == "constant" {
		return d
	}
	for i := 1; i < attempt && d < time.Duration(maxMs)*time.Millisecond; i++ {
		d *= 2
	}
	d = min(d, time.Duration(maxMs)*time.Millisecond)
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return max(d+jitter, time.Millisecond)
}

// truncateResult bounds a result kept in a record, and encodes it.
func truncateResult(info *TaskInfo, result []byte, maxResult int) {
	if len(result) > maxResult {
		result, info.ResultTruncated = result[:maxResult], true
	}
	info.Result, info.ResultEncoding = encodeText(result)
}

// deadLetter is the copy of a task's message kept in the dead letters, on
// mesh.dead.<queue>, with the error that killed it.
func deadLetter(h nats.Header, payload []byte, queue, lastErr string) *nats.Msg {
	m := nats.NewMsg(DeadSubjectPrefix + queue)
	for k, v := range h {
		if strings.HasPrefix(k, "Nats-") || k == HeaderRecordSeq {
			continue
		}
		m.Header[k] = v
	}
	// A header value is one line.
	m.Header.Set(HeaderLastError, strings.NewReplacer("\r", " ", "\n", " ").Replace(truncate(lastErr, MaxErrorLen)))
	m.Data = payload
	return m
}

// deadLetterID is the deduplication id of a task's dead letter: one per
// death (a delivery of its message at its attempt).
func deadLetterID(id string, seq uint64, attempt int) string {
	return "dead-" + id + "-" + strconv.FormatUint(seq, 10) + "-" + strconv.Itoa(attempt)
}
