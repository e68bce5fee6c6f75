package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// EventStream is the stream that keeps the mesh's events.
const EventStream = "MESH_EVENTS"

// EventSubjects is the subject filter of every event, live or stored.
const EventSubjects = "mesh.events.>"

// TaskEventSubjects are the scheduler's task events. EventStream stores
// them only when EventStreamConfig.StoreTaskEvents says so: the scheduler
// keeps each task's outcome in its own history, and storing every task's
// events as well would cost its hot path several stored writes per task.
const TaskEventSubjects = "mesh.events.task.>"

// storedEvents are the services whose events EventStream always stores. A
// service that emits events of its own is listed here, or its events are
// live only.
var storedEvents = []string{"cache", "lock"}

// Event is the JSON envelope of every event, published on
// mesh.events.<service>.<what>.
type Event struct {
	Type   string `json:"type"`           // "<service>.<what>", e.g. "lock.acquired"
	Time   Time   `json:"time"`           // when it happened
	Source string `json:"source"`         // the instance that emitted it
	Data   any    `json:"data,omitempty"` // what happened, service-specific
}

// Events publishes the events of one service instance.
type Events struct {
	nc      *nats.Conn
	service string
	source  string
}

// NewEvents returns a publisher of events of service, signed with source
// (usually the service instance's id).
func NewEvents(nc *nats.Conn, service, source string) *Events {
	return &Events{nc: nc, service: service, source: source}
}

// EventSubject is the subject of an event.
func EventSubject(service, what string) string {
	return "mesh.events." + service + "." + what
}

// Emit publishes an event. It does not wait for the stream to store it: an
// event is a notification, and a state change never fails because the event
// stream is away.
func (e *Events) Emit(what string, data any) error {
	b, err := json.Marshal(Event{
		Type:   e.service + "." + what,
		Time:   Time{time.Now()},
		Source: e.source,
		Data:   data,
	})
	if err != nil {
		return fmt.Errorf("bus: encoding %s.%s event: %w", e.service, what, err)
	}
	return e.nc.Publish(EventSubject(e.service, what), b)
}

// EventStreamConfig configures EventStream.
type EventStreamConfig struct {
	MaxAge   time.Duration // how long events are kept; zero: 24h
	MaxBytes int64         // bound on the stream's size; zero: 1 GiB
	Replicas int           // zero: 1
	// StoreTaskEvents stores the task events (TaskEventSubjects) too
	// (mesh up|serve --store-task-events); zero: they are live only, heard
	// by whoever subscribes when they happen.
	StoreTaskEvents bool
}

// Subjects are the subjects EventStream stores under cfg: the events of
// every service (mesh.events.cache.>, mesh.events.lock.>), and the task
// events when cfg.StoreTaskEvents.
func (cfg EventStreamConfig) Subjects() []string {
	var subjects []string
	for _, s := range storedEvents {
		subjects = append(subjects, EventSubject(s, ">"))
	}
	if cfg.StoreTaskEvents {
		subjects = append(subjects, TaskEventSubjects)
	}
	return subjects
}

// EnsureEventStream creates EventStream (limits retention), or updates it to
// cfg when it exists: its subjects become cfg.Subjects() (the events it
// stored before stay until they age out). Every process that ensures the
// stream should be given the same cfg, or the last one started decides.
func EnsureEventStream(ctx context.Context, js jetstream.JetStream, cfg EventStreamConfig) (jetstream.Stream, error) {
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 24 * time.Hour
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 30
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        EventStream,
		Description: "Lifecycle events of the mesh services",
		Subjects:    cfg.Subjects(),
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: ensuring stream %s: %w", EventStream, err)
	}
	return s, nil
}
