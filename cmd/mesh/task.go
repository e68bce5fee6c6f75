package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	// The time zone database, for cron schedules in a time zone (checked by
	// the scheduler and run by the embedded server) on hosts without one,
	// such as a FROM scratch image.
	_ "time/tzdata"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler"
)

type taskCmd struct {
	Submit taskSubmitCmd `cmd:"" help:"Submit a task: now, after --delay, or at --at."`
	Status taskStatusCmd `cmd:"" help:"Show a task's state."`
	Cancel taskCancelCmd `cmd:"" help:"Cancel a task (scheduled, queued or running)."`
	List   taskListCmd   `cmd:"" help:"List tasks, by queue and state."`
	Queues taskQueuesCmd `cmd:"" help:"Show every queue: depth, in flight, scheduled, dead, paused; and the task records (history): records, bytes, max_bytes, oldest."`
	Pause  taskPauseCmd  `cmd:"" help:"Stop delivering a queue's tasks until resumed."`
	Resume taskResumeCmd `cmd:"" help:"Deliver a paused queue's tasks again."`
	Dead   taskDeadCmd   `cmd:"" help:"Dead letters: list, requeue or remove dead tasks."`
}

type scheduleCmd struct {
	Add  scheduleAddCmd  `cmd:"" help:"Add (or replace) a periodic schedule: --cron or --every."`
	List scheduleListCmd `cmd:"" help:"List the periodic schedules."`
	Rm   scheduleRmCmd   `cmd:"" help:"Remove a periodic schedule."`
}

// withTasks runs one request of a command with a scheduler client, bounded
// by the command timeout.
func (a *app) withTasks(name string, fn func(context.Context, *scheduler.Client) error) error {
	return a.once(name, func(ctx context.Context, nc *nats.Conn) error { return fn(ctx, scheduler.NewClient(nc)) })
}

// payload reads a payload argument: "-" is stdin, "@FILE" a file.
func payload(arg string) ([]byte, error) {
	switch {
	case arg == "-":
		return io.ReadAll(os.Stdin)
	case strings.HasPrefix(arg, "@"):
		return os.ReadFile(arg[1:])
	}
	return []byte(arg), nil
}

type retryFlags struct {
	MaxRetries int           `name:"max-retries" default:"-1" help:"Retries after the first attempt (-1: the service's default, 3)."`
	Timeout    time.Duration `name:"task-timeout" help:"Bound of one attempt (0: the service's default, 30m)."`
}

func (f retryFlags) retries() *int {
	if f.MaxRetries < 0 {
		return nil
	}
	return &f.MaxRetries
}

type taskSubmitCmd struct {
	retryFlags
	Queue     string        `arg:"" help:"Queue."`
	Type      string        `arg:"" help:"Task type (picks the worker's handler)."`
	Payload   string        `arg:"" optional:"" help:"Payload: text, - for stdin, @FILE for a file."`
	Delay     time.Duration `help:"Run no earlier than this from now."`
	At        string        `help:"Run no earlier than this instant (RFC 3339)."`
	Backoff   time.Duration `help:"Constant retry delay (default: exponential from 1s to 10m, with jitter)."`
	ID        string        `help:"Task id (default: one made by the client); submitting again with the same id makes no second task."`
	UniqueKey string        `name:"unique-key" help:"Refuse a second task of the queue with this key within --unique-for."`
	UniqueFor time.Duration `name:"unique-for" help:"The unique window (default 1h)."`
	Wait      bool          `help:"Wait until the task has finished and print its state."`
	JSON      bool          `help:"Print JSON."`
}

