package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/meshkit/mesh/pkg/bus"
)

// Client is the Go SDK of the scheduler service.
type Client struct {
	nc     *nats.Conn
	direct bool
	js     jetstream.JetStream
	queues sync.Map // queue name -> struct{}: submitted to through the service
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithDirect makes the client store a task's message in its queue itself,
// as the service would, instead of asking the service: one round trip to
// the store and none to the service. It applies to the tasks submitted to
// run at once without a unique key, on a queue this client has submitted
// to through the service before (its first submit to a queue goes through
// the service, which creates the queue); delayed and unique tasks always
// go through the service. The client checks a task as the service does,
// with the service's defaults (DefaultMaxRetries, DefaultTimeout,
// DefaultMaxPayload): a service configured otherwise applies its own only
// to the tasks it stores. It needs permission to publish on mesh.tasks.>
// (the compose stack's client user has it). No task.submitted event is
// sent for a task stored directly. It applies to Submit: SubmitMany's
// batches go through the service, one request for up to MaxBatch tasks.
func WithDirect() ClientOption { return func(c *Client) { c.direct = true } }

// NewClient returns a client that talks to the scheduler service over nc.
func NewClient(nc *nats.Conn, opts ...ClientOption) *Client {
	c := &Client{nc: nc}
	for _, o := range opts {
		o(c)
	}
	if c.direct {
		if js, err := jetstream.New(nc); err == nil {
			c.js = js
		} else {
			c.direct = false
		}
	}
	return c
}

// Submit submits a task and returns its id. It fails with ErrInvalidQueue,
// ErrInvalidSchedule, ErrInvalid or ErrPayloadTooLarge on bad input (nothing
// is enqueued), and with ErrDuplicate when the queue has a task with the
// same unique key within its window (or the id names another task): the
// id returned is then that task's.
//
// Submit gives the task an id of its own making when req.ID is empty, and
// when a submit gets no answer (a timeout, no service, or a 503 that
// cannot tell whether the task stands) it sends it again with the same id
// while ctx allows, up to submitAttempts times: the store keeps one message
// per id (see SubmitRequest.ID), so a retry never duplicates a task.
func (c *Client) Submit(ctx context.Context, req SubmitRequest) (string, error) {
	if req.ID == "" {
		req.ID = nuid.Next()
	}
	if c.direct && req.UniqueKey == "" && req.DelayMs == 0 && (req.RunAt.IsZero() || !req.RunAt.After(time.Now())) {
		if _, ok := c.queues.Load(req.Queue); ok {
			return c.submitDirect(ctx, req)
		}
	}
	return c.submit(ctx, req)
}

// submit submits a task through the service.
func (c *Client) submit(ctx context.Context, req SubmitRequest) (string, error) {
	var r SubmitReply
	var err error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, bus.DefaultTimeout)
		r, err = bus.Request[SubmitRequest, SubmitReply](actx, c.nc, SubjectSubmit, req)
		cancel()
		if err == nil || attempt == submitAttempts || ctx.Err() != nil || !unsettled(err) {
			break
		}
		if !pause(ctx, attempt) {
			break
		}
	}
	if err != nil {
		if id, ok := DuplicateID(err); ok {
			return id, err
		}
		return "", err
	}
	c.queues.Store(req.Queue, struct{}{})
	return r.ID, nil
}

// pause waits before the next attempt of a submit; false if ctx ended.
func pause(ctx context.Context, attempt int) bool {
	select {
	case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		return true
	case <-ctx.Done():
		return false
	}
}

// submitDirect stores a task's message in its queue (WithDirect). A
// message the store already has (the same submit sent again, or another
// task's id) is left to the service to answer.
func (c *Client) submitDirect(ctx context.Context, req SubmitRequest) (string, error) {
	if err := req.Validate(); err != nil {
		return "", err
	}
	if len(req.Payload) > DefaultMaxPayload {
		return "", ErrPayloadTooLarge.With("payload of %d bytes exceeds the limit of %d", len(req.Payload), DefaultMaxPayload)
	}
	info := TaskInfo{ID: req.ID, Queue: req.Queue, Type: req.Type, MaxRetries: DefaultMaxRetries, TimeoutMs: req.TimeoutMs}
	if req.MaxRetries != nil {
		info.MaxRetries = *req.MaxRetries
	}
	if info.TimeoutMs == 0 {
		info.TimeoutMs = DefaultTimeout.Milliseconds()
	}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, bus.DefaultTimeout)
		ack, err := c.js.PublishMsg(actx, taskMsg(&info, req.Backoff, req.Payload))
		cancel()
		switch {
		case err == nil && !ack.Duplicate:
			return req.ID, nil
		case err == nil || liveTwin(err):
			return c.submit(ctx, req)
		case bus.Unanswered(err) && attempt < submitAttempts && ctx.Err() == nil && pause(ctx, attempt):
			continue
		default:
			return "", fmt.Errorf("scheduler: storing task %s: %w", req.ID, err)
		}
	}
}

