package lock_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
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
	// A consumer from the message after the last one read. After a fault
	// the cluster may take a moment to answer again, and may lose the
	// consumer: it is made again.
	var next uint64 = 1
	consumer := func() jetstream.Consumer {
		for {
			cons, err := js.OrderedConsumer(ctx, bus.EventStream, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{bus.EventSubject("lock", ">")},
				DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
				OptStartSeq:    next,
			})
			if err == nil {
				return cons
			}
			if ctx.Err() != nil {
				t.Fatalf("reading %s: %v", bus.EventStream, err)
			}
			time.Sleep(100 * time.Millisecond) // polling for the cluster
		}
	}
	cons := consumer()
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
			if ctx.Err() != nil {
				t.Fatalf("reading %s: %v", bus.EventStream, err)
			}
			time.Sleep(100 * time.Millisecond) // polling for the cluster
			cons = consumer()
			continue
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if meta, err := m.Metadata(); err == nil {
				next = meta.Sequence.Stream + 1
			}
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
			if ctx.Err() != nil {
				t.Fatalf("reading %s: %v", bus.EventStream, err)
			}
			time.Sleep(100 * time.Millisecond) // polling for the cluster
			cons = consumer()
			continue
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

// TestLinearizabilityResolvesLostGrant: a waiter whose caller gave up is
// granted the lock when its holder releases it; the caller never hears of
// it. The acquired event resolves the unknown outcome into a grant with its
// token, which then holds the lock: a later try is refused, and a grant
// after it is a double grant the model rejects.
func TestLinearizabilityResolvesLostGrant(t *testing.T) {
	s := bustest.RunServer(t)
	js := bustest.JetStream(t, bustest.Connect(t, s.URL()))
	if _, err := bus.EnsureEventStream(ctx(t), js, bus.EventStreamConfig{}); err != nil {
		t.Fatal(err)
	}
	serve(t, s.URL())
	h := &linHistory{start: time.Now()}
	tap := linTapJoins(t, js, h)
	c := lock.NewClient(bustest.Connect(t, s.URL()))
	nc := bustest.Connect(t, s.URL())
	const name = "lin.lost"
	acquire := func(owner string) linInput {
		return linInput{op: linAcquire, name: name, limit: 1, owner: owner}
	}

	in := acquire("holder")
	call := h.now()
	holder, err := c.TryAcquire(ctx(t), name, lock.Options{TTL: linTTL, Owner: in.owner})
	if err != nil {
		t.Fatal(err)
	}
	h.add(in, call, linOutput{result: linGranted, token: holder.Token()}, h.now())

	// The waiter's caller gives up after 300 ms; the service would wait 20 s.
	in = acquire("waiter")
	in.wait = 20 * time.Second
	call = h.now()
	req := lock.AcquireRequest{Name: name, Owner: in.owner, TTLms: linTTL.Milliseconds(), WaitMs: in.wait.Milliseconds(),
		Deadline: &bus.Time{Time: time.Now().Add(30 * time.Second)}}
	wctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = bus.Request[lock.AcquireRequest, lock.AcquireReply](wctx, nc, lock.SubjectAcquire, req)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the waiter's request: %v, want a timeout", err)
	}
	h.add(in, call, linOutput{result: linUnknown, err: err.Error()}, h.now())
	// The waiter stands in line.
	for inLine, since := false, time.Now(); !inLine; {
		if time.Since(since) > bustest.Scale(10*time.Second) {
			t.Fatal("the waiter's key is not in line")
		}
		info, err := c.Inspect(ctx(t), name)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range info.Waiters {
			inLine = inLine || w.Owner == "waiter"
		}
		if !inLine {
			time.Sleep(10 * time.Millisecond) // polling for the key
		}
	}

	in = linInput{op: linRelease, name: name, limit: 1, token: holder.Token()}
	call = h.now()
	if err := holder.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	h.add(in, call, linOutput{result: linReleased}, h.now())

	// The lock passes to the waiter, whose key was first in line: a try is
	// refused.
	in = acquire("try")
	call = h.now()
	if _, err := c.TryAcquire(ctx(t), name, lock.Options{TTL: linTTL, Owner: in.owner}); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("a try after the release: %v, want ErrLocked", err)
	}
	h.add(in, call, linOutput{result: linBusy}, h.now())

	joins := tap.result()
	events, missing := linReadEvents(t, js, h, 5*time.Second)
	p := linParams{events: events, joins: joins, slack: linClockSlack.Nanoseconds(), gap: linGapDefault.Nanoseconds()}
	if missing > 0 {
		t.Fatalf("%d events missing", missing)
	}
	ops, rep, err := linPrepare(h.ops, p)
	if err != nil {
		t.Fatal(err)
	}
	if rep.resolvedGrants != 1 || rep.unknown != 0 {
		t.Fatalf("resolved %d grants, %d unknown left; want the waiter's grant resolved", rep.resolvedGrants, rep.unknown)
	}
	var token uint64
	for _, op := range ops {
		if in := op.Input.(linInput); in.owner == "waiter" {
			token = op.Output.(linOutput).token
			if token <= holder.Token() || op.Return == math.MaxInt64 {
				t.Fatalf("the waiter resolved to token %d, returning at %d; want a token above %d and a return time", token, op.Return, holder.Token())
			}
		}
	}
	if res := porcupine.CheckOperations(linModel.ToModel(), ops); !res {
		t.Fatal("the resolved history is not linearizable")
	}
	// A grant after the try, while the waiter holds: rejected.
	late := h.now()
	bad := append(slices.Clone(h.ops), porcupine.Operation{Input: acquire("intruder"), Call: late, Output: linOutput{result: linGranted, token: token + 1}, Return: late + 1})
	if ops, _, err = linPrepare(bad, p); err != nil {
		t.Fatal(err)
	}
	if porcupine.CheckOperations(linModel.ToModel(), ops) {
		t.Fatal("a grant while the resolved waiter holds the lock is accepted")
	}
}