func (c *taskSubmitCmd) Run(a *app) error {
	req := scheduler.SubmitRequest{
		ID: c.ID, Queue: c.Queue, Type: c.Type, DelayMs: c.Delay.Milliseconds(), MaxRetries: c.retries(), TimeoutMs: c.Timeout.Milliseconds(),
		UniqueKey: c.UniqueKey, UniqueForMs: c.UniqueFor.Milliseconds(),
	}
	var err error
	if req.Payload, err = payload(c.Payload); err != nil {
		return err
	}
	if c.At != "" {
		t, err := time.Parse(time.RFC3339Nano, c.At)
		if err != nil {
			return fmt.Errorf("--at: %w", err)
		}
		req.RunAt = bus.Time{Time: t}
	}
	if c.Backoff > 0 {
		req.Backoff = &scheduler.Backoff{Kind: "constant", InitialMs: c.Backoff.Milliseconds()}
	}
	nc, err := a.connect("mesh task submit")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), a.conn.Timeout)
	defer cancel()
	tasks := scheduler.NewClient(nc)
	r, err := bus.Request[scheduler.SubmitRequest, scheduler.SubmitReply](ctx, nc, scheduler.SubjectSubmit, req)
	if err != nil {
		return err
	}
	if c.Wait {
		info, err := tasks.Wait(context.Background(), r.ID)
		if err != nil {
			return err
		}
		return a.printTask(info, c.JSON)
	}
	if c.JSON {
		return a.printJSON(r)
	}
	if r.State == scheduler.StateScheduled {
		fmt.Fprintf(a.out, "%s scheduled for %s\n", r.ID, r.RunAt)
	} else {
		fmt.Fprintf(a.out, "%s queued\n", r.ID)
	}
	return nil
}

func (a *app) printTask(info scheduler.TaskInfo, asJSON bool) error {
	if asJSON {
		return a.printJSON(info)
	}
	w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s\t%s\n", k, v)
		}
	}
	row("id", info.ID)
	row("queue", info.Queue)
	row("type", info.Type)
	row("state", info.State)
	row("attempts", fmt.Sprintf("%d of %d", info.Attempts, info.MaxRetries+1))
	row("timeout", (time.Duration(info.TimeoutMs) * time.Millisecond).String())
	row("schedule", info.Schedule)
	row("unique key", info.UniqueKey)
	row("created", info.CreatedAt.String())
	row("run at", info.RunAt.String())
	row("started", info.StartedAt.String())
	row("finished", info.FinishedAt.String())
	row("next retry", info.NextRetryAt.String())
	row("last error", info.LastError)
	if info.Result != "" {
		res := info.Result
		if info.ResultEncoding != "" {
			res += " (" + info.ResultEncoding + ")"
		}
		if info.ResultTruncated {
			res += " (truncated)"
		}
		row("result", res)
	}
	return w.Flush()
}

type taskStatusCmd struct {
	ID   string `arg:"" help:"Task id."`
	JSON bool   `help:"Print JSON."`
}

func (c *taskStatusCmd) Run(a *app) error {
	var info scheduler.TaskInfo
	err := a.withTasks("mesh task status", func(ctx context.Context, tasks *scheduler.Client) (err error) {
		info, err = tasks.Status(ctx, c.ID)
		return err
	})
	if err != nil {
		return err
	}
	return a.printTask(info, c.JSON)
}

type taskCancelCmd struct {
	ID string `arg:"" help:"Task id."`
}

func (c *taskCancelCmd) Run(a *app) error {
	return a.withTasks("mesh task cancel", func(ctx context.Context, tasks *scheduler.Client) error {
		was, err := tasks.Cancel(ctx, c.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.out, "cancelled %s (was %s)\n", c.ID, was)
		return nil
	})
}

type taskListCmd struct {
	Queue  string `arg:"" optional:"" help:"Only this queue (default: every queue)."`
	State  string `help:"Only this state (scheduled, queued, running, failed, succeeded, dead, cancelled)."`
	Limit  int    `help:"At most this many (0: 100)."`
	Cursor string `help:"Start after this id (the previous page's next cursor)."`
	JSON   bool   `help:"Print JSON."`
}

