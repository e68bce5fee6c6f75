// Command console measures what the web console costs a loaded mesh: the
// server time of its pages, and the mesh's request rate with the console
// closed and with pages open, at 10,000 queued tasks and 1,000 held locks.
//
// It runs everything in this process: an embedded NATS server with
// JetStream (a temporary store, NATS's default sync), every service as
// `mesh up` runs them, and a load of N goroutines that each loop over a
// cache SET and GET, a lock acquire and release, and a task status (one
// round of four requests counts four). The phases, each -d long:
//
//   - closed: no console;
//   - open: the console started, with one client of each page's live
//     stream (overview, scheduler, locks, cache) and of the events page,
//     as a person with five tabs open; the page times are measured then:
//     -n plain GETs of each page, one after another;
//   - closed again: the console stopped, to bracket the open phase.
//
// Usage: go run ./console [-tasks 10000] [-locks 1000] [-d 20s] [-n 20] [-load 8]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/bench/internal/machine"
	"github.com/meshkit/mesh/internal/console"
	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
)

func main() {
	tasks := flag.Int("tasks", 10000, "queued tasks (no worker serves their queue)")
	locks := flag.Int("locks", 1000, "held locks")
	dur := flag.Duration("d", 20*time.Second, "length of each phase")
	n := flag.Int("n", 20, "GETs of each page")
	workers := flag.Int("load", 8, "goroutines of the load")
	tabList := flag.String("tabs", "/live?page=overview,/live?page=scheduler,/live?page=locks,/live?page=cache,/events/stream", "the live streams open during the open phase (comma-separated; none: no stream)")
	nRounds := flag.Int("rounds", 3, "alternating rounds of closed and open phases")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the open phase to this file")
	flag.Parse()
	tabPaths = nil
	for _, p := range strings.Split(*tabList, ",") {
		if p != "" && p != "none" {
			tabPaths = append(tabPaths, p)
		}
	}
	cpuProfile = *profile
	rounds = *nRounds
	if err := run(*tasks, *locks, *dur, *n, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "console bench:", err)
		os.Exit(1)
	}
}

func run(nTasks, nLocks int, dur time.Duration, n, workers int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "mesh-console-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := embed.Start(ctx, embed.Config{Listen: "127.0.0.1:-1", DataDir: dir})
	if err != nil {
		return err
	}
	defer srv.Shutdown(context.Background())
	nc, err := nats.Connect(srv.ClientURL(), nats.Name("console bench"))
	if err != nil {
		return err
	}
	defer nc.Close()
	nd, err := node.Start(ctx, nc, nil, node.Env{Logger: zerolog.Nop(), Node: "bench", MeshVersion: "bench"})
	if err != nil {
		return err
	}
	defer nd.Stop(context.Background())

	fmt.Printf("machine: %s, %d CPUs, %s; nats-server embedded, JetStream file store, sync default\n", machine.CPUModel(), runtime.NumCPU(), runtime.Version())
	start := time.Now()
	ids, err := fill(ctx, nc, nTasks, nLocks)
	if err != nil {
		return err
	}
	fmt.Printf("filled: %d queued tasks, %d held locks in %s\n\n", nTasks, nLocks, time.Since(start).Round(time.Millisecond))

	var closedRuns, openRuns []result
	var pages map[string][]time.Duration
	var rendered string
	for round := range rounds {
		closed, err := loadPhase(fmt.Sprintf("closed%d", round), nc, ids, dur, workers)
		if err != nil {
			return err
		}
		closedRuns = append(closedRuns, closed)
		last := round == rounds-1
		open, rend, pg, err := openPhase(ctx, nc, ids, dur, workers, round, last, n)
		if err != nil {
			return err
		}
		openRuns = append(openRuns, open)
		if last {
			pages, rendered = pg, rend
		}
		fmt.Printf("round %d: closed %.0f req/s (%s CPU/request), open %.0f req/s (%s CPU/request)\n", round+1, closed.rate, closed.cpu, open.rate, open.cpu)
	}
	closed, open := median(closedRuns), median(openRuns)
	fmt.Println()
	fmt.Printf("mesh request rate (%d goroutines; cache SET+GET, lock acquire+release, task status), %s per phase:\n", workers, dur)
	fmt.Printf("  %-38s %10s %10s %10s %14s\n", "phase", "req/s", "p50", "p99", "CPU/request")
	for _, p := range []struct {
		name string
		r    result
	}{{"console closed (median)", closed}, {fmt.Sprintf("console open, %d live tabs (median)", len(tabPaths)), open}} {
		fmt.Printf("  %-38s %10.0f %10s %10s %14s\n", p.name, p.r.rate, p.r.p50, p.r.p99, p.r.cpu)
	}
	fmt.Printf("  ratio open / closed: %.3f req/s, %.3f CPU/request (medians of %d alternating rounds)\n\n", open.rate/closed.rate, float64(open.cpu)/float64(closed.cpu), rounds)
	fmt.Printf("updates sent by the live streams during the last open phase: %s\n\n", rendered)
	fmt.Printf("page server time under that load, console open (%d GETs each, one after another):\n", n)
	fmt.Printf("  %-26s %10s %10s %10s\n", "page", "p50", "p99", "max")
	for _, p := range pageList {
		d := pages[p]
		slices.Sort(d)
		fmt.Printf("  %-26s %10s %10s %10s\n", p, pct(d, 50), pct(d, 99), d[len(d)-1].Round(time.Microsecond))
	}
	return nil
}