// SubmitMany submits tasks in batches (mesh.scheduler.submit with tasks:
// up to MaxBatch tasks and about maxBatchBytes each), each accepted or
// refused on its own, and returns a result per task, in order: its id and
// state, or its error (SubmitResult.Err). As Submit, it gives each task
// without an id one of its own making and sends a batch that got no
// answer again with the same ids, which makes no second task. The error
// is for a batch that failed as a whole; results of the batches sent
// before it are filled in.
func (c *Client) SubmitMany(ctx context.Context, reqs []SubmitRequest) ([]SubmitResult, error) {
	tasks := make([]SubmitRequest, len(reqs))
	for i, r := range reqs {
		if r.ID == "" {
			r.ID = nuid.Next()
		}
		tasks[i] = r
	}
	results := make([]SubmitResult, 0, len(tasks))
	for start := 0; start < len(tasks); {
		end, size := start, 0
		for end < len(tasks) && end-start < MaxBatch {
			n := len(tasks[end].Payload) + len(tasks[end].Type) + len(tasks[end].Queue) + len(tasks[end].UniqueKey) + len(tasks[end].ID) + 128
			if end > start && size+n > maxBatchBytes {
				break
			}
			size += n
			end++
		}
		r, err := c.submitBatch(ctx, tasks[start:end])
		if err != nil {
			return results, err
		}
		if len(r.Tasks) != end-start {
			return results, fmt.Errorf("scheduler: a batch of %d tasks got %d results", end-start, len(r.Tasks))
		}
		for i, res := range r.Tasks {
			if res.Error == nil {
				c.queues.Store(tasks[start+i].Queue, struct{}{})
			}
		}
		results = append(results, r.Tasks...)
		start = end
	}
	return results, nil
}

// maxBatchBytes bounds the estimated size of one batch SubmitMany sends,
// within NATS's default max payload of 1 MiB.
const maxBatchBytes = 900 << 10

func (c *Client) submitBatch(ctx context.Context, tasks []SubmitRequest) (SubmitReply, error) {
	var r SubmitReply
	var err error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, batchTimeout(len(tasks)))
		r, err = bus.Request[SubmitRequest, SubmitReply](actx, c.nc, SubjectSubmit, SubmitRequest{Tasks: tasks})
		cancel()
		if err == nil || attempt == submitAttempts || ctx.Err() != nil || !unsettled(err) || !pause(ctx, attempt) {
			return r, err
		}
	}
}

// batchTimeout bounds one attempt of a batch of n tasks: the service
// stores their messages pipelined, each unique key first.
func batchTimeout(n int) time.Duration {
	return bus.DefaultTimeout + time.Duration(n)*25*time.Millisecond
}

// Err returns the error that refused the task, or nil: a coded error that
// matches the package's sentinels with errors.Is.
func (r SubmitResult) Err() error {
	if r.Error == nil {
		return nil
	}
	return r.Error
}

// submitAttempts bounds the attempts of one Submit.
const submitAttempts = 4

// unsettled reports an error after which a submit may or may not have
// made its task.
func unsettled(err error) bool {
	return bus.Unanswered(err) || errors.Is(err, bus.ErrTimeout) || errors.Is(err, bus.ErrUnavailable)
}

// DuplicateID returns the id of the existing task an ErrDuplicate names.
func DuplicateID(err error) (string, bool) {
	var e *bus.Error
	if !errors.As(err, &e) || !errors.Is(err, ErrDuplicate) {
		return "", false
	}
	i := strings.LastIndex(e.Message, duplicateMarker)
	if i < 0 {
		return "", false
	}
	return e.Message[i+len(duplicateMarker):], true
}

// Status returns a task's state, or ErrNotFound.
func (c *Client) Status(ctx context.Context, id string) (TaskInfo, error) {
	return bus.Request[StatusRequest, TaskInfo](ctx, c.nc, SubjectStatus, StatusRequest{ID: id})
}

// Cancel cancels a task: a scheduled task never runs, a queued one is
// removed, a running one has its handler's context cancelled. It returns
// the state the task was in, or ErrFinished when it had already finished,
// or ErrNotFound.
func (c *Client) Cancel(ctx context.Context, id string) (string, error) {
	r, err := bus.Request[CancelRequest, CancelReply](ctx, c.nc, SubjectCancel, CancelRequest{ID: id})
	return r.Was, err
}

// List returns one page of tasks, sorted by id; pass the reply's
// NextCursor as the next request's Cursor.
func (c *Client) List(ctx context.Context, req ListRequest) (ListReply, error) {
	return bus.Request[ListRequest, ListReply](ctx, c.nc, SubjectList, req)
}

// Queues returns the figures of every queue.
func (c *Client) Queues(ctx context.Context) ([]QueueInfo, error) {
	r, err := c.QueuesHistory(ctx)
	return r.Queues, err
}

