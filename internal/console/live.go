package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// interests are the events after which a page's live part is rendered again
// at once, rather than at the next refresh.
var interests = map[string]string{
	"overview":  "mesh.events.task.",
	"scheduler": "mesh.events.task.",
	"task":      "mesh.events.task.",
	"dead":      "mesh.events.task.",
	"locks":     "mesh.events.lock.",
	"cache":     "mesh.events.cache.",
}

// minGap bounds how often an event makes a page render again: the
// scheduler's task list scans the stored tasks, so a burst of task events
// must not turn into a burst of lists.
var minGap = map[string]time.Duration{
	"overview":  time.Second,
	"scheduler": time.Second,
	"task":      100 * time.Millisecond,
	"dead":      time.Second,
	"locks":     time.Second,
	"cache":     500 * time.Millisecond,
}

// sseStart begins a server-sent event stream.
func sseStart(w http.ResponseWriter) (http.Flusher, bool) {
	f, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "console: streaming unsupported", http.StatusInternalServerError)
		return nil, false
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return f, true
}

// sseSend writes one event; data may span lines.
func sseSend(w http.ResponseWriter, f http.Flusher, name string, data []byte) error {
	var b bytes.Buffer
	if name != "" {
		fmt.Fprintf(&b, "event: %s\n", name)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fmt.Fprintf(&b, "data: %s\n", strings.TrimRight(line, "\r"))
	}
	b.WriteString("\n")
	_, err := w.Write(b.Bytes())
	f.Flush()
	return err
}

// live streams the live part of a page (page=<name>, and the page's own
// query): rendered at once, then again at every refresh and after the
// events that concern the page, sent only when it changed.
func (c *Console) live(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("page")
	if c.views()[name] == nil || name == "events" {
		http.Error(w, "console: no live page "+name, http.StatusNotFound)
		return
	}
	f, ok := sseStart(w)
	if !ok {
		return
	}
	var kick <-chan event
	if prefix := interests[name]; prefix != "" {
		id := r.URL.Query().Get("id")
		ch, cancel := c.events.follow(16, func(ev event) bool {
			return strings.HasPrefix(ev.Subject, prefix) && (name != "task" || ev.ID == id)
		})
		defer cancel()
		kick = ch
	}
	refresh := time.NewTicker(c.cfg.Refresh)
	defer refresh.Stop()
	closed := c.events.done()
	var last []byte
	var lastAt time.Time
	var pending <-chan time.Time
	var kicked time.Time // the first event since the last render
	for {
		rctx := r.Context()
		if !kicked.IsZero() {
			rctx = context.WithValue(rctx, freshKey{}, kicked)
		}
		html, err := c.renderLive(rctx, name, r)
		if err != nil {
			c.log.Error().Err(err).Str("page", name).Msg("console: rendering the live part")
			html = []byte(`<p class="error">console: ` + err.Error() + `</p>`)
		}
		lastAt = time.Now()
		if !bytes.Equal(html, last) {
			if sseSend(w, f, "fragment", html) != nil {
				return
			}
			last = html
		} else if sseSend(w, f, "ping", nil) != nil { // a dead connection shows here
			return
		}
		pending, kicked = nil, time.Time{}
	wait:
		for {
			select {
			case <-r.Context().Done():
				return
			case <-closed:
				return
			case <-refresh.C:
				break wait
			case <-pending:
				break wait
			case <-kick:
				if kicked.IsZero() {
					kicked = time.Now()
				}
				if pending == nil {
					gap := minGap[name] - time.Since(lastAt)
					pending = time.After(max(gap, 50*time.Millisecond)) // gather a burst
				}
			}
		}
	}
}

// eventStream streams the mesh's events that match the filter: the recent
// ones the console kept, then each new one, as JSON.
func (c *Console) eventStream(w http.ResponseWriter, r *http.Request) {
	match, err := eventFilter(r.URL.Query().Get("filter"))
	if err != nil {
		http.Error(w, "console: "+err.Error(), http.StatusBadRequest)
		return
	}
	f, ok := sseStart(w)
	if !ok {
		return
	}
	ch, cancel := c.events.follow(256, match)
	defer cancel()
	closed := c.events.done()
	var lastSeq uint64
	recent := c.events.recent(200, match)
	if len(recent) > 0 {
		if sendEvents(w, f, recent) != nil {
			return
		}
		lastSeq = recent[len(recent)-1].Seq
	}
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	var batch []event
	var flush <-chan time.Time
	for {
		select {
		case <-r.Context().Done():
			return
		case <-closed:
			return
		case <-keepAlive.C:
			if sseSend(w, f, "ping", nil) != nil {
				return
			}
		case ev := <-ch:
			if ev.Seq <= lastSeq {
				continue // sent with the recent ones
			}
			batch = append(batch, ev)
			if len(batch) > maxBatch {
				batch = append(batch[:0], batch[len(batch)-maxBatch:]...)
			}
			if flush == nil {
				flush = time.After(batchEvery)
			}
		case <-flush:
			if sendEvents(w, f, batch) != nil {
				return
			}
			batch, flush = batch[:0], nil
		}
	}
}

// Events go to a page in batches: at most one every batchEvery, of at most
// maxBatch events (the latest), so that a busy mesh does not flood the
// browser.
const (
	batchEvery = 100 * time.Millisecond
	maxBatch   = 200
)

func sendEvents(w http.ResponseWriter, f http.Flusher, evs []event) error {
	b, err := json.Marshal(evs)
	if err != nil {
		return err
	}
	return sseSend(w, f, "mesh", b)
}

// eventsView is the events page: only its filter; the events come by the
// stream.
type eventsView struct {
	Filter string
	Err    error
}

func (c *Console) eventsView(_ context.Context, r *http.Request) (any, error) {
	v := &eventsView{Filter: r.URL.Query().Get("filter")}
	_, v.Err = eventFilter(v.Filter)
	return v, nil
}