// fill queues nTasks tasks in the queue "backlog", which no worker serves,
// and takes nLocks locks for ten minutes (not renewed: no keep-alive
// goroutines in this process).
func fill(ctx context.Context, nc *nats.Conn, nTasks, nLocks int) ([]string, error) {
	tasks := scheduler.NewClient(nc)
	ids := make([]string, nTasks)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= nTasks {
					return
				}
				id, err := tasks.Submit(ctx, scheduler.SubmitRequest{Queue: "backlog", Type: "report", Payload: []byte(fmt.Sprintf("job %d", i))})
				if err != nil {
					errs <- err
					return
				}
				ids[i] = id
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	next.Store(0)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= nLocks {
					return
				}
				req := lock.AcquireRequest{Name: fmt.Sprintf("held/%04d", i), Owner: fmt.Sprintf("holder-%d", i), TTLms: (10 * time.Minute).Milliseconds()}
				if _, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx, nc, lock.SubjectAcquire, req); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	return ids, nil
}

type result struct {
	rate     float64
	p50, p99 time.Duration
	cpu      time.Duration // this process's CPU time (everything: NATS, services, console, load) per request
}

// loadPhase runs the load for d and returns its rate and latencies.
func loadPhase(phase string, nc *nats.Conn, ids []string, d time.Duration, workers int) (result, error) {
	cc, err := cache.NewClient(nc, cache.ClientConfig{})
	if err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := cc.Start(ctx); err != nil {
		return result{}, err
	}
	defer cc.Close(context.Background())
	tasks := scheduler.NewClient(nc)
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	cpu0, err := machine.ProcCPU(os.Getpid())
	if err != nil {
		return result{}, err
	}
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			rctx := context.Background()
			timed := func(f func() error) bool {
				t0 := time.Now()
				err := f()
				if ctx.Err() != nil {
					return false
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return false
				}
				mine = append(mine, time.Since(t0))
				return true
			}
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("load-%d-%d", g, i%100)
				name := fmt.Sprintf("load/%s/%d", phase, g) // a phase cut short leaves its lock held: the next uses others
				var token uint64
				ok := timed(func() error { return cc.Set(rctx, key, []byte("value"), time.Minute) }) &&
					timed(func() error { _, err := cc.Get(rctx, key); return err }) &&
					timed(func() error {
						r, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](rctx, nc, lock.SubjectAcquire, lock.AcquireRequest{Name: name, TTLms: 10000})
						token = r.Token
						return err
					}) &&
					timed(func() error {
						_, err := bus.Request[lock.ReleaseRequest, lock.ReleaseReply](rctx, nc, lock.SubjectRelease, lock.ReleaseRequest{Name: name, Token: token})
						return err
					}) &&
					timed(func() error { _, err := tasks.Status(rctx, ids[(g*7919+i)%len(ids)]); return err })
				if !ok {
					break
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, err := machine.ProcCPU(os.Getpid())
	if err != nil {
		return result{}, err
	}
	if firstErr != nil {
		return result{}, firstErr
	}
	slices.Sort(lat)
	r := result{rate: float64(len(lat)) / elapsed.Seconds(), p50: pct(lat, 50), p99: pct(lat, 99)}
	if len(lat) > 0 {
		r.cpu = (cpu1 - cpu0) / time.Duration(len(lat))
	}
	return r, nil
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, len(d)*p/100)].Round(time.Microsecond)
}

