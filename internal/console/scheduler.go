package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/internal/meshstat"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler"
)

// taskStates are the states a task can be in, for the tasks' filter.
var taskStates = []string{"queued", "scheduled", "running", "failed", "succeeded", "dead", "cancelled"}

// tasksPerPage is how many tasks the scheduler page lists at once.
const tasksPerPage = 50

// schedulerView is the scheduler page: the queues, one page of tasks, the
// periodic schedules and the depth chart.
type schedulerView struct {
	Queues      []scheduler.QueueInfo
	QueuesErr   error
	Tasks       []scheduler.TaskInfo
	TasksErr    error
	Next        string // the cursor of the next page of tasks
	Queue       string // the filter
	State       string
	Cursor      string
	Schedules   []scheduler.ScheduleInfo
	SchedErr    error
	Depths      chart
	DeadTotal   uint64
	NeedsFilter bool
}

func (c *Console) schedulerView(ctx context.Context, r *http.Request) (any, error) {
	q := r.URL.Query()
	v := &schedulerView{Queue: q.Get("queue"), State: q.Get("state"), Cursor: q.Get("cursor"), Depths: c.sampler.depthChart()}
	v.Queues, v.QueuesErr = c.tasks.Queues(ctx)
	for _, qi := range v.Queues {
		v.DeadTotal += qi.Dead
	}
	if v.State != "" && !slices.Contains(taskStates, v.State) {
		v.TasksErr = fmt.Errorf("no state %q (states: %s)", v.State, strings.Join(taskStates, ", "))
	} else {
		var page scheduler.ListReply
		req := scheduler.ListRequest{Queue: v.Queue, State: v.State, Limit: tasksPerPage, Cursor: v.Cursor}
		page, v.TasksErr = c.taskLists.getIf(v.Queue+"\x00"+v.State+"\x00"+v.Cursor, c.taskListValid, func() (scheduler.ListReply, error) {
			return c.tasks.List(ctx, req)
		})
		v.Tasks, v.Next = page.Tasks, page.NextCursor
	}
	v.Schedules, v.SchedErr = c.tasks.ListSchedules(ctx)
	if v.QueuesErr != nil && v.TasksErr != nil {
		return v, v.QueuesErr
	}
	return v, nil
}

// taskListStale bounds how long a task list is kept while no task event
// says that something changed (an event the console missed).
const taskListStale = time.Minute

// taskListValid reports whether a task list read at at can still be shown:
// it is younger than TaskListEvery, or no task event came since it was
// read (then nothing changed: a backlog of queued tasks costs no scan).
func (c *Console) taskListValid(at time.Time) bool {
	age := time.Since(at)
	return age < c.cfg.TaskListEvery || (age < taskListStale && c.events.lastOf("task").Before(at))
}

// taskView is a task's page: its state, timeline and the events the console
// saw about it.
type taskView struct {
	ID       string
	Task     scheduler.TaskInfo
	Err      error
	Timeline []step
	Events   []event
	// Stored is the read of the task's stored events (its Err, or
	// NotStored: the page shows the events heard live only).
	Stored storedRead
}

// taskEvents is how many events a task's page shows.
const taskEvents = 100

type step struct {
	What string
	At   time.Time
}

func (c *Console) taskView(ctx context.Context, r *http.Request) (any, error) {
	id := r.PathValue("id")
	if id == "" {
		id = r.URL.Query().Get("id")
	}
	v := &taskView{ID: id}
	v.Task, v.Err = c.tasks.Status(ctx, id)
	if v.Err == nil {
		t := v.Task
		for _, s := range []step{{"created", t.CreatedAt.Time}, {"due", t.RunAt.Time}, {"started (last attempt)", t.StartedAt.Time}, {"next retry", t.NextRetryAt.Time}, {"finished", t.FinishedAt.Time}} {
			if !s.At.IsZero() {
				v.Timeline = append(v.Timeline, s)
			}
		}
		slices.SortStableFunc(v.Timeline, func(a, b step) int { return a.At.Compare(b.At) })
	}
	about := func(ev event) bool { return ev.ID == id && strings.HasPrefix(ev.Subject, "mesh.events.task.") }
	// The task's events are stored from its creation on (a second earlier:
	// the clocks of the service and the server may differ a little); with
	// no state, the newest of the last day.
	since, newest := v.Task.CreatedAt.Add(-time.Second), false
	if v.Err != nil || v.Task.CreatedAt.IsZero() {
		since, newest = time.Now().Add(-taskHistory), true
	}
	if c.taskEventsStored(ctx) {
		v.Stored = c.stored(ctx, bus.TaskEventSubjects, since, newest, taskEvents, about, "task\x00"+id)
	} else {
		v.Stored = storedRead{NotStored: true}
	}
	v.Events = mergeEvents(v.Stored.Events, c.events.recent(taskEvents, about), taskEvents)
	return v, nil
}

// taskEventsStored tells whether MESH_EVENTS stores the task events (they
// are live only unless the mesh runs with --store-task-events), from the
// streams the sampler listed last, or a list of its own. When it cannot
// tell (no list, no such stream), it says yes: the read of the events then
// says what is wrong.
func (c *Console) taskEventsStored(ctx context.Context) bool {
	st, fresh := c.sampler.status(2 * c.cfg.SampleEvery)
	streams := st.Streams
	if !fresh {
		var err error
		if streams, err = meshstat.Streams(ctx, c.nc); err != nil {
			return true
		}
	}
	for _, s := range streams {
		if s.Name == bus.EventStream {
			return slices.Contains(s.Subjects, bus.EventSubjects) || slices.Contains(s.Subjects, bus.TaskEventSubjects)
		}
	}
	return true
}