func (c *taskListCmd) Run(a *app) error {
	var r scheduler.ListReply
	err := a.withTasks("mesh task list", func(ctx context.Context, tasks *scheduler.Client) (err error) {
		r, err = tasks.List(ctx, scheduler.ListRequest{Queue: c.Queue, State: c.State, Limit: c.Limit, Cursor: c.Cursor})
		return err
	})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r)
	}
	if len(r.Tasks) == 0 {
		fmt.Fprintln(a.out, "no tasks")
		return nil
	}
	w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tQUEUE\tTYPE\tSTATE\tATTEMPTS\tCREATED\tLAST ERROR")
	for _, t := range r.Tasks {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.ID, t.Queue, t.Type, t.State, t.Attempts, t.CreatedAt, t.LastError)
	}
	if r.NextCursor != "" {
		fmt.Fprintf(w, "more: --cursor %s\t\t\t\t\t\t\n", r.NextCursor)
	}
	return w.Flush()
}

type taskQueuesCmd struct {
	JSON bool `help:"Print JSON."`
}

func (c *taskQueuesCmd) Run(a *app) error {
	var r scheduler.QueuesReply
	err := a.withTasks("mesh task queues", func(ctx context.Context, tasks *scheduler.Client) (err error) {
		r, err = tasks.QueuesHistory(ctx)
		return err
	})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r.Queues)
	}
	if len(r.Queues) == 0 {
		fmt.Fprintln(a.out, "no queues")
	} else {
		w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "QUEUE\tDEPTH\tIN FLIGHT\tSCHEDULED\tDEAD\tPAUSED")
		for _, q := range r.Queues {
			fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%v\n", q.Name, q.Depth, q.InFlight, q.Scheduled, q.Dead, q.Paused)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if h := r.History; h != nil {
		oldest := "-"
		if !h.Oldest.IsZero() {
			oldest = h.Oldest.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(a.out, "history: records %d, bytes %d, max_bytes %d, oldest %s\n", h.Records, h.Bytes, h.MaxBytes, oldest)
	}
	return nil
}

type taskPauseCmd struct {
	Queue string `arg:"" help:"Queue."`
}

func (c *taskPauseCmd) Run(a *app) error {
	return a.withTasks("mesh task pause", func(ctx context.Context, tasks *scheduler.Client) error {
		if err := tasks.Pause(ctx, c.Queue); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "paused %s\n", c.Queue)
		return nil
	})
}

type taskResumeCmd struct {
	Queue string `arg:"" help:"Queue."`
}

func (c *taskResumeCmd) Run(a *app) error {
	return a.withTasks("mesh task resume", func(ctx context.Context, tasks *scheduler.Client) error {
		if err := tasks.Resume(ctx, c.Queue); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "resumed %s\n", c.Queue)
		return nil
	})
}

type scheduleAddCmd struct {
	retryFlags
	Name     string        `arg:"" help:"Schedule name (letters, digits, - and _)."`
	Queue    string        `required:"" help:"Queue of the tasks."`
	Type     string        `required:"" help:"Type of the tasks."`
	Payload  string        `help:"Payload of the tasks: text, - for stdin, @FILE for a file."`
	Cron     string        `help:"Cron expression, 6 fields with seconds (\"0 */5 * * * *\"), or @hourly, @daily..."`
	Every    time.Duration `help:"Or: an interval, whole seconds."`
	TimeZone string        `name:"tz" help:"IANA time zone of --cron (default UTC)."`
	JSON     bool          `help:"Print JSON."`
}

// check checks the flags the service would refuse, so that the error
// names the flags rather than the request's fields.
func (c *scheduleAddCmd) check() error {
	switch {
	case c.Cron != "" && c.Every != 0:
		return errors.New("give --cron or --every, not both")
	case c.Cron == "" && c.Every == 0:
		return errors.New("give --cron (e.g. --cron \"0 */5 * * * *\") or --every (e.g. --every 1m)")
	case c.Every != 0 && (c.Every < time.Second || c.Every%time.Second != 0):
		return fmt.Errorf("--every must be whole seconds, at least 1s; got %v", c.Every)
	case c.TimeZone != "" && c.Cron == "":
		return errors.New("--tz goes with --cron only")
	}
	return nil
}

