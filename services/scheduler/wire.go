package scheduler

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/meshkit/mesh/pkg/bus"
)

// Subjects of the scheduler service.
const (
	SubjectSubmit    = "mesh.scheduler.submit"
	SubjectStatus    = "mesh.scheduler.status"
	SubjectCancel    = "mesh.scheduler.cancel"
	SubjectList      = "mesh.scheduler.list"
	SubjectQueues    = "mesh.scheduler.queues"
	SubjectPause     = "mesh.scheduler.pause"
	SubjectResume    = "mesh.scheduler.resume"
	SubjectAddSched  = "mesh.scheduler.schedules.add"
	SubjectListSched = "mesh.scheduler.schedules.list"
	SubjectRmSched   = "mesh.scheduler.schedules.rm"
	// TaskSubjectPrefix + queue + "." + id is a queued task's message.
	TaskSubjectPrefix = "mesh.tasks."
	// DeadSubjectPrefix + queue is where a queue's dead tasks are kept.
	DeadSubjectPrefix = "mesh.dead."

	atPrefix    = "mesh.scheduler.at."    // + queue.id: a delayed task's schedule message
	duePrefix   = "mesh.scheduler.due."   // + queue.id: staging, where a delayed task's schedule fires
	everyPrefix = "mesh.scheduler.every." // + name: a periodic schedule
	tickPrefix  = "mesh.scheduler.tick."  // + name: staging, where a periodic schedule's ticks fire
)

// Streams, bucket and consumers.
const (
	// Stream holds the queues (work-queue retention), the schedules and the
	// staging subjects.
	Stream = "MESH_TASKS"
	// DeadStream keeps dead tasks (and the max-deliveries advisories of
	// Stream, consumed by the scheduler).
	DeadStream = "MESH_TASKS_DEAD"
	// Bucket is the KV bucket of the queues' unique keys.
	Bucket = "MESH_TASK_STATE"

	stagingConsumer  = "scheduler-staging"
	advisoryConsumer = "scheduler-advisories"
	advisoryPrefix   = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + Stream + "."
)

// Headers of a task message on mesh.tasks.<queue>.<id> (and of its
// schedule and dead letter). Mesh-Task-Backoff holds the task's Backoff in
// JSON; Mesh-Task-Record-Seq is HeaderRecordSeq.
const (
	HeaderID         = "Mesh-Task-Id"
	HeaderType       = "Mesh-Task-Type"
	HeaderQueue      = "Mesh-Task-Queue"
	HeaderMaxRetries = "Mesh-Task-Max-Retries"
	HeaderTimeout    = "Mesh-Task-Timeout-Ms"
	HeaderRunAt      = "Mesh-Task-Run-At"
	HeaderCreatedAt  = "Mesh-Task-Created-At" // a delayed task's, when its message is stored later
	HeaderSchedule   = "Mesh-Task-Schedule"
	HeaderUniqueKey  = "Mesh-Task-Unique-Key"
	HeaderLastError  = "Mesh-Task-Last-Error"
	headerBackoff    = "Mesh-Task-Backoff"
	headerEvery      = "Mesh-Schedule-Every-Ms"
	headerCron       = "Mesh-Schedule-Cron"
	headerTZ         = "Mesh-Schedule-Time-Zone"
	headerCreated    = "Mesh-Schedule-Created"
)

// Task states.
const (
	StateScheduled = "scheduled" // waiting for run_at
	StateQueued    = "queued"    // in its queue, waiting for a worker
	StateRunning   = "running"   // a worker runs it
	StateFailed    = "failed"    // the last attempt failed; it will be retried
	StateSucceeded = "succeeded"
	StateDead      = "dead" // out of retries (or skip_retry): moved to the dead-letter stream
	StateCancelled = "cancelled"
)

// States lists every state.
var States = []string{StateScheduled, StateQueued, StateRunning, StateFailed, StateSucceeded, StateDead, StateCancelled}

func terminal(state string) bool {
	return state == StateSucceeded || state == StateDead || state == StateCancelled
}

// Limits checked at the edge.
const (
	MaxQueueLen     = 64
	MaxTypeLen      = 128
	MaxIDLen        = 128
	MaxUniqueKeyLen = 512
	MaxRetries      = 100
	MaxTimeoutMs    = 24 * 3_600_000
	MinTimeoutMs    = 10
	MaxDelayMs      = 366 * 24 * 3_600_000 // a year
	MaxListLimit    = 1000
	MaxErrorLen     = 1024
)

