package scheduler

import (
	"context"
	"encoding/json"
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

// A list walks three parts in turn, each in its stream's order: the tasks
// in their queues (queued, running, failed: their messages
// mesh.tasks.<queue>.<id> in Stream), the delayed tasks not released yet
// (scheduled: their schedule or staging message in Stream), and the
// finished tasks (succeeded, dead, cancelled: their records in
// HistoryStream). A cursor names the part a page stopped in and the stream
// sequence of the last message it looked at there: "q<seq>", "s<seq>" or
// "h<seq>".
type listPart struct {
	key    byte
	stream string
	states []string
	filter func(queue string) string // queue "*": every queue
}

var listParts = []listPart{
	{'q', Stream, []string{StateQueued, StateRunning, StateFailed}, func(q string) string { return TaskSubjectPrefix + q + ".*" }},
	// mesh.scheduler.at.<queue>.<id> and mesh.scheduler.due.<queue>.<id>
	{'s', Stream, []string{StateScheduled}, func(q string) string { return "mesh.scheduler.*." + q + ".*" }},
	{'h', HistoryStream, []string{StateSucceeded, StateDead, StateCancelled}, func(q string) string { return HistorySubjectPrefix + q + ".*" }},
}

// holds tells whether the part lists tasks in state ("": any).
func (p *listPart) holds(state string) bool {
	return state == "" || slices.Contains(p.states, state)
}

// listScan bounds the messages a list page looks at: a page filtered by
// state may be short, or empty, and still have a next cursor.
const listScan = 2 * MaxListLimit

// parseListCursor reads a list cursor ("": the start).
func parseListCursor(c string) (part int, seq uint64, err error) {
	if c == "" {
		return 0, 0, nil
	}
	for i, p := range listParts {
		if c[0] == p.key {
			seq, err = strconv.ParseUint(c[1:], 10, 64)
			return i, seq, err
		}
	}
	return 0, 0, errors.New("unknown part")
}

func (s *Server) list(ctx context.Context, r *ListRequest) (*ListReply, error) {
	limit := r.Limit
	if limit == 0 {
		limit = 100
	}
	part, after, err := parseListCursor(r.Cursor)
	if err != nil {
		return nil, ErrInvalid.With("cursor %q is not one this service gave", r.Cursor)
	}
	queue := r.Queue
	if queue == "" {
		queue = "*"
	}
	l := lister{s: s, state: r.State, delivered: map[string]uint64{}}
	reply := &ListReply{Tasks: []TaskInfo{}}
	budget := listScan
	for ; part < len(listParts); part, after = part+1, 0 {
		p := listParts[part]
		if !p.holds(r.State) {
			continue
		}
		for {
			msgs, pending, err := readBatch(ctx, s.nc, p.stream, p.filter(queue), after+1, min(budget, limit-len(reply.Tasks)))
			if err != nil {
				return nil, fmt.Errorf("scheduler: listing tasks: %w", err)
			}
			for _, m := range msgs {
				after, budget = msgSeq(m), budget-1
				info, ok, err := l.task(ctx, p.key, m)
				if err != nil {
					return nil, fmt.Errorf("scheduler: listing tasks: %w", err)
				}
				if ok {
					reply.Tasks = append(reply.Tasks, info)
				}
			}
			if len(msgs) == 0 {
				break
			}
			if len(reply.Tasks) == limit || budget == 0 {
				more := pending > 0
				for _, later := range listParts[part+1:] {
					more = more || later.holds(r.State)
				}
				if more {
					reply.NextCursor = string(p.key) + strconv.FormatUint(after, 10)
				}
				return reply, nil
			}
			if pending == 0 {
				break
			}
		}
	}
	return reply, nil
}

// lister decides what a list page shows of each message it reads.
type lister struct {
	s         *Server
	state     string            // only this state; "": any
	delivered map[string]uint64 // queue -> the last stream sequence its consumer delivered
}

// task is the task of message m of a list part, if the page shows it.
// A task whose message its queue has delivered is read as status reads
// it (its record says whether it runs or waits for a retry).
func (l *lister) task(ctx context.Context, part byte, m *nats.Msg) (TaskInfo, bool, error) {
	info, _ := taskOfMsg(m.Header, storedAt(m))
	if info.ID == "" || info.Queue == "" {
		// Named by its subject: <prefix>.<queue>.<id>.
		tokens := strings.Split(m.Header.Get(jetstream.SubjectHeader), ".")
		info.Queue, info.ID = tokens[len(tokens)-2], tokens[len(tokens)-1]
	}
	switch part {
	case 'h':
		if json.Unmarshal(m.Data, &info) != nil || !terminal(info.State) {
			// A live task's record (failed, or queued by a requeue): the
			// task is listed from its queue.
			return info, false, nil
		}
		return info, l.state == "" || l.state == info.State, nil
	case 's':
		info.State = StateScheduled
		return info, true, nil
	}
	info.State = StateQueued
	delivered, err := l.deliveredSeq(ctx, info.Queue)
	if err != nil {
		return info, false, err
	}
	if msgSeq(m) > delivered && m.Header.Get(HeaderRecordSeq) == "" {
		return info, l.state == "" || l.state == StateQueued, nil
	}
	if l.state == StateQueued && msgSeq(m) <= delivered {
		return info, false, nil
	}
	info, err = l.s.find(ctx, info.ID)
	if errors.Is(err, ErrNotFound) || terminal(info.State) {
		return info, false, nil // finished since: listed with the history
	}
	return info, err == nil && (l.state == "" || l.state == info.State), err
}

// deliveredSeq is the last stream sequence the consumer of queue
// delivered, read once a page.
func (l *lister) deliveredSeq(ctx context.Context, queue string) (uint64, error) {
	if seq, ok := l.delivered[queue]; ok {
		return seq, nil
	}
	ci, err := l.s.tasks.Consumer(ctx, queue)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	l.delivered[queue] = ci.CachedInfo().Delivered.Stream
	return l.delivered[queue], nil
}

// readBatch reads up to n messages of stream on filter (wildcards allowed)
// from stream sequence from on, in order, in one direct get, and tells how
// many more there are.
func readBatch(ctx context.Context, nc *nats.Conn, stream, filter string, from uint64, n int) (msgs []*nats.Msg, pending uint64, err error) {
	req, _ := json.Marshal(struct {
		Seq     uint64 `json:"seq"`
		NextFor string `json:"next_by_subj"`
		Batch   int    `json:"batch"`
	}{from, filter, max(n, 1)})
	inbox := nc.NewInbox() // the connection's prefix: permissions may allow no other
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return nil, 0, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, bus.DefaultTimeout)
		defer cancel()
	}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, 0, fmt.Errorf("reading %s from %s: %w", filter, stream, err)
		}
		switch m.Header.Get("Status") {
		case "":
			msgs = append(msgs, m)
		case "204": // the end of the batch
			pending, _ = strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
			return msgs, pending, nil
		case "404":
			return msgs, 0, nil
		default:
			return nil, 0, fmt.Errorf("reading %s from %s: %s %s", filter, stream, m.Header.Get("Status"), m.Header.Get("Description"))
		}
	}
}

