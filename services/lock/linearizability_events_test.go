package lock_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/lock"
)

// What a lock history reads from the mesh besides its clients' answers: the
// joins of the waiters' keys, tapped from the bucket's stream while the
// history runs, and the lock events of MESH_EVENTS, read after it.

// linJoinTap records when the bucket's stream stored the first write of each
// owner's key (a key's record names its owner, unique per acquire).
type linJoinTap struct {
	h     *linHistory
	cc    jetstream.ConsumeContext
	once  sync.Once
	mu    sync.Mutex
	joins map[string]int64
}

// linTapJoins starts a tap on the bucket's stream (which must exist).
func linTapJoins(t *testing.T, js jetstream.JetStream, h *linHistory) *linJoinTap {
	t.Helper()
	tap := &linJoinTap{h: h, joins: map[string]int64{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, "KV_"+lock.Bucket, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"$KV." + lock.Bucket + ".w.>"}})
	if err != nil {
		t.Fatalf("tapping the bucket: %v", err)
	}
	tap.cc, err = cons.Consume(func(m jetstream.Msg) {
		var rec struct {
			Owner string `json:"owner"`
		}
		meta, err := m.Metadata()
		if err != nil || len(m.Data()) == 0 || json.Unmarshal(m.Data(), &rec) != nil || rec.Owner == "" {
			return // a purge marker, or not a key of this history
		}
		at := meta.Timestamp.Sub(h.start).Nanoseconds()
		tap.mu.Lock()
		if prev, ok := tap.joins[rec.Owner]; !ok || at < prev {
			tap.joins[rec.Owner] = at
		}
		tap.mu.Unlock()
	}, jetstream.PullExpiry(2*time.Second), jetstream.PullHeartbeat(500*time.Millisecond)) // quick to notice a lost consumer
	if err != nil {
		t.Fatalf("tapping the bucket: %v", err)
	}
	t.Cleanup(tap.stop)
	return tap
}

func (tap *linJoinTap) stop() {
	tap.once.Do(func() {
		tap.cc.Stop()
		<-tap.cc.Closed()
	})
}

// result stops the tap and returns the joins.
func (tap *linJoinTap) result() map[string]int64 {
	tap.stop()
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return tap.joins
}

// linReadEvents reads the lock events of MESH_EVENTS. Events are published
// without waiting for the stream: it reads until every grant and release
// whose answer a client received has its event, or until within passes
// (events are lost with a connection or the event stream, in a fault), and
// returns the number of those grants and releases whose event is missing.
func linReadEvents(t *testing.T, js jetstream.JetStream, h *linHistory, within time.Duration) (events []linEvent, missing int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within+10*time.Second)
	defer cancel()
	// After a fault, the cluster may take a moment to answer again.
	var cons jetstream.Consumer
	var err error
	for {
		cons, err = js.OrderedConsumer(ctx, bus.EventStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.EventSubject("lock", ">")}})
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling for the cluster
	}
	if err != nil {
		t.Fatalf("reading %s: %v", bus.EventStream, err)
	}
	// What the events must show at least.
	wantGrants := map[string]bool{} // owners
	wantReleases := map[uint64]bool{}
	for _, op := range h.ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		switch {
		case in.op == linAcquire && out.result == linGranted:
			wantGrants[in.owner] = true
		case in.op == linRelease && out.result == linReleased:
			wantReleases[in.token] = true
		}
	}
	deadline := time.Now().Add(within)
	for {
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			t.Fatalf("reading %s: %v", bus.EventStream, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var ev struct {
				Type string   `json:"type"`
				Time bus.Time `json:"time"`
				Data struct {
					Name  string `json:"name"`
					Owner string `json:"owner"`
					Token uint64 `json:"token"`
				} `json:"data"`
			}
			if err := json.Unmarshal(m.Data(), &ev); err != nil {
				t.Fatalf("an event of %s: %v: %s", m.Subject(), err, m.Data())
			}
			e := linEvent{what: strings.TrimPrefix(ev.Type, "lock."), name: ev.Data.Name, owner: ev.Data.Owner, token: ev.Data.Token, at: ev.Time.Sub(h.start).Nanoseconds()}
			events = append(events, e)
			switch e.what {
			case "acquired":
				delete(wantGrants, e.owner)
			case "released":
				delete(wantReleases, e.token)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			t.Fatalf("reading %s: %v", bus.EventStream, err)
		}
		if n > 0 {
			continue
		}
		if len(wantGrants)+len(wantReleases) == 0 {
			return events, 0
		}
		if time.Now().After(deadline) {
			t.Logf("%s lacks the events of %d grants and %d releases that clients saw", bus.EventStream, len(wantGrants), len(wantReleases))
			return events, len(wantGrants) + len(wantReleases)
		}
		time.Sleep(50 * time.Millisecond) // polling for events not stored yet
	}
}