// Errors of the scheduler service. Across the wire they are codes; the
// Client maps them back, so errors.Is works on either side.
var (
	// ErrDuplicate: a task with the same unique key was submitted within its
	// unique window; the message ends with "existing id: <id>" (see
	// DuplicateID).
	ErrDuplicate = bus.NewError(409, "duplicate", "a task with this unique key exists")
	// ErrNotFound: no task (or schedule) with this id (or name); a finished
	// task's state is kept for the service's retention only.
	ErrNotFound = bus.NewError(404, "task_not_found", "no such task")
	// ErrScheduleNotFound: no periodic schedule of this name.
	ErrScheduleNotFound = bus.NewError(404, "schedule_not_found", "no such schedule")
	// ErrFinished: the task has already finished (succeeded, dead or
	// cancelled), so it cannot be cancelled.
	ErrFinished = bus.NewError(409, "task_finished", "the task has finished")
	// ErrQueueNotFound: no queue of this name (nothing was ever submitted to it).
	ErrQueueNotFound = bus.NewError(404, "queue_not_found", "no such queue")
	// ErrInvalidQueue: empty, too long, or outside the queue charset.
	ErrInvalidQueue = bus.NewError(400, "invalid_queue", "invalid queue name")
	// ErrInvalidSchedule: a bad run_at, delay, cron expression, interval or
	// time zone.
	ErrInvalidSchedule = bus.NewError(400, "invalid_schedule", "invalid schedule")
	// ErrInvalid: another field is out of range.
	ErrInvalid = bus.NewError(400, "invalid", "invalid request")
	// ErrPayloadTooLarge: the payload exceeds the service's bound.
	ErrPayloadTooLarge = bus.NewError(413, "payload_too_large", "payload too large")
)

// duplicateMarker precedes the existing id in an ErrDuplicate message.
const duplicateMarker = "existing id: "

// Bytes is an opaque byte string (a payload or a result). In msgpack it is
// bin (str is accepted); in JSON a string holding the bytes as text. A
// request may also give any other value (an object, a number): its JSON
// text becomes the bytes (from msgpack, an object's keys in the order sent;
// they must be strings).
type Bytes []byte

// MarshalJSON writes the bytes as a JSON string (invalid UTF-8 is replaced;
// replies carry binary values base64-encoded with an encoding field).
func (b Bytes) MarshalJSON() ([]byte, error) { return json.Marshal(string(b)) }

// UnmarshalJSON implements json.Unmarshaler.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*b = Bytes(s)
		return nil
	}
	if string(data) == "null" {
		*b = nil
		return nil
	}
	*b = append(Bytes(nil), data...)
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (b Bytes) EncodeMsgpack(enc *msgpack.Encoder) error { return enc.EncodeBytes(b) }

// DecodeMsgpack implements msgpack.CustomDecoder.
func (b *Bytes) DecodeMsgpack(dec *msgpack.Decoder) error {
	code, err := dec.PeekCode()
	if err != nil {
		return err
	}
	if msgpcode.IsString(code) {
		s, err := dec.DecodeString()
		*b = Bytes(s)
		return err
	}
	if msgpcode.IsBin(code) || code == msgpcode.Nil {
		v, err := dec.DecodeBytes()
		*b = v
		return err
	}
	// Any other value: its JSON text, as in a JSON request.
	var buf bytes.Buffer
	if err := appendJSON(&buf, dec); err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	*b = buf.Bytes()
	return nil
}