func (s *Server) listQueues(ctx context.Context, _ *QueuesRequest) (*QueuesReply, error) {
	byName := map[string]*QueueInfo{}
	lister := s.tasks.ListConsumers(ctx)
	for info := range lister.Info() {
		if want := queueConsumer(info.Name, 0, 0); info.Config.FilterSubject != want.FilterSubject || !slices.Equal(info.Config.FilterSubjects, want.FilterSubjects) {
			continue // the staging consumer, or one made by hand
		}
		byName[info.Name] = &QueueInfo{Name: info.Name, Depth: info.NumPending + uint64(info.NumAckPending), InFlight: info.NumAckPending, Paused: info.Paused}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("scheduler: listing queues: %w", err)
	}
	// Delayed tasks: mesh.scheduler.at.<queue>.<id> until their schedule
	// fires, then mesh.scheduler.due.<queue>.<id> until released.
	for _, prefix := range []string{atPrefix, duePrefix} {
		info, err := s.tasks.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
		if err != nil {
			return nil, fmt.Errorf("scheduler: %w", err)
		}
		for subj := range info.State.Subjects {
			q, _, _ := strings.Cut(strings.TrimPrefix(subj, prefix), ".")
			if qi := byName[q]; qi != nil {
				qi.Scheduled++
			}
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
	hinfo, err := s.history.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	reply := &QueuesReply{Queues: []QueueInfo{}, History: &HistoryInfo{
		Bytes: hinfo.State.Bytes, Records: hinfo.State.Msgs, MaxBytes: hinfo.Config.MaxBytes,
	}}
	if hinfo.State.Msgs > 0 {
		reply.History.Oldest = bus.Time{Time: hinfo.State.FirstTime}
	}
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
	// Each tick replaces one still waiting on the schedule's staging
	// subject (see tick).
	m.Header.Set("Nats-Schedule-Target", tickPrefix+r.Name)
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
	// The schedule, then a tick of it still waiting: no task comes of the
	// schedule after this.
	for _, subj := range []string{subj, tickPrefix + r.Name} {
		if err := s.tasks.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return nil, fmt.Errorf("scheduler: removing schedule %s: %w", r.Name, err)
		}
	}
	_ = s.events.Emit("unscheduled", map[string]any{"schedule": r.Name})
	return &ScheduleRmReply{Removed: true}, nil
}
