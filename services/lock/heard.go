package lock

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
)

// heard follows the expired events of every instance, so that an instance
// whose compare-and-set to tell an expiry lost (another instance replaced
// the server's marker first, and emits the event) can wait until that event
// is out before it grants the lock to the next holder: the expired event
// then comes before the acquired one on every subscriber of a single NATS
// server, and in MESH_EVENTS.
type heard struct {
	mu      sync.Mutex
	seen    map[string]time.Time     // name/token -> when its expired event came
	waiting map[string]chan struct{} // name/token -> closed when it comes
	sub     *nats.Subscription
}

// heardKeep is how long an expired event is remembered: longer than any
// compare-and-set takes to be answered.
const heardKeep = time.Minute

func expiryKey(name string, token uint64) string { return name + "/" + strconv.FormatUint(token, 10) }

// listen subscribes to the expired events on nc.
func (h *heard) listen(nc *nats.Conn) error {
	h.seen, h.waiting = map[string]time.Time{}, map[string]chan struct{}{}
	sub, err := nc.Subscribe(bus.EventSubject("lock", "expired"), func(m *nats.Msg) {
		var e struct {
			Data struct {
				Name  string `json:"name"`
				Token uint64 `json:"token"`
			} `json:"data"`
		}
		if json.Unmarshal(m.Data, &e) == nil {
			h.heard(expiryKey(e.Data.Name, e.Data.Token))
		}
	})
	if err != nil {
		return err
	}
	h.sub = sub
	return nc.Flush() // subscribed before any expiry this instance tells
}

// stop unsubscribes and lets every wait return.
func (h *heard) stop() {
	if h.sub != nil {
		_ = h.sub.Unsubscribe()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, ch := range h.waiting {
		close(ch)
		delete(h.waiting, key)
	}
	h.waiting = nil // and waits to come return at once
}

func (h *heard) heard(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen == nil {
		return
	}
	now := time.Now()
	for k, at := range h.seen {
		if now.Sub(at) > heardKeep {
			delete(h.seen, k)
		}
	}
	h.seen[key] = now
	if ch := h.waiting[key]; ch != nil {
		close(ch)
		delete(h.waiting, key)
	}
}

// wait waits until the expired event of key has been heard, or ctx ends.
func (h *heard) wait(ctx context.Context, key string) {
	h.mu.Lock()
	if _, ok := h.seen[key]; ok || h.waiting == nil {
		h.mu.Unlock()
		return
	}
	ch := h.waiting[key]
	if ch == nil {
		ch = make(chan struct{})
		h.waiting[key] = ch
	}
	h.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		h.mu.Lock()
		if h.waiting[key] == ch {
			delete(h.waiting, key)
		}
		h.mu.Unlock()
	}
}