// appendJSON writes the JSON text of the msgpack value at dec to buf as it
// reads it, without building the value first: what it allocates is bounded
// by the text it writes, a few bytes for each byte read, where a decoded
// tree of maps and slices costs up to 160 bytes for each. Maps keep their
// order; their keys must be strings. Values without a JSON form (NaN, an
// extension) are errors, as json.Marshal has them.
func appendJSON(buf *bytes.Buffer, dec *msgpack.Decoder) error {
	c, err := dec.PeekCode()
	if err != nil {
		return err
	}
	var num [32]byte
	switch {
	case c == msgpcode.Nil:
		buf.WriteString("null")
		return dec.Skip()
	case c == msgpcode.True || c == msgpcode.False:
		v, err := dec.DecodeBool()
		buf.WriteString(strconv.FormatBool(v))
		return err
	case c == msgpcode.Uint64:
		v, err := dec.DecodeUint64()
		buf.Write(strconv.AppendUint(num[:0], v, 10))
		return err
	case msgpcode.IsFixedNum(c) || c >= msgpcode.Uint8 && c <= msgpcode.Uint32 || c >= msgpcode.Int8 && c <= msgpcode.Int64:
		v, err := dec.DecodeInt64()
		buf.Write(strconv.AppendInt(num[:0], v, 10))
		return err
	case c == msgpcode.Float || c == msgpcode.Double:
		var v any
		if c == msgpcode.Float {
			v, err = dec.DecodeFloat32()
		} else {
			v, err = dec.DecodeFloat64()
		}
		return writeJSON(buf, v, err)
	case msgpcode.IsString(c):
		v, err := dec.DecodeString()
		return writeJSON(buf, v, err)
	case msgpcode.IsBin(c):
		v, err := dec.DecodeBytes()
		return writeJSON(buf, v, err)
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err := dec.DecodeMapLen()
		if err != nil {
			return err
		}
		buf.WriteByte('{')
		for i := range n {
			if i > 0 {
				buf.WriteByte(',')
			}
			k, err := dec.PeekCode()
			if err != nil {
				return err
			}
			if !msgpcode.IsString(k) {
				return errors.New("an object whose keys are not all strings")
			}
			if err := appendJSON(buf, dec); err != nil {
				return err
			}
			buf.WriteByte(':')
			if err := appendJSON(buf, dec); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
		return nil
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err := dec.DecodeArrayLen()
		if err != nil {
			return err
		}
		buf.WriteByte('[')
		for i := range n {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := appendJSON(buf, dec); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
		return nil
	}
	v, err := dec.DecodeInterface() // an extension, such as a timestamp
	return writeJSON(buf, v, err)
}

// writeJSON writes v as json.Marshal does, unless err.
func writeJSON(buf *bytes.Buffer, v any, err error) error {
	if err != nil {
		return err
	}
	j, err := json.Marshal(v)
	buf.Write(j)
	return err
}

// encodeText returns b as text and "" when it is valid UTF-8, else as
// base64 and "base64".
func encodeText(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

// Backoff is the retry delay policy of a task.
type Backoff struct {
	// Kind: "exponential" (the default: initial_ms × 2^(attempt-1), capped
	// at max_ms, with ±25% jitter) or "constant" (initial_ms every time).
	Kind      string `json:"kind,omitempty"`
	InitialMs int64  `json:"initial_ms,omitempty"` // zero: 1000
	MaxMs     int64  `json:"max_ms,omitempty"`     // zero: 600000 (10 minutes)
}

func (b *Backoff) check() error {
	if b == nil {
		return nil
	}
	if b.Kind != "" && b.Kind != "exponential" && b.Kind != "constant" {
		return ErrInvalid.With("backoff.kind must be exponential or constant, got %q", b.Kind)
	}
	if b.InitialMs < 0 || b.InitialMs > MaxTimeoutMs || b.MaxMs < 0 || b.MaxMs > MaxTimeoutMs {
		return ErrInvalid.With("backoff.initial_ms and backoff.max_ms must be in [0, %d]", MaxTimeoutMs)
	}
	return nil
}

// SubmitRequest submits a task.
type SubmitRequest struct {
	// ID, optional, names the task (1 to MaxIDLen letters, digits, '-' or
	// '_'); absent, the service makes one. A submit with the id of a task
	// still in its queue, or submitted within the deduplication window
	// (Config.DedupWindow), in the same queue with the same type makes no
	// second task: it answers with that task, so a client that did not get
	// its reply may send the same submit again; with another queue or type
	// it is refused (duplicate). The Go Client makes an id for every submit
	// and sends it again with the same id when no reply came.
	ID      string `json:"id,omitempty"`
	Queue   string `json:"queue"`
	Type    string `json:"type"`
	Payload Bytes  `json:"payload,omitempty"`
	// PayloadEncoding "base64" says a JSON payload string is base64 (for
	// binary payloads sent in JSON).
	PayloadEncoding string   `json:"payload_encoding,omitempty"`
	RunAt           bus.Time `json:"run_at,omitempty,omitzero"` // run no earlier than this
	DelayMs         int64    `json:"delay_ms,omitempty"`        // or: run no earlier than this long from now
	// MaxRetries: retries after the first attempt. Absent: the service's
	// default (3); 0: no retry.
	MaxRetries *int     `json:"max_retries,omitempty"`
	TimeoutMs  int64    `json:"timeout_ms,omitempty"` // per attempt; zero: the service's default (30 minutes)
	Backoff    *Backoff `json:"backoff,omitempty"`
	// UniqueKey: while a task of this queue with the same key was submitted
	// less than unique_for_ms ago, submit fails with duplicate (409).
	UniqueKey   string `json:"unique_key,omitempty"`
	UniqueForMs int64  `json:"unique_for_ms,omitempty"` // zero: one hour
	// Tasks, instead of every other field, submits a batch: up to
	// MaxBatch tasks (and the server's max payload, 1 MiB by default),
	// each accepted or refused on its own; the reply's Tasks answers each,
	// in order.
	Tasks []SubmitRequest `json:"tasks,omitempty"`
}

// MaxBatch bounds the tasks of a batch submit.
const MaxBatch = 1000

// SubmitReply names the new task, or answers each task of a batch.
type SubmitReply struct {
	ID    string   `json:"id,omitempty"`
	State string   `json:"state,omitempty"`           // queued or scheduled
	RunAt bus.Time `json:"run_at,omitempty,omitzero"` // for a scheduled task
	// Tasks answers a batch, a result per task in the order submitted.
	Tasks []SubmitResult `json:"tasks,omitempty"`
}

// SubmitResult is the outcome of one task of a batch submit: its id and
// state, or the error that refused it (nothing of it was enqueued).
type SubmitResult struct {
	ID    string     `json:"id,omitempty"`
	State string     `json:"state,omitempty"`
	RunAt bus.Time   `json:"run_at,omitempty,omitzero"`
	Error *bus.Error `json:"error,omitempty"`
}

// StatusRequest asks for a task's state.
type StatusRequest struct {
	ID string `json:"id"`
}

// TaskInfo is the state of a task.
type TaskInfo struct {
	ID         string `json:"id"`
	Queue      string `json:"queue"`
	Type       string `json:"type"`
	State      string `json:"state"`
	Attempts   int    `json:"attempts"` // attempts made so far
	MaxRetries int    `json:"max_retries"`
	TimeoutMs  int64  `json:"timeout_ms"`
	LastError  string `json:"last_error,omitempty"`
	// Result the handler returned with its success, up to the service's
	// bound: text, or base64 when ResultEncoding says so.
	Result          string   `json:"result,omitempty"`
	ResultEncoding  string   `json:"result_encoding,omitempty"`
	ResultTruncated bool     `json:"result_truncated,omitempty"`
	Schedule        string   `json:"schedule,omitempty"` // the periodic schedule that made it
	UniqueKey       string   `json:"unique_key,omitempty"`
	CreatedAt       bus.Time `json:"created_at"`
	RunAt           bus.Time `json:"run_at,omitempty,omitzero"`
	StartedAt       bus.Time `json:"started_at,omitempty,omitzero"`
	FinishedAt      bus.Time `json:"finished_at,omitempty,omitzero"`
	NextRetryAt     bus.Time `json:"next_retry_at,omitempty,omitzero"`
	// Worker that made the last attempt (its WorkerConfig.Name).
	Worker string `json:"worker,omitempty"`
	// Returned counts the deliveries of the task's message that stopping
	// workers gave back (unstarted, or interrupted): they are not attempts.
	Returned int `json:"returned,omitempty"`
}

// CancelRequest cancels a task.
type CancelRequest struct {
	ID string `json:"id"`
}

// CancelReply tells the state the task was in when cancelled.
type CancelReply struct {
	ID   string `json:"id"`
	Was  string `json:"was"`
	Done bool   `json:"cancelled"`
}

// ListRequest lists tasks: live ones in their queues' order, then
// delayed ones, then finished ones oldest first.
type ListRequest struct {
	Queue  string `json:"queue,omitempty"`  // only this queue
	State  string `json:"state,omitempty"`  // only this state
	Limit  int    `json:"limit,omitempty"`  // zero: 100; at most 1000
	Cursor string `json:"cursor,omitempty"` // the next_cursor of the previous page
}

// ListReply is one page of tasks.
type ListReply struct {
	Tasks      []TaskInfo `json:"tasks"`
	NextCursor string     `json:"next_cursor,omitempty"` // empty on the last page
}

// QueuesRequest asks for every queue's figures.
type QueuesRequest struct{}

// QueuesReply lists the queues by name.
type QueuesReply struct {
	Queues []QueueInfo `json:"queues"`
	// History gives the figures of the task records (HistoryStream).
	History *HistoryInfo `json:"history,omitempty"`
}

// HistoryInfo gives the figures of the task records: one per task that
// has an outcome, the oldest going first past MaxBytes (Config.HistoryMaxBytes)
// or Config.Retention.
type HistoryInfo struct {
	Bytes    uint64   `json:"bytes"`
	Records  uint64   `json:"records"`
	MaxBytes int64    `json:"max_bytes"`
	Oldest   bus.Time `json:"oldest,omitempty,omitzero"` // the oldest record's time; absent with none
}

// QueueInfo describes a queue.
type QueueInfo struct {
	Name      string `json:"name"`
	Depth     uint64 `json:"depth"`     // tasks in the queue: waiting, running, or waiting for a retry
	InFlight  int    `json:"in_flight"` // delivered, not acknowledged (running, or waiting for a retry)
	Scheduled int    `json:"scheduled"` // delayed tasks not due yet
	Dead      uint64 `json:"dead"`      // in the dead-letter stream
	Paused    bool   `json:"paused"`
}

// PauseRequest pauses or resumes a queue.
type PauseRequest struct {
	Queue string `json:"queue"`
}

// PauseReply tells the queue's new state.
type PauseReply struct {
	Queue  string `json:"queue"`
	Paused bool   `json:"paused"`
}

// ScheduleRequest adds (or replaces) a periodic schedule: every tick makes
// one task.
type ScheduleRequest struct {
	Name    string `json:"name"`
	Queue   string `json:"queue"`
	Type    string `json:"type"`
	Payload Bytes  `json:"payload,omitempty"`
	// Cron: 6 fields with seconds ("0 */5 * * * *") or @hourly, @daily...
	Cron     string `json:"cron,omitempty"`
	EveryMs  int64  `json:"every_ms,omitempty"`  // or: an interval, whole seconds, ≥ 1000
	TimeZone string `json:"time_zone,omitempty"` // IANA name, for cron only; zero: UTC
	// MaxRetries and TimeoutMs of the tasks, as in submit.
	MaxRetries *int  `json:"max_retries,omitempty"`
	TimeoutMs  int64 `json:"timeout_ms,omitempty"`
}

// ScheduleInfo describes a periodic schedule.
type ScheduleInfo struct {
	Name       string   `json:"name"`
	Queue      string   `json:"queue"`
	Type       string   `json:"type"`
	Cron       string   `json:"cron,omitempty"`
	EveryMs    int64    `json:"every_ms,omitempty"`
	TimeZone   string   `json:"time_zone,omitempty"`
	MaxRetries int      `json:"max_retries"`
	TimeoutMs  int64    `json:"timeout_ms"`
	CreatedAt  bus.Time `json:"created_at"`
	// NextRunAt is when the schedule fires next, as of the reply, computed
	// as nats-server computes it. For a cron expression it is exact
	// (nats-server's own parser, in the schedule's time zone). For every_ms
	// it counts from the schedule's creation rounded to the second, as the
	// stream does: schedules.list takes the stream's own record of that
	// time, so it is exact; schedules.add's reply takes this instance's
	// clock just before storing, which is within the store's round trip of
	// it. A stream that skipped ticks (its server was down at one) counts
	// again from its restart, so after an outage an every_ms schedule may
	// fire up to one interval away from this. Absent when the schedule
	// cannot be read.
	NextRunAt bus.Time `json:"next_run_at,omitempty,omitzero"`
}

// ScheduleListRequest lists the periodic schedules.
type ScheduleListRequest struct{}

// ScheduleListReply lists the periodic schedules by name.
type ScheduleListReply struct {
	Schedules []ScheduleInfo `json:"schedules"`
}

// ScheduleRmRequest removes a periodic schedule.
type ScheduleRmRequest struct {
	Name string `json:"name"`
}

// ScheduleRmReply confirms the removal.
type ScheduleRmReply struct {
	Removed bool `json:"removed"`
}

// CheckQueue reports whether name can name a queue: 1 to MaxQueueLen
// letters, digits, '-' or '_' (it becomes a subject token and a consumer
// name).
func CheckQueue(name string) error {
	if name == "" || len(name) > MaxQueueLen {
		return ErrInvalidQueue.With("queue name must be 1 to %d bytes, got %d", MaxQueueLen, len(name))
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return ErrInvalidQueue.With("queue name %q: character %q is not allowed (letters, digits, - and _)", name, c)
		}
	}
	return nil
}

// checkName checks a schedule name: the queue charset.
func checkName(name string) error {
	if err := CheckQueue(name); err != nil {
		return ErrInvalid.With("schedule name must be 1 to %d letters, digits, - or _: %q", MaxQueueLen, name)
	}
	return nil
}

// checkID checks a task id: 1 to MaxIDLen letters, digits, '-' or '_'.
func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return ErrInvalid.With("id must be 1 to %d bytes", MaxIDLen)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return ErrInvalid.With("id %q: character %q is not allowed", id, c)
		}
	}
	return nil
}