// QueuesHistory returns the figures of every queue, and of the task records.
func (c *Client) QueuesHistory(ctx context.Context) (QueuesReply, error) {
	return bus.Request[QueuesRequest, QueuesReply](ctx, c.nc, SubjectQueues, QueuesRequest{})
}

// Pause stops the delivery of a queue's tasks until Resume (ErrQueueNotFound
// if nothing was ever submitted to it). Tasks already delivered go on.
func (c *Client) Pause(ctx context.Context, queue string) error {
	_, err := bus.Request[PauseRequest, PauseReply](ctx, c.nc, SubjectPause, PauseRequest{Queue: queue})
	return err
}

// Resume restarts the delivery of a paused queue.
func (c *Client) Resume(ctx context.Context, queue string) error {
	_, err := bus.Request[PauseRequest, PauseReply](ctx, c.nc, SubjectResume, PauseRequest{Queue: queue})
	return err
}

// AddSchedule adds a periodic schedule, or replaces the one of the same
// name. Each tick makes one task, however many scheduler instances run.
func (c *Client) AddSchedule(ctx context.Context, req ScheduleRequest) (ScheduleInfo, error) {
	return bus.Request[ScheduleRequest, ScheduleInfo](ctx, c.nc, SubjectAddSched, req)
}

// ListSchedules lists the periodic schedules by name.
func (c *Client) ListSchedules(ctx context.Context) ([]ScheduleInfo, error) {
	r, err := bus.Request[ScheduleListRequest, ScheduleListReply](ctx, c.nc, SubjectListSched, ScheduleListRequest{})
	return r.Schedules, err
}

// RemoveSchedule removes a periodic schedule, or fails with
// ErrScheduleNotFound. Tasks it already made are not affected.
func (c *Client) RemoveSchedule(ctx context.Context, name string) error {
	_, err := bus.Request[ScheduleRmRequest, ScheduleRmReply](ctx, c.nc, SubjectRmSched, ScheduleRmRequest{Name: name})
	return err
}

// DeadList returns one page of the dead letters, oldest first; pass the
// reply's NextCursor as the next request's Cursor.
func (c *Client) DeadList(ctx context.Context, req DeadListRequest) (DeadListReply, error) {
	return bus.Request[DeadListRequest, DeadListReply](ctx, c.nc, SubjectDeadList, req)
}

// DeadRequeue runs dead tasks again, with their ids and their attempts
// reset: one task (req.ID), or every dead task of a queue (req.Queue and
// req.All). It returns the ids requeued, or ErrNotFound for an id that is
// not in the dead letters.
func (c *Client) DeadRequeue(ctx context.Context, req DeadRequest) ([]string, error) {
	r, err := bus.Request[DeadRequest, DeadReply](ctx, c.nc, SubjectDeadRequeue, req)
	return r.IDs, err
}

// DeadDelete removes dead tasks from the dead letters (their records stay
// dead until their retention ends), as DeadRequeue names them, and returns
// the ids removed.
func (c *Client) DeadDelete(ctx context.Context, req DeadRequest) ([]string, error) {
	r, err := bus.Request[DeadRequest, DeadReply](ctx, c.nc, SubjectDeadDelete, req)
	return r.IDs, err
}

// taskOfEvent reads the task id and queue of a task event.
func taskOfEvent(data []byte) (id, queue string, ok bool) {
	var ev struct {
		Data struct {
			ID    string `json:"id"`
			Queue string `json:"queue"`
		} `json:"data"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return "", "", false
	}
	return ev.Data.ID, ev.Data.Queue, true
}

// signalTaskEvents subscribes to the task events on subject and signals the
// returned channel, without blocking, at each one whose task matches.
func signalTaskEvents(nc *nats.Conn, subject string, match func(id, queue string) bool) (*nats.Subscription, <-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if id, queue, ok := taskOfEvent(m.Data); ok && match(id, queue) {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	})
	return sub, ch, err
}

// Wait waits until a task has finished (succeeded, dead or cancelled) or
// ctx ends, and returns its last state. It listens to the task events and
// asks for the status when one names the task (and every few seconds, in
// case an event was missed).
func (c *Client) Wait(ctx context.Context, id string) (TaskInfo, error) {
	sub, ch, err := signalTaskEvents(c.nc, bus.EventSubject("task", "*"), func(tid, _ string) bool { return tid == id })
	if err != nil {
		return TaskInfo{}, err
	}
	defer sub.Unsubscribe()
	if err := c.nc.Flush(); err != nil {
		return TaskInfo{}, err
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		// Each look bounded: a request sent while the connection
		// reconnects may never be answered.
		sctx, cancel := context.WithTimeout(ctx, bus.DefaultTimeout)
		info, err := c.Status(sctx, id)
		cancel()
		if err != nil && !errors.Is(err, bus.ErrTimeout) && !bus.Unanswered(err) {
			return info, err
		}
		if err == nil && terminal(info.State) {
			return info, nil
		}
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return info, ctx.Err()
		}
	}
}

// Finished reports whether a state is final: succeeded, dead or cancelled.
func Finished(state string) bool { return terminal(state) }
