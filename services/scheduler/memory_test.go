package scheduler_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// heapAlloc is the heap in use once garbage is collected.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// The service and the worker keep no results in memory: 400 tasks whose
// results are 64 KiB each (25 MiB in all) grow the heap of the process
// (service, worker and nats-server) by well under that, and every record
// holds its result truncated. Records are kept small (MaxResult 1 KiB), so
// that the store's own caches stay out of the figure.
func TestResultsBoundedInMemory(t *testing.T) {
	const n, size, maxResult, bound = 400, 64 << 10, 1 << 10, 8 << 20
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{MaxResult: maxResult})
	c := client(t, s.URL())
	w, err := scheduler.NewWorker(bustest.Connect(t, s.URL()), scheduler.WorkerConfig{
		Queues: map[string]int{"big": 8}, MaxResult: maxResult, ShutdownGrace: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("make", func(_ context.Context, task *scheduler.Task) error {
		task.SetResult(bytes.Repeat([]byte{'r'}, size)) // a new 64 KiB each time
		return nil
	})
	if err := w.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })

	run := func(prefix string, count int) []string {
		t.Helper()
		ids := make([]string, count)
		for i := range ids {
			ids[i] = fmt.Sprintf("%s-%d", prefix, i)
			if _, err := c.Submit(ctx(t), scheduler.SubmitRequest{ID: ids[i], Queue: "big", Type: "make"}); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range ids {
			if info := waitDone(t, c, id); info.State != scheduler.StateSucceeded || !info.ResultTruncated || len(info.Result) > maxResult {
				t.Fatalf("task %s: state %s, result of %d bytes, truncated %v; want succeeded, at most %d bytes, truncated",
					id, info.State, len(info.Result), info.ResultTruncated, maxResult)
			}
		}
		return ids
	}
	run("warm", 20) // connections, consumers and buffers in place
	before := heapAlloc()
	run("task", n)
	after := heapAlloc()
	growth := int64(after) - int64(before)
	t.Logf("heap %d → %d bytes: %+d for %d results of %d bytes", before, after, growth, n, size)
	if growth >= bound {
		t.Fatalf("the heap grew by %d bytes running %d tasks with results of %d bytes (%d in all): results are kept (bound %d)",
			growth, n, size, n*size, bound)
	}
}