func checkType(t string) error {
	if t == "" || len(t) > MaxTypeLen || !utf8.ValidString(t) {
		return ErrInvalid.With("type must be 1 to %d bytes of UTF-8", MaxTypeLen)
	}
	for _, c := range t {
		if unicode.IsSpace(c) || unicode.IsControl(c) {
			return ErrInvalid.With("type %q must not contain spaces or control characters", t)
		}
	}
	return nil
}

func checkRetries(r *int) error {
	if r != nil && (*r < 0 || *r > MaxRetries) {
		return ErrInvalid.With("max_retries must be in [0, %d], got %d", MaxRetries, *r)
	}
	return nil
}

func checkTimeout(ms int64) error {
	if ms != 0 && (ms < MinTimeoutMs || ms > MaxTimeoutMs) {
		return ErrInvalid.With("timeout_ms must be 0 (the default) or in [%d, %d], got %d", MinTimeoutMs, MaxTimeoutMs, ms)
	}
	return nil
}

// Validate implements bus.Validator. Bounds that are the service's (the
// payload size) are checked by the service.
func (r *SubmitRequest) Validate() error {
	if r.Tasks != nil {
		// A batch: each task is checked on its own when it is submitted.
		one := *r
		one.Tasks = nil
		if !reflect.DeepEqual(one, SubmitRequest{}) {
			return ErrInvalid.With("a batch gives tasks and no other field")
		}
		if len(r.Tasks) == 0 || len(r.Tasks) > MaxBatch {
			return ErrInvalid.With("tasks must hold 1 to %d tasks, got %d", MaxBatch, len(r.Tasks))
		}
		return nil
	}
	if r.ID != "" {
		if err := checkID(r.ID); err != nil {
			return err
		}
	}
	if err := CheckQueue(r.Queue); err != nil {
		return err
	}
	if err := checkType(r.Type); err != nil {
		return err
	}
	switch r.PayloadEncoding {
	case "":
	case "base64":
		b, err := base64.StdEncoding.DecodeString(string(r.Payload))
		if err != nil {
			return ErrInvalid.With("payload is not base64: %v", err)
		}
		r.Payload, r.PayloadEncoding = b, ""
	default:
		return ErrInvalid.With("payload_encoding must be base64 or absent, got %q", r.PayloadEncoding)
	}
	if !r.RunAt.IsZero() && r.DelayMs != 0 {
		return ErrInvalidSchedule.With("give run_at or delay_ms, not both")
	}
	if r.DelayMs < 0 || r.DelayMs > MaxDelayMs {
		return ErrInvalidSchedule.With("delay_ms must be in [0, %d], got %d", MaxDelayMs, r.DelayMs)
	}
	if !r.RunAt.IsZero() && time.Until(r.RunAt.Time) > time.Duration(MaxDelayMs)*time.Millisecond {
		return ErrInvalidSchedule.With("run_at %s is more than a year ahead", r.RunAt)
	}
	if err := checkRetries(r.MaxRetries); err != nil {
		return err
	}
	if err := checkTimeout(r.TimeoutMs); err != nil {
		return err
	}
	if err := r.Backoff.check(); err != nil {
		return err
	}
	if len(r.UniqueKey) > MaxUniqueKeyLen || !utf8.ValidString(r.UniqueKey) {
		return ErrInvalid.With("unique_key must be UTF-8 of at most %d bytes", MaxUniqueKeyLen)
	}
	if r.UniqueForMs < 0 || r.UniqueForMs > MaxDelayMs || (r.UniqueForMs > 0 && r.UniqueForMs < 1000) {
		return ErrInvalid.With("unique_for_ms must be 0 (one hour) or in [1000, %d], got %d", MaxDelayMs, r.UniqueForMs)
	}
	if r.UniqueForMs > 0 && r.UniqueKey == "" {
		return ErrInvalid.With("unique_for_ms needs a unique_key")
	}
	return nil
}