func (c *scheduleAddCmd) Run(a *app) error {
	if err := c.check(); err != nil {
		return err
	}
	req := scheduler.ScheduleRequest{
		Name: c.Name, Queue: c.Queue, Type: c.Type, Cron: c.Cron, EveryMs: c.Every.Milliseconds(), TimeZone: c.TimeZone,
		MaxRetries: c.retries(), TimeoutMs: c.Timeout.Milliseconds(),
	}
	var err error
	if req.Payload, err = payload(c.Payload); err != nil {
		return err
	}
	return a.withTasks("mesh schedule add", func(ctx context.Context, tasks *scheduler.Client) error {
		info, err := tasks.AddSchedule(ctx, req)
		if err != nil {
			return err
		}
		if c.JSON {
			return a.printJSON(info)
		}
		fmt.Fprintf(a.out, "schedule %s: %s tasks on %s, %s\n", info.Name, info.Type, info.Queue, when(info))
		return nil
	})
}

func when(s scheduler.ScheduleInfo) string {
	if s.EveryMs != 0 {
		return "every " + (time.Duration(s.EveryMs) * time.Millisecond).String()
	}
	if s.TimeZone != "" {
		return fmt.Sprintf("cron %q (%s)", s.Cron, s.TimeZone)
	}
	return fmt.Sprintf("cron %q (UTC)", s.Cron)
}

type scheduleListCmd struct {
	JSON bool `help:"Print JSON."`
}

func (c *scheduleListCmd) Run(a *app) error {
	var scheds []scheduler.ScheduleInfo
	err := a.withTasks("mesh schedule list", func(ctx context.Context, tasks *scheduler.Client) (err error) {
		scheds, err = tasks.ListSchedules(ctx)
		return err
	})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(scheds)
	}
	if len(scheds) == 0 {
		fmt.Fprintln(a.out, "no schedules")
		return nil
	}
	now := time.Now()
	w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tQUEUE\tTYPE\tWHEN\tNEXT RUN\tCREATED")
	for _, s := range scheds {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Queue, s.Type, when(s), nextRun(s.NextRunAt, now), s.CreatedAt)
	}
	return w.Flush()
}

// nextRun is a schedule's next run as the service answered it, with how
// long until then: "?" when it could not tell.
func nextRun(at bus.Time, now time.Time) string {
	if at.IsZero() {
		return "?"
	}
	return fmt.Sprintf("%s (in %s)", at, at.Sub(now).Round(time.Second))
}

type scheduleRmCmd struct {
	Name string `arg:"" help:"Schedule name."`
}

func (c *scheduleRmCmd) Run(a *app) error {
	return a.withTasks("mesh schedule rm", func(ctx context.Context, tasks *scheduler.Client) error {
		if err := tasks.RemoveSchedule(ctx, c.Name); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "removed schedule %s\n", c.Name)
		return nil
	})
}

type workerCmd struct {
	Queue       []string      `required:"" help:"Queue to serve (repeat for several)."`
	Exec        string        `required:"" help:"Command run for each task by sh -c; the payload is on its stdin."`
	Concurrency int           `default:"1" help:"Tasks run at once per queue."`
	Grace       time.Duration `default:"30s" help:"At shutdown, how long running commands may finish."`
	MaxResult   int           `name:"max-result" default:"16384" help:"Bytes of the command's stdout kept as the task's result."`
}

