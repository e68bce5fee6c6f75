package console

import (
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
)

// eventBuffer is how many recent events the console keeps, for the events
// page's first screen and the task and lock pages' recent history.
const eventBuffer = 1000

// event is one event of mesh.events.>, as the console shows it.
type event struct {
	Seq     uint64          `json:"seq"`
	Subject string          `json:"subject"`
	Type    string          `json:"type"`
	Time    time.Time       `json:"time"`
	Source  string          `json:"source"`
	Data    json.RawMessage `json:"data,omitempty"`
	// ID, Queue and Name are the task id, the queue and the lock name the
	// event is about, when it says.
	ID    string `json:"-"`
	Queue string `json:"-"`
	Name  string `json:"-"`
}

// hub is the console's one subscription to mesh.events.>: it keeps the
// last events and hands each new one to the live pages that follow them.
type hub struct {
	mu     sync.Mutex
	sub    *nats.Subscription
	buf    []event // a ring of the last len(buf) events
	seq    uint64
	subs   map[chan event]func(event) bool
	closed chan struct{}
	last   map[string]time.Time // service -> when its last event came
}

func newHub(n int) *hub {
	return &hub{buf: make([]event, n), subs: map[chan event]func(event) bool{}, closed: make(chan struct{}), last: map[string]time.Time{}}
}

func (h *hub) start(nc *nats.Conn) error {
	sub, err := nc.Subscribe(bus.EventSubjects, h.receive)
	if err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return err
	}
	h.mu.Lock()
	h.sub = sub
	h.closed = make(chan struct{})
	h.mu.Unlock()
	return nil
}

// stop unsubscribes and ends the streams that follow the events.
func (h *hub) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sub != nil {
		_ = h.sub.Unsubscribe()
		h.sub = nil
		close(h.closed)
	}
}

// done is closed when the hub stops.
func (h *hub) done() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

func (h *hub) receive(m *nats.Msg) {
	ev := parseEvent(m.Subject, m.Data)
	service, _, _ := strings.Cut(strings.TrimPrefix(m.Subject, "mesh.events."), ".")
	h.mu.Lock()
	h.last[service] = time.Now()
	h.seq++
	ev.Seq = h.seq
	h.buf[int(h.seq-1)%len(h.buf)] = ev
	for ch, match := range h.subs {
		if match(ev) {
			select {
			case ch <- ev:
			default: // a slow reader misses events rather than slowing the hub
			}
		}
	}
	h.mu.Unlock()
}

// parseEvent reads an event of the subject from its JSON envelope (a
// message that is not one is shown as a string).
func parseEvent(subject string, data []byte) event {
	var env struct {
		Type   string          `json:"type"`
		Time   bus.Time        `json:"time"`
		Source string          `json:"source"`
		Data   json.RawMessage `json:"data"`
	}
	ev := event{Subject: subject}
	if json.Unmarshal(data, &env) == nil {
		ev.Type, ev.Time, ev.Source, ev.Data = env.Type, env.Time.Time, env.Source, env.Data
		var about struct {
			ID    string `json:"id"`
			Queue string `json:"queue"`
			Name  string `json:"name"`
		}
		_ = json.Unmarshal(env.Data, &about)
		ev.ID, ev.Queue, ev.Name = about.ID, about.Queue, about.Name
	} else {
		ev.Data, _ = json.Marshal(string(data))
	}
	if ev.Type == "" {
		ev.Type = strings.TrimPrefix(subject, "mesh.events.")
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	return ev
}

// lastOf returns when the last event of a service came (zero: none since
// the hub started).
func (h *hub) lastOf(service string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last[service]
}

// recent returns the kept events that match, oldest first, at most n.
func (h *hub) recent(n int, match func(event) bool) []event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []event
	for s := h.seq; s > 0 && h.seq-s < uint64(len(h.buf)) && len(out) < n; s-- {
		if ev := h.buf[int(s-1)%len(h.buf)]; match(ev) {
			out = append(out, ev)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// follow returns a channel of the new events that match, until cancel.
func (h *hub) follow(buffer int, match func(event) bool) (<-chan event, func()) {
	ch := make(chan event, buffer)
	h.mu.Lock()
	h.subs[ch] = match
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

// errFilter is a filter the events page cannot read.
var errFilter = errors.New("a filter is a subject pattern (task.*, mesh.events.lock.>) or words to find in the events")

// eventFilter reads the events page's filter: a subject pattern, with or
// without its mesh.events. prefix (task.*, lock.>), or else words that each
// event must contain (a task id, a lock name).
func eventFilter(f string) (func(event) bool, error) {
	f = strings.TrimSpace(f)
	if f == "" {
		return func(event) bool { return true }, nil
	}
	if strings.ContainsAny(f, "*>") || strings.HasPrefix(f, "mesh.") {
		pattern := f
		if !strings.HasPrefix(pattern, "mesh.") {
			pattern = "mesh.events." + pattern
		}
		toks := strings.Split(pattern, ".")
		for i, t := range toks {
			if t == "" || (t == ">" && i != len(toks)-1) {
				return nil, errFilter
			}
		}
		return func(ev event) bool { return subjectMatch(toks, ev.Subject) }, nil
	}
	words := strings.Fields(strings.ToLower(f))
	return func(ev event) bool {
		text := strings.ToLower(ev.Subject + " " + ev.Source + " " + string(ev.Data))
		for _, w := range words {
			if !strings.Contains(text, w) {
				return false
			}
		}
		return true
	}, nil
}

// subjectMatch matches a subject against a NATS pattern split in tokens.
func subjectMatch(pattern []string, subject string) bool {
	toks := strings.Split(subject, ".")
	for i, p := range pattern {
		if p == ">" {
			return len(toks) > i
		}
		if i >= len(toks) || (p != "*" && p != toks[i]) {
			return false
		}
	}
	return len(toks) == len(pattern)
}