// Validate implements bus.Validator.
func (r *StatusRequest) Validate() error { return checkID(r.ID) }

// Validate implements bus.Validator.
func (r *CancelRequest) Validate() error { return checkID(r.ID) }

// Validate implements bus.Validator.
func (r *ListRequest) Validate() error {
	if r.Queue != "" {
		if err := CheckQueue(r.Queue); err != nil {
			return err
		}
	}
	if r.State != "" && !validState(r.State) {
		return ErrInvalid.With("state must be one of %s, got %q", strings.Join(States, ", "), r.State)
	}
	if r.Limit < 0 || r.Limit > MaxListLimit {
		return ErrInvalid.With("limit must be in [0, %d], got %d", MaxListLimit, r.Limit)
	}
	if _, _, err := parseListCursor(r.Cursor); err != nil {
		return ErrInvalid.With("cursor %q is not one this service gave", r.Cursor)
	}
	return nil
}

func validState(s string) bool {
	for _, st := range States {
		if s == st {
			return true
		}
	}
	return false
}

// Validate implements bus.Validator.
func (r *PauseRequest) Validate() error { return CheckQueue(r.Queue) }

// Validate implements bus.Validator.
func (r *ScheduleRequest) Validate() error {
	if err := checkName(r.Name); err != nil {
		return err
	}
	if err := CheckQueue(r.Queue); err != nil {
		return err
	}
	if err := checkType(r.Type); err != nil {
		return err
	}
	switch {
	case r.Cron != "" && r.EveryMs != 0:
		return ErrInvalidSchedule.With("give cron or every_ms, not both")
	case r.Cron == "" && r.EveryMs == 0:
		return ErrInvalidSchedule.With("give cron or every_ms")
	case r.EveryMs != 0 && (r.EveryMs < 1000 || r.EveryMs%1000 != 0 || r.EveryMs > MaxDelayMs):
		return ErrInvalidSchedule.With("every_ms must be whole seconds in [1000, %d], got %d", MaxDelayMs, r.EveryMs)
	case r.TimeZone != "" && r.Cron == "":
		return ErrInvalidSchedule.With("time_zone goes with cron only")
	case len(r.Cron) > 256 || strings.ContainsAny(r.Cron, "\r\n"):
		return ErrInvalidSchedule.With("cron expression too long or on several lines")
	}
	if r.TimeZone != "" {
		if len(r.TimeZone) > 64 {
			return ErrInvalidSchedule.With("time_zone too long")
		}
		if _, err := time.LoadLocation(r.TimeZone); err != nil || strings.EqualFold(r.TimeZone, "local") {
			return ErrInvalidSchedule.With("unknown time_zone %q", r.TimeZone)
		}
	}
	if err := checkRetries(r.MaxRetries); err != nil {
		return err
	}
	return checkTimeout(r.TimeoutMs)
}

// Validate implements bus.Validator.
func (r *ScheduleRmRequest) Validate() error { return checkName(r.Name) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) && len(s) > 0 {
		s = s[:len(s)-1]
	}
	return s
}

func (r *SubmitRequest) String() string {
	if r.Tasks != nil {
		return fmt.Sprintf("a batch of %d", len(r.Tasks))
	}
	return fmt.Sprintf("%s/%s", r.Queue, r.Type)
}
