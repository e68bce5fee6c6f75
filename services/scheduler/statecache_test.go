package scheduler_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// The state cache stays within its bound in bytes and holds no results:
// 80 queued tasks through an instance whose cache has room for a few dozen
// small states, then run with 16 KiB results; every result is still served
// from the bucket.
func TestStateCacheBoundedInBytes(t *testing.T) {
	s := bustest.RunServer(t)
	const bound = 16 << 10
	serve(t, s.URL(), scheduler.Config{CacheMaxBytes: bound})
	c := client(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	stats := func() scheduler.CacheInfo {
		t.Helper()
		r, err := bus.Request[scheduler.QueuesRequest, scheduler.QueuesReply](ctx(t), nc, scheduler.SubjectQueues, scheduler.QueuesRequest{})
		if err != nil || r.Cache == nil {
			t.Fatalf("queues: %+v, %v", r, err)
		}
		ci := *r.Cache
		if ci.MaxBytes != bound || ci.Bytes > bound || ci.Instance == "" {
			t.Fatalf("cache = %+v, want at most %d bytes", ci, bound)
		}
		if ci.Entries > 0 && ci.Bytes/int64(ci.Entries) > 2<<10 {
			t.Fatalf("cache = %+v: %d bytes an entry", ci, ci.Bytes/int64(ci.Entries))
		}
		return ci
	}
	var ids []string
	for i := range 80 {
		id, err := c.Submit(ctx(t), scheduler.SubmitRequest{Queue: "big", Type: "r", Payload: fmt.Appendf(nil, "%02d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// 80 queued states do not fit: the oldest went.
	if ci := stats(); ci.Evicted == 0 || ci.Entries == 0 || ci.Entries >= 80 {
		t.Fatalf("cache = %+v: 80 queued tasks should have filled it", ci)
	}
	result := bytes.Repeat([]byte("r"), 16<<10-2) // with the prefix, MaxResult
	work(t, s.URL(), map[string]int{"big": 4}, map[string]scheduler.Handler{
		"r": func(_ context.Context, task *scheduler.Task) error {
			task.SetResult(append([]byte(string(task.Payload)), result...))
			return nil
		},
	})
	for i, id := range ids {
		info := waitDone(t, c, id)
		if info.State != scheduler.StateSucceeded || len(info.Result) != 2+len(result) || info.Result[:2] != fmt.Sprintf("%02d", i) {
			t.Fatalf("task %d: state %s, result of %d bytes %.8q", i, info.State, len(info.Result), info.Result)
		}
	}
	// The finished states carry their results: none is cached.
	if ci := stats(); ci.Entries != 0 {
		t.Fatalf("cache = %+v: only finished tasks with results are left", ci)
	}
}
