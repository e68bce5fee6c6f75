package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/bench/internal/machine"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler"
)

// batchEnqueuer is a system with a batch submit (SubmitMany).
type batchEnqueuer interface {
	enqueueBatch(ctx context.Context, queue string, payloads [][]byte) (failed int, err error)
}

// serviceEnqueuer is a system reached by plain NATS requests in JSON (the
// service path a client in any language takes, as `nats req` does).
type serviceEnqueuer interface {
	enqueueService(ctx context.Context, nc *nats.Conn, queue string, payload []byte) error
}

func (m *meshSystem) enqueueBatch(ctx context.Context, queue string, payloads [][]byte) (int, error) {
	reqs := make([]scheduler.SubmitRequest, len(payloads))
	for i, p := range payloads {
		reqs[i] = scheduler.SubmitRequest{Queue: queue, Type: "noop", Payload: p}
	}
	rs, err := m.client.SubmitMany(ctx, reqs)
	failed := len(payloads) - len(rs)
	for _, r := range rs {
		if r.Err() != nil {
			failed++
		}
	}
	return failed, err
}

func (m *meshSystem) enqueueService(ctx context.Context, nc *nats.Conn, queue string, payload []byte) error {
	body, err := json.Marshal(map[string]any{"queue": queue, "type": "noop", "payload": fmt.Sprintf("%x", payload)})
	if err != nil {
		return err
	}
	_, err = bus.RequestMsg(ctx, nc, &nats.Msg{Subject: scheduler.SubjectSubmit, Data: body})
	return err
}

// measureBatch enqueues n tasks in batches of size from producers
// goroutines and returns tasks/s and the failures.
func measureBatch(ctx context.Context, b batchEnqueuer, queue string, n, size, producers int) (float64, int, error) {
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for range producers {
		wg.Go(func() {
			for {
				end := next.Add(int64(size))
				from := end - int64(size)
				if from >= int64(n) {
					return
				}
				payloads := make([][]byte, 0, size)
				for i := from; i < min(end, int64(n)); i++ {
					payloads = append(payloads, stamp(time.Now()))
				}
				f, err := b.enqueueBatch(ctx, queue, payloads)
				failed.Add(int64(f))
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	rate := float64(n) / time.Since(start).Seconds()
	if err, _ := firstErr.Load().(error); err != nil {
		return rate, int(failed.Load()), err
	}
	return rate, int(failed.Load()), nil
}

// measureService enqueues n tasks by JSON requests from producers
// goroutines, on a connection of its own.
func measureService(ctx context.Context, url string, s serviceEnqueuer, queue string, n, producers int) (float64, int, error) {
	nc, err := nats.Connect(url, nats.Name("bench-scheduler-service-path"))
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	var next, failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range producers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := s.enqueueService(rctx, nc, queue, stamp(time.Now())); err != nil {
					failed.Add(1)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), int(failed.Load()), nil
}

// cpuClock is the CPU time (user + system) of this process and of the
// server processes of -server-pids, read from /proc.
type cpuClock struct{ pids []int }

func (c cpuClock) now() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	total := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	for _, pid := range c.pids {
		if d, err := machine.ProcCPU(pid); err == nil {
			total += d
		}
	}
	return total
}

func parsePids(s string) ([]int, error) {
	var pids []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("-server-pids: %q: %w", f, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}
