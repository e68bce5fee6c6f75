// Command membership measures how fast ring membership notices a crashed
// member (no leave), a graceful leave and a join, as seen by every one of
// several watchers: median and max over several runs, with the default
// heartbeat interval H = 1 s and k = 3 misses.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/meshkit/mesh/bench/internal/machine"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/pkg/ring/membership"
)

func main() {
	nodes := flag.Int("nodes", 10, "members")
	watchers := flag.Int("watchers", 5, "watchers")
	runs := flag.Int("runs", 5, "runs of each event")
	interval := flag.Duration("interval", membership.DefaultInterval, "heartbeat interval H")
	flag.Parse()

	ctx := context.Background()
	dir, err := os.MkdirTemp("", "mesh-bench-membership")
	check(err)
	defer os.RemoveAll(dir)
	srv, err := embed.Start(ctx, embed.Config{Listen: "127.0.0.1:-1", DataDir: dir})
	check(err)
	defer srv.Shutdown(ctx)
	connect := func() *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL())
		check(err)
		return nc
	}

	type member struct {
		nc *nats.Conn
		a  *membership.Announcer
	}
	start := func(id string) member {
		nc := connect()
		a, err := membership.NewAnnouncer(nc, membership.AnnouncerConfig{Service: "bench", ID: id, Interval: *interval})
		check(err)
		check(a.Start(ctx))
		return member{nc, a}
	}
	members := map[string]member{}
	for i := range *nodes {
		id := fmt.Sprintf("node-%02d", i)
		members[id] = start(id)
	}
	var ws []*membership.Watcher
	for range *watchers {
		w, err := membership.NewWatcher(connect(), membership.WatcherConfig{Service: "bench", Interval: *interval})
		check(err)
		check(w.Start(ctx))
		ws = append(ws, w)
	}
	// until returns, per watcher, how long after t0 its ring first had n members.
	until := func(t0 time.Time, n int) []time.Duration {
		var out []time.Duration
		for _, w := range ws {
			for {
				ch := w.Changed()
				if w.Ring().Len() == n {
					out = append(out, time.Since(t0))
					break
				}
				select {
				case <-ch:
				case <-time.After(time.Duration(membership.DefaultMisses+5) * *interval):
					log.Fatalf("watcher stuck at %d members, want %d", w.Ring().Len(), n)
				}
			}
		}
		return out
	}
	until(time.Now(), *nodes)

	var crash, leave, join []time.Duration
	for r := range *runs {
		id := fmt.Sprintf("node-%02d", r%*nodes)
		m := members[id]
		m.nc.Close() // crash: no leave
		t0 := time.Now()
		crash = append(crash, until(t0, *nodes-1)...)
		_ = m.a.Stop(ctx)

		m = start(id)
		t0 = time.Now()
		join = append(join, until(t0, *nodes)...)

		check(m.a.Stop(ctx))
		t0 = time.Now()
		leave = append(leave, until(t0, *nodes-1)...)
		m.nc.Close()

		members[id] = start(id)
		until(time.Now(), *nodes)
	}

	cpu := machine.CPUModel()
	fmt.Printf("membership: %d members, %d watchers, %d runs, H=%v, k=%d; %s, %d cores, %s, %s\n",
		*nodes, *watchers, *runs, *interval, membership.DefaultMisses, cpu, runtime.NumCPU(), runtime.Version(), time.Now().UTC().Format("2006-01-02"))
	fmt.Printf("%-28s %10s %10s %10s\n", "event (every watcher)", "median", "max", "bound")
	row := func(name string, d []time.Duration, bound string) {
		slices.Sort(d)
		fmt.Printf("%-28s %10v %10v %10s\n", name, d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond), bound)
	}
	row("crash (no leave) detected", crash, fmt.Sprintf("%v", time.Duration(membership.DefaultMisses+1)**interval))
	row("graceful leave applied", leave, fmt.Sprintf("~%v", *interval))
	row("join applied", join, fmt.Sprintf("~%v", *interval))
	for _, w := range ws {
		_ = w.Stop(ctx)
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
