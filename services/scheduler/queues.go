package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

func (s *Server) list(ctx context.Context, r *ListRequest) (*ListReply, error) {
	limit := r.Limit
	if limit == 0 {
		limit = 100
	}
	var tasks []TaskInfo
	err := s.scan(ctx, jetstream.DeliverLastPerSubjectPolicy, time.Time{}, func(rec *record) bool {
		if (r.Queue == "" || rec.Queue == r.Queue) && (r.State == "" || rec.State == r.State) && rec.ID > r.Cursor {
			tasks = append(tasks, rec.TaskInfo)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("scheduler: listing tasks: %w", err)
	}
	slices.SortFunc(tasks, func(a, b TaskInfo) int { return strings.Compare(a.ID, b.ID) })
	reply := &ListReply{Tasks: tasks}
	if len(tasks) > limit {
		reply.Tasks = tasks[:limit]
		reply.NextCursor = tasks[limit-1].ID
	}
	if reply.Tasks == nil {
		reply.Tasks = []TaskInfo{}
	}
	return reply, nil
}

func (s *Server) listQueues(ctx context.Context, _ *QueuesRequest) (*QueuesReply, error) {
	byName := map[string]*QueueInfo{}
	lister := s.tasks.ListConsumers(ctx)
	for info := range lister.Info() {
		if info.Name == stagingConsumer || info.Config.FilterSubject != TaskSubjectPrefix+info.Name {
			continue
		}
		byName[info.Name] = &QueueInfo{Name: info.Name, Depth: info.NumPending, InFlight: info.NumAckPending, Paused: info.Paused}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("scheduler: listing queues: %w", err)
	}
	info, err := s.tasks.Info(ctx, jetstream.WithSubjectFilter(atPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	for subj := range info.State.Subjects {
		q, _, _ := strings.Cut(strings.TrimPrefix(subj, atPrefix), ".")
		if qi := byName[q]; qi != nil {
			qi.Scheduled++
		}
	}
	info, err = s.tasks.Info(ctx, jetstream.WithSubjectFilter(duePrefix+"*"))
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	for subj, n := range info.State.Subjects {
		if qi := byName[strings.TrimPrefix(subj, duePrefix)]; qi != nil {
			qi.Scheduled += int(n)
		}
	}
	dinfo, err := s.dead.Info(ctx, jetstream.WithSubjectFilter(DeadSubjectPrefix+"*"))
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	for subj, n := range dinfo.State.Subjects {
		if qi := byName[strings.TrimPrefix(subj, DeadSubjectPrefix)]; qi != nil {
			qi.Dead = n
		}
	}
	ci := s.states.stats()
	ci.Instance = s.svc.ID()
	reply := &QueuesReply{Queues: []QueueInfo{}, Cache: &ci, States: &StatesInfo{
		Bytes: s.clean.bytes.Load(), MaxBytes: s.cfg.StateMaxBytes, Cleaned: s.clean.deleted.Load(),
	}}
	for _, qi := range byName {
		reply.Queues = append(reply.Queues, *qi)
	}
	slices.SortFunc(reply.Queues, func(a, b QueueInfo) int { return strings.Compare(a.Name, b.Name) })
	return reply, nil
}

// pauseFor is how long a pause lasts: until resumed.
const pauseFor = 100 * 365 * 24 * time.Hour

// resumeDelay is how long after a resume request a queue delivers again.
const resumeDelay = 20 * time.Millisecond

func (s *Server) pause(ctx context.Context, r *PauseRequest) (*PauseReply, error) {
	res, err := s.js.PauseConsumer(ctx, Stream, r.Queue, time.Now().Add(pauseFor))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, ErrQueueNotFound.With("no queue %s", r.Queue)
	}
	if err != nil {
		return nil, fmt.Errorf("scheduler: pausing %s: %w", r.Queue, err)
	}
	_ = s.events.Emit("paused", map[string]any{"queue": r.Queue})
	return &PauseReply{Queue: r.Queue, Paused: res.Paused}, nil
}

func (s *Server) resume(ctx context.Context, r *PauseRequest) (*PauseReply, error) {
	// A plain resume (no pause deadline) leaves the pull requests workers
	// made while the queue was paused waiting until they are renewed (up
	// to their 30 s expiry): nats-server 2.15 wakes them only when a pause
	// deadline passes. So a resume is a pause that ends a moment later.
	_, err := s.js.PauseConsumer(ctx, Stream, r.Queue, time.Now().Add(resumeDelay))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, ErrQueueNotFound.With("no queue %s", r.Queue)
	}
	if err != nil {
		return nil, fmt.Errorf("scheduler: resuming %s: %w", r.Queue, err)
	}
	_ = s.events.Emit("resumed", map[string]any{"queue": r.Queue})
	return &PauseReply{Queue: r.Queue, Paused: false}, nil
}

func (s *Server) addSchedule(ctx context.Context, r *ScheduleRequest) (*ScheduleInfo, error) {
	if len(r.Payload) > s.cfg.MaxPayload {
		return nil, ErrPayloadTooLarge.With("payload of %d bytes exceeds the limit of %d", len(r.Payload), s.cfg.MaxPayload)
	}
	if err := s.ensureQueue(ctx, r.Queue); err != nil {
		return nil, err
	}
	info := ScheduleInfo{
		Name: r.Name, Queue: r.Queue, Type: r.Type, Cron: r.Cron, EveryMs: r.EveryMs, TimeZone: r.TimeZone,
		MaxRetries: s.maxRetries(r.MaxRetries), TimeoutMs: s.timeoutMs(r.TimeoutMs), CreatedAt: bus.Time{Time: time.Now()},
	}
	pattern := r.Cron
	if r.EveryMs != 0 {
		pattern = "@every " + (time.Duration(r.EveryMs) * time.Millisecond).String()
	}
	m := nats.NewMsg(everyPrefix + r.Name)
	m.Data = r.Payload
	m.Header.Set("Nats-Schedule", pattern)
	m.Header.Set("Nats-Schedule-Target", duePrefix+r.Queue)
	if r.TimeZone != "" {
		m.Header.Set("Nats-Schedule-Time-Zone", r.TimeZone)
	}
	// A new definition replaces the previous one.
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Header.Set(HeaderType, r.Type)
	m.Header.Set(HeaderQueue, r.Queue)
	m.Header.Set(HeaderMaxRetries, strconv.Itoa(info.MaxRetries))
	m.Header.Set(HeaderTimeout, strconv.FormatInt(info.TimeoutMs, 10))
	if r.EveryMs != 0 {
		m.Header.Set(headerEvery, strconv.FormatInt(r.EveryMs, 10))
	} else {
		m.Header.Set(headerCron, r.Cron)
	}
	if r.TimeZone != "" {
		m.Header.Set(headerTZ, r.TimeZone)
	}
	m.Header.Set(headerCreated, info.CreatedAt.String())
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && strings.Contains(strings.ToLower(apiErr.Description), "schedule") {
			return nil, ErrInvalidSchedule.With("the server refused the schedule %q: %s", pattern, apiErr.Description)
		}
		return nil, fmt.Errorf("scheduler: adding schedule %s: %w", r.Name, err)
	}
	_ = s.events.Emit("scheduled", map[string]any{"schedule": r.Name, "queue": r.Queue, "type": r.Type, "pattern": pattern})
	setNextRun(&info, info.CreatedAt.Time, time.Now())
	return &info, nil
}

func scheduleInfo(name string, h nats.Header) ScheduleInfo {
	info := ScheduleInfo{Name: name, Queue: h.Get(HeaderQueue), Type: h.Get(HeaderType), Cron: h.Get(headerCron), TimeZone: h.Get(headerTZ)}
	info.EveryMs, _ = strconv.ParseInt(h.Get(headerEvery), 10, 64)
	info.MaxRetries, _ = strconv.Atoi(h.Get(HeaderMaxRetries))
	info.TimeoutMs, _ = strconv.ParseInt(h.Get(HeaderTimeout), 10, 64)
	if t, err := time.Parse(time.RFC3339Nano, h.Get(headerCreated)); err == nil {
		info.CreatedAt = bus.Time{Time: t}
	}
	return info
}

func (s *Server) listSchedules(ctx context.Context, _ *ScheduleListRequest) (*ScheduleListReply, error) {
	info, err := s.tasks.Info(ctx, jetstream.WithSubjectFilter(everyPrefix+"*"))
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	reply := &ScheduleListReply{Schedules: []ScheduleInfo{}}
	now := time.Now()
	for subj := range info.State.Subjects {
		raw, err := s.tasks.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("scheduler: %w", err)
		}
		sched := scheduleInfo(strings.TrimPrefix(subj, everyPrefix), raw.Header)
		// The stream counts an interval from its own record of the schedule.
		setNextRun(&sched, raw.Time, now)
		reply.Schedules = append(reply.Schedules, sched)
	}
	slices.SortFunc(reply.Schedules, func(a, b ScheduleInfo) int { return strings.Compare(a.Name, b.Name) })
	return reply, nil
}

func (s *Server) rmSchedule(ctx context.Context, r *ScheduleRmRequest) (*ScheduleRmReply, error) {
	subj := everyPrefix + r.Name
	if _, err := s.tasks.GetLastMsgForSubject(ctx, subj); errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, ErrScheduleNotFound.With("no schedule %s", r.Name)
	} else if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	if err := s.tasks.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
		return nil, fmt.Errorf("scheduler: removing schedule %s: %w", r.Name, err)
	}
	_ = s.events.Emit("unscheduled", map[string]any{"schedule": r.Name})
	return &ScheduleRmReply{Removed: true}, nil
}
