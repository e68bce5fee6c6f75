package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/cache"
)

// handoff measures the active hand-off: n keys of cfg.size bytes on 3 nodes
// (R = 2), each node on a connection of its own in this process; the time
// until every node has handed off everything after a 4th node joins, then
// after one of the first three crashes (its connection closed, no leave),
// and the GET and SET rates of 8 + 8 clients' goroutines meanwhile beside
// their steady rate.
func handoff(ctx context.Context, cfg config, n int, w io.Writer) error {
	var nodes []*handoffNode
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := len(nodes) - 1; i >= 0; i-- {
			nodes[i].stop(sctx)
		}
	}()
	for i := range 3 {
		nd, err := startHandoffNode(ctx, cfg.natsURL, fmt.Sprintf("h%d", i))
		if err != nil {
			return err
		}
		nodes = append(nodes, nd)
	}
	cli, err := connect(ctx, cfg.natsURL, "bench-handoff-client")
	if err != nil {
		return err
	}
	defer cli.Close()
	client, err := cache.NewClient(cli, cache.ClientConfig{})
	if err == nil {
		err = client.Start(ctx)
	}
	if err != nil {
		return err
	}
	defer client.Close(context.Background())
	if err := handoffSettled(ctx, cli, ids(nodes), time.Minute); err != nil {
		return err
	}
	m := &mesh{client: client}
	start := time.Now()
	if err := m.fill(ctx, n, cfg.size); err != nil {
		return err
	}
	fmt.Fprintf(w, "filled %d keys of %d B (R = 2, 3 nodes) in %v\n\n", n, cfg.size, time.Since(start).Round(time.Millisecond))

	fmt.Fprintln(w, "| phase | time to hand off | GET/s | SET/s | keys handed off | keys received |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	// The nodes' figures are totals: a row shows what the phase added.
	before := map[string]cache.NodeStats{}
	row := func(phase string, d time.Duration, l loadRates, live []*handoffNode) {
		var out, in int64
		for _, nd := range live {
			if st, err := nodeFigures(cli, nd.id); err == nil {
				out += st.HandedOff - before[nd.id].HandedOff
				in += st.Received - before[nd.id].Received
				before[nd.id] = st
			}
		}
		took := "-"
		if d > 0 {
			took = d.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "| %s | %s | %.0f | %.0f | %d | %d |\n", phase, took, l.gets, l.sets, out, in)
	}
	steady := measure(ctx, client, n, cfg.size, func() error { time.Sleep(cfg.duration); return nil })
	row("steady (3 nodes)", 0, steady, nodes)

	var took time.Duration
	during := measure(ctx, client, n, cfg.size, func() error {
		t0 := time.Now()
		nd, err := startHandoffNode(ctx, cfg.natsURL, "h3")
		if err != nil {
			return err
		}
		nodes = append(nodes, nd)
		err = handoffSettled(ctx, cli, ids(nodes), 10*time.Minute)
		took = time.Since(t0)
		return err
	})
	if during.err != nil {
		return during.err
	}
	row("a 4th node joins", took, during, nodes)

	during = measure(ctx, client, n, cfg.size, func() error {
		t0 := time.Now()
		nodes[0].nc.Close() // a crash: no leave
		err := handoffSettled(ctx, cli, ids(nodes[1:]), 10*time.Minute)
		took = time.Since(t0)
		return err
	})
	if during.err != nil {
		return during.err
	}
	row("a node crashes (seen after 3 missed heartbeats of 1 s)", took, during, nodes[1:])

	// Every key is still there.
	var lost atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := g; i < n; i += 16 {
				if _, err := client.Get(ctx, key(i)); err != nil {
					lost.Add(1)
				}
			}
		})
	}
	wg.Wait()
	fmt.Fprintf(w, "\nkeys lost: %d of %d\n", lost.Load(), n)
	return nil
}

type handoffNode struct {
	id string
	nc *nats.Conn
	s  *cache.Server
}

func startHandoffNode(ctx context.Context, url, id string) (*handoffNode, error) {
	nc, err := connect(ctx, url, "bench-handoff-"+id)
	if err != nil {
		return nil, err
	}
	s, err := cache.New(nc, cache.Config{ID: id, MaxBytes: 4 << 30})
	if err == nil {
		err = s.Start(ctx)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &handoffNode{id, nc, s}, nil
}

func (h *handoffNode) stop(ctx context.Context) {
	_ = h.s.Stop(ctx)
	h.nc.Close()
}

func ids(nodes []*handoffNode) []string {
	var out []string
	for _, nd := range nodes {
		out = append(out, nd.id)
	}
	return out
}

func nodeFigures(nc *nats.Conn, id string) (cache.NodeStats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return bus.Request[cache.StatsRequest, cache.NodeStats](ctx, nc, cache.NodeSubject(id, cache.OpStats), cache.StatsRequest{})
}

// handoffSettled waits until the nodes ids agree on a ring of exactly them
// and each has completed the hand-off of that ring.
func handoffSettled(ctx context.Context, nc *nats.Conn, ids []string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ok := true
		var ring string
		for i, id := range ids {
			st, err := nodeFigures(nc, id)
			if i == 0 {
				ring = st.Ring
			}
			ok = ok && err == nil && st.Members == len(ids) && st.Ring == ring && st.Rebalanced == st.Ring && st.UnderReplicated == 0
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the hand-off did not complete within %v", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type loadRates struct {
	gets, sets float64
	err        error
}

// measure runs 8 goroutines of GETs and 8 of SETs of random loaded keys
// while phase runs, and returns their rates.
func measure(ctx context.Context, c *cache.Client, n, size int, phase func() error) loadRates {
	var gets, sets atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	value := make([]byte, size)
	for g := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := key(rng.IntN(n))
				if g%2 == 0 {
					if _, err := c.Get(ctx, k); err == nil {
						gets.Add(1)
					}
				} else if err := c.Set(ctx, k, value, 0); err == nil {
					sets.Add(1)
				}
			}
		})
	}
	t0 := time.Now()
	err := phase()
	d := time.Since(t0).Seconds()
	close(stop)
	wg.Wait()
	return loadRates{float64(gets.Load()) / d, float64(sets.Load()) / d, err}
}