// Help is the detail of mesh worker --help: the command's contract.
func (c *workerCmd) Help() string {
	return `For each task of the queues, runs sh -c CMD with the task's payload on stdin and
MESH_TASK_ID, MESH_TASK_TYPE, MESH_TASK_QUEUE and MESH_TASK_ATTEMPT in the environment.

How the command's outcome is taken:
  exit 0      the task succeeded; its stdout (the first --max-result bytes) is the task's result
  exit 100    the task failed for good: it is not retried
  other exit  the task failed and is retried with backoff, then dead-lettered; the end of
              stderr is its last error
A command still running at the task's timeout or cancellation gets SIGTERM, then SIGKILL
5 seconds later. Ctrl-C stops fetching tasks and lets running commands finish (--grace).`
}

// Run serves the queues until interrupted. Each task runs the command with
// the payload on stdin and MESH_TASK_ID, MESH_TASK_TYPE, MESH_TASK_QUEUE,
// MESH_TASK_ATTEMPT in the environment. Exit 0 is success, its stdout the
// result; exit 100 is a failure not to retry; any other status is retried.
// A command still running at the task's timeout or cancellation gets
// SIGTERM, then SIGKILL 5 seconds later.
func (c *workerCmd) Run(a *app) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.run(ctx, a)
}

// run serves the queues until ctx ends.
func (c *workerCmd) run(ctx context.Context, a *app) error {
	nc, err := a.connect("mesh worker")
	if err != nil {
		return err
	}
	defer nc.Close()
	queues := map[string]int{}
	for _, q := range c.Queue {
		queues[q] = c.Concurrency
	}
	w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: queues, ShutdownGrace: c.Grace, Logger: a.log})
	if err != nil {
		return err
	}
	w.Handle(scheduler.AnyType, func(ctx context.Context, t *scheduler.Task) error {
		return c.runTask(ctx, a, t)
	})
	if err := w.Start(ctx); err != nil {
		return err
	}
	a.log.Info().Strs("queues", c.Queue).Str("exec", c.Exec).Msg("worker started")
	<-ctx.Done()
	a.log.Info().Msg("stopping: running commands may finish")
	if err := w.Stop(context.Background()); err != nil {
		return err
	}
	a.log.Info().Msg("stopped")
	return nil
}

// skipRetryStatus is the exit status of a command whose failure is final.
const skipRetryStatus = 100

func (c *workerCmd) runTask(ctx context.Context, a *app, t *scheduler.Task) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", c.Exec)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = bytes.NewReader(t.Payload)
	var out, errOut limited
	out.n, errOut.n = c.MaxResult, 4096
	cmd.Stdout, cmd.Stderr = &out, io.MultiWriter(os.Stderr, &errOut)
	cmd.Env = append(os.Environ(), "MESH_TASK_ID="+t.ID, "MESH_TASK_TYPE="+t.Type, "MESH_TASK_QUEUE="+t.Queue, "MESH_TASK_ATTEMPT="+strconv.Itoa(t.Attempt))
	start := time.Now()
	err := cmd.Run()
	log := a.log.Info().Str("task", t.ID).Str("type", t.Type).Int("attempt", t.Attempt).Dur("took_ms", time.Since(start))
	if err == nil {
		log.Msg("task succeeded")
		t.SetResult(out.Bytes())
		return nil
	}
	msg := strings.TrimSpace(errOut.String())
	if msg == "" {
		msg = err.Error()
	} else {
		msg = err.Error() + ": " + msg
	}
	log.Str("error", msg).Msg("task failed")
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == skipRetryStatus {
		return scheduler.SkipRetry(errors.New(msg))
	}
	return errors.New(msg)
}

// limited keeps the first n bytes written to it. Its buffer is a field,
// not embedded: an embedded bytes.Buffer's ReadFrom, which io.Copy (and so
// exec.Cmd's output pipes) prefers to Write, would keep everything.
type limited struct {
	buf bytes.Buffer
	n   int
}

func (l *limited) Write(p []byte) (int, error) {
	if room := l.n - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// Bytes returns the bytes kept.
func (l *limited) Bytes() []byte { return l.buf.Bytes() }

// String returns the bytes kept as a string.
func (l *limited) String() string { return l.buf.String() }
