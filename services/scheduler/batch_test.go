package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// A batch submit accepts or refuses each task on its own; sent again
// with the same ids, it makes no second task; every accepted task runs
// once.
func TestSubmitMany(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	c := client(t, s.URL())
	var reqs []scheduler.SubmitRequest
	for i := range 1100 { // two batches
		reqs = append(reqs, scheduler.SubmitRequest{Queue: "bulk", Type: "n", Payload: fmt.Appendf(nil, "%d", i)})
	}
	reqs[7].Queue = "no.dots"               // refused: invalid_queue
	reqs[1050].Type = ""                    // refused: invalid
	reqs[3].UniqueKey = "one"               // one of 3 and 4 is accepted,
	reqs[4].UniqueKey = "one"               // the other refused: duplicate
	reqs[5].ID, reqs[6].ID = "same", "same" // the second is the same submit: one task
	results, err := c.SubmitMany(ctx(t), reqs)
	if err != nil || len(results) != len(reqs) {
		t.Fatalf("SubmitMany = %d results, %v", len(results), err)
	}
	want := map[string]bool{}
	for i, r := range results {
		switch i {
		case 7:
			if !errors.Is(r.Err(), scheduler.ErrInvalidQueue) {
				t.Fatalf("task 7: %+v", r)
			}
		case 1050:
			if !errors.Is(r.Err(), scheduler.ErrInvalid) {
				t.Fatalf("task 1050: %+v", r)
			}
		case 3, 4:
			// The same unique key: one is accepted, the other refused
			// naming it (they are submitted at once, either may win).
			if r.Err() == nil {
				want[r.ID] = true
				continue
			}
			other := results[7-i]
			if id, ok := scheduler.DuplicateID(r.Err()); !ok || other.Err() != nil || id != other.ID {
				t.Fatalf("task %d: %+v, the other %+v", i, r, other)
			}
		default:
			if r.Err() != nil || r.ID == "" || r.State != scheduler.StateQueued {
				t.Fatalf("task %d: %+v", i, r)
			}
			want[r.ID] = true
		}
	}
	if results[5].ID != "same" || results[6].ID != "same" || len(want) != len(reqs)-4 {
		t.Fatalf("ids: 5 %q, 6 %q, %d distinct accepted", results[5].ID, results[6].ID, len(want))
	}
	// Sent again with the same ids (as after a lost reply): no new task.
	again := make([]scheduler.SubmitRequest, len(reqs))
	for i, r := range reqs {
		r.ID = results[i].ID
		if r.ID == "" {
			r.ID = fmt.Sprintf("refused-%d", i)
		}
		again[i] = r
	}
	results2, err := c.SubmitMany(ctx(t), again[:20])
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results2 {
		if want[again[i].ID] && (r.Err() != nil || r.ID != again[i].ID) {
			t.Fatalf("task %d sent again: %+v", i, r)
		}
	}
	var mu sync.Mutex
	ran := map[string]int{}
	work(t, s.URL(), map[string]int{"bulk": 8}, map[string]scheduler.Handler{
		"n": func(_ context.Context, task *scheduler.Task) error {
			mu.Lock()
			ran[task.ID]++
			mu.Unlock()
			return nil
		},
	})
	// A thousand tasks take a while on a loaded machine with -race.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(ran)
		mu.Unlock()
		if n == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d tasks ran", n, len(want))
		}
	}
	queueEmpty(t, s.URL(), "bulk")
	mu.Lock()
	defer mu.Unlock()
	for id, n := range ran {
		if !want[id] || n != 1 {
			t.Fatalf("task %s ran %d times (accepted: %v)", id, n, want[id])
		}
	}

	// A batch that is not one is refused as a whole.
	nc := bustest.Connect(t, s.URL())
	for _, body := range []string{
		`{"tasks":[]}`,
		`{"queue":"bulk","tasks":[{"queue":"bulk","type":"n"}]}`,
		fmt.Sprintf(`{"tasks":[%s{"queue":"bulk","type":"n"}]}`, repeat(`{"queue":"bulk","type":"n"},`, scheduler.MaxBatch)),
	} {
		_, err := bus.RequestMsg(ctx(t), nc, natsMsg(scheduler.SubjectSubmit, body))
		if !errors.Is(err, scheduler.ErrInvalid) {
			t.Fatalf("%.60s...: %v, want invalid", body, err)
		}
	}
}

func natsMsg(subject, body string) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: []byte(body)}
}

func repeat(s string, n int) string { return strings.Repeat(s, n) }