var pageList = []string{"/", "/scheduler", "/scheduler?queue=backlog", "/locks", "/cache?key=load-0-1", "/events", "/scheduler/tasks/ID"}

// pageTimes GETs each page n times and returns the times.
func pageTimes(base string, n int) (map[string][]time.Duration, error) {
	out := map[string][]time.Duration{}
	for _, p := range pageList {
		path := p
		if strings.HasSuffix(p, "/ID") {
			path = strings.TrimSuffix(p, "ID") + "none"
		}
		for range n {
			t0 := time.Now()
			resp, err := http.Get(base + path)
			if err != nil {
				return nil, err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return nil, fmt.Errorf("GET %s: %d", path, resp.StatusCode)
			}
			out[p] = append(out[p], time.Since(t0))
		}
	}
	return out, nil
}

var (
	tabPaths   []string
	cpuProfile string
	rounds     int
)

// openPhase starts a console, opens the tabs, runs the load, and in the
// last round measures the pages; then stops the console.
func openPhase(ctx context.Context, nc *nats.Conn, ids []string, dur time.Duration, workers, round int, last bool, n int) (result, string, map[string][]time.Duration, error) {
	c, err := console.New(nc, console.Config{})
	if err != nil {
		return result{}, "", nil, err
	}
	if err := c.Start(ctx); err != nil {
		return result{}, "", nil, err
	}
	web := httptest.NewServer(c.Handler())
	defer web.Close()
	defer c.Stop(context.Background())
	tabs, err := openTabs(web.URL)
	if err != nil {
		return result{}, "", nil, err
	}
	var pages map[string][]time.Duration
	var pagesErr error
	pagesDone := make(chan struct{})
	go func() {
		defer close(pagesDone)
		if last {
			time.Sleep(dur / 4)
			pages, pagesErr = pageTimes(web.URL, n)
		}
	}()
	stopProfile := func() {}
	if cpuProfile != "" && last {
		if stopProfile, err = machine.CPUProfile(cpuProfile); err != nil {
			return result{}, "", nil, err
		}
	}
	open, err := loadPhase(fmt.Sprintf("open%d", round), nc, ids, dur, workers)
	stopProfile()
	<-pagesDone
	rendered := tabs.stop()
	if err == nil {
		err = pagesErr
	}
	return open, rendered, pages, err
}

func median(rs []result) result {
	slices.SortFunc(rs, func(a, b result) int {
		switch {
		case a.rate < b.rate:
			return -1
		case a.rate > b.rate:
			return 1
		}
		return 0
	})
	return rs[len(rs)/2]
}

// tabs are the live streams of open pages.
type tabs struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	count  map[string]int
}

func openTabs(base string) (*tabs, error) {
	ctx, cancel := context.WithCancel(context.Background())
	t := &tabs{cancel: cancel, count: map[string]int{}}
	for _, p := range tabPaths {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+p, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return nil, err
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if strings.HasPrefix(line, "event: fragment") || strings.HasPrefix(line, "event: mesh") {
					t.mu.Lock()
					t.count[p]++
					t.mu.Unlock()
				}
			}
		}()
	}
	return t, nil
}

// stop closes the streams and tells how many updates each sent.
func (t *tabs) stop() string {
	t.cancel()
	t.wg.Wait()
	var parts []string
	for p, n := range t.count {
		parts = append(parts, fmt.Sprintf("%s %d", p, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