// submit submits a task from the scheduler page's form and shows it.
func (c *Console) submit(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
	defer cancel()
	req := scheduler.SubmitRequest{Queue: strings.TrimSpace(r.FormValue("queue")), Type: strings.TrimSpace(r.FormValue("type")), Payload: []byte(r.FormValue("payload"))}
	if d := strings.TrimSpace(r.FormValue("delay")); d != "" {
		delay, err := time.ParseDuration(d)
		if err != nil || delay < 0 {
			refuse(w, r, 400, "invalid", fmt.Sprintf("delay %q is not a duration such as 5s or 2m", d))
			return
		}
		req.DelayMs = delay.Milliseconds()
	}
	id, err := c.tasks.Submit(ctx, req)
	c.taskLists.forget()
	if err != nil && !errors.Is(err, scheduler.ErrDuplicate) {
		done(w, r, "", c.denied(err, scheduler.SubjectSubmit))
		return
	}
	msg := "submitted task " + id
	if err != nil {
		msg = "a task with this unique key exists: " + id
	}
	http.Redirect(w, r, "/scheduler/tasks/"+url.PathEscape(id)+"?"+url.Values{"msg": {msg}}.Encode(), http.StatusSeeOther)
}

// cancel cancels a task.
func (c *Console) cancel(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
	defer cancel()
	id := r.PathValue("id")
	was, err := c.tasks.Cancel(ctx, id)
	c.taskLists.forget()
	done(w, r, fmt.Sprintf("cancelled task %s (it was %s)", id, was), c.denied(err, scheduler.SubjectCancel))
}

// pauseResume pauses or resumes a queue.
func (c *Console) pauseResume(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
	defer cancel()
	queue := r.PathValue("queue")
	var err error
	var subject string
	switch r.PathValue("action") {
	case "pause":
		err, subject = c.tasks.Pause(ctx, queue), scheduler.SubjectPause
	case "resume":
		err, subject = c.tasks.Resume(ctx, queue), scheduler.SubjectResume
	default:
		http.NotFound(w, r)
		return
	}
	done(w, r, fmt.Sprintf("queue %s: %sd", queue, r.PathValue("action")), c.denied(err, subject))
}

// addSchedule adds (or replaces) a periodic schedule from the scheduler
// page's form: a cron spec, or an interval such as 1m.
func (c *Console) addSchedule(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
	defer cancel()
	req := scheduler.ScheduleRequest{
		Name: strings.TrimSpace(r.FormValue("name")), Queue: strings.TrimSpace(r.FormValue("queue")), Type: strings.TrimSpace(r.FormValue("type")),
		Payload: []byte(r.FormValue("payload")), Cron: strings.TrimSpace(r.FormValue("cron")), TimeZone: strings.TrimSpace(r.FormValue("time_zone")),
	}
	if e := strings.TrimSpace(r.FormValue("every")); e != "" {
		every, err := time.ParseDuration(e)
		if err != nil || every <= 0 {
			refuse(w, r, 400, "invalid", fmt.Sprintf("every %q is not an interval such as 30s or 5m", e))
			return
		}
		req.EveryMs = every.Milliseconds()
	}
	_, err := c.tasks.AddSchedule(ctx, req)
	done(w, r, "schedule "+req.Name+" added", c.denied(err, scheduler.SubjectAddSched))
}

// removeSchedule removes a periodic schedule.
func (c *Console) removeSchedule(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
	defer cancel()
	name := r.PathValue("name")
	err := c.tasks.RemoveSchedule(ctx, name)
	done(w, r, "schedule "+name+" removed", c.denied(err, scheduler.SubjectRmSched))
}

// ErrPermissionDenied is an action the user's NATS permissions do not
// allow: the server drops the request, so it fails as a timeout; the
// connection's last error tells why.
var ErrPermissionDenied = bus.NewError(403, "permission_denied", "permission denied")

// denied turns an action's failure to get an answer into
// ErrPermissionDenied when the connection's last error is the server
// refusing to let this user publish to the action's subject.
func (c *Console) denied(err error, subject string) error {
	if err == nil || !bus.Unanswered(err) && !errors.Is(err, bus.ErrUnavailable) && !errors.Is(err, bus.ErrTimeout) {
		return err
	}
	last := c.nc.LastError()
	if last != nil && errors.Is(last, nats.ErrPermissionViolation) && strings.Contains(last.Error(), `"`+subject+`"`) {
		return ErrPermissionDenied.With("your NATS user may not publish to %s (%s)", subject, last.Error())
	}
	return err
}

// done returns from an action to its page, with its outcome: msg, or the
// refusal of the mesh (its status, code and message).
func done(w http.ResponseWriter, r *http.Request, msg string, err error) {
	back := backTo(r)
	q := url.Values{"msg": {msg}}
	if err != nil {
		q = url.Values{"err": {refusal(err)}}
	}
	http.Redirect(w, r, back+sep(back)+q.Encode(), http.StatusSeeOther)
}

// findTask sends the task search form to the task's page.
func findTask(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimSpace(r.URL.Query().Get("id"))
	if id == "" {
		http.Redirect(w, r, "/scheduler", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/scheduler/tasks/"+url.PathEscape(id), http.StatusSeeOther)
}
