// Command ring compares mesh's ring (pkg/ring) with groupcache's
// consistenthash and buraksezer/consistent, side by side in one run, and
// prints one Markdown table: lookup cost (one goroutine and all cores),
// allocations, balance of keys over members, and keys moved when a member
// joins or leaves.
//
//	cd bench && go run ./ring
package main

import (
	"flag"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshkit/mesh/bench/internal/machine"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
	"github.com/golang/groupcache/consistenthash"

	"github.com/meshkit/mesh/pkg/ring"
)

var (
	numKeys    = flag.Int("keys", 1_000_000, "random keys")
	numMembers = flag.Int("members", 10, "members before a join or a leave")
	runs       = flag.Int("runs", 3, "timing runs per lookup benchmark; the median is printed")
	only       = flag.String("only", "", "measure only the implementations whose name contains this")
)

// A locator is one consistent-hashing implementation under test.
type locator interface {
	// owner returns the owner of key k (kb is the same key as bytes).
	owner(k string, kb []byte) string
	// bench times lookups over keys on one goroutine.
	bench(b *testing.B, keys []string, bkeys [][]byte)
	// benchParallel times lookups over keys on GOMAXPROCS goroutines.
	benchParallel(b *testing.B, keys []string, bkeys [][]byte)
}

type impl struct {
	name string
	new  func(members []string) locator
}

func impls() []impl {
	return []impl{
		{"mesh HRW P=4096", meshRing(ring.Config{})},
		{"mesh HRW P=4096 LoadFactor=1", meshRing(ring.Config{LoadFactor: 1})},
		{"mesh HRW P=65536", meshRing(ring.Config{Partitions: 65536})},
		{"groupcache crc32 50 vnodes", groupcache(50)},
		{"groupcache crc32 160 vnodes", groupcache(160)},
		{"buraksezer 271 part. load 1.25 RF 20 xxhash", buraksezer},
	}
}

// sink keeps lookup results alive.
var sink int

// mesh

type meshLocator struct{ r *ring.Ring }

func meshRing(cfg ring.Config) func([]string) locator {
	return func(ids []string) locator {
		ms := make([]ring.Member, len(ids))
		for i, id := range ids {
			ms[i].ID = id
		}
		r, err := ring.New(ms, cfg)
		if err != nil {
			panic(err)
		}
		return meshLocator{r}
	}
}

func (m meshLocator) owner(k string, _ []byte) string { return m.r.Owner(k) }

func (m meshLocator) bench(b *testing.B, keys []string, _ [][]byte) {
	n, i := 0, 0
	for b.Loop() {
		n += len(m.r.Owner(keys[i]))
		if i++; i == len(keys) {
			i = 0
		}
	}
	sink += n
}

func (m meshLocator) benchParallel(b *testing.B, keys []string, _ [][]byte) {
	var h ring.Holder
	h.Store(m.r)
	b.RunParallel(func(pb *testing.PB) {
		n, i := 0, rand.IntN(len(keys))
		for pb.Next() {
			n += len(h.Load().Owner(keys[i]))
			if i++; i == len(keys) {
				i = 0
			}
		}
		sink += n
	})
}

// groupcache

type gcLocator struct{ m *consistenthash.Map }

func groupcache(vnodes int) func([]string) locator {
	return func(ids []string) locator {
		m := consistenthash.New(vnodes, crc32.ChecksumIEEE)
		m.Add(ids...)
		return gcLocator{m}
	}
}

func (g gcLocator) owner(k string, _ []byte) string { return g.m.Get(k) }

func (g gcLocator) bench(b *testing.B, keys []string, _ [][]byte) {
	n, i := 0, 0
	for b.Loop() {
		n += len(g.m.Get(keys[i]))
		if i++; i == len(keys) {
			i = 0
		}
	}
	sink += n
}

func (g gcLocator) benchParallel(b *testing.B, keys []string, _ [][]byte) {
	b.RunParallel(func(pb *testing.PB) {
		n, i := 0, rand.IntN(len(keys))
		for pb.Next() {
			n += len(g.m.Get(keys[i]))
			if i++; i == len(keys) {
				i = 0
			}
		}
		sink += n
	})
}

// buraksezer/consistent

type bsMember string

func (m bsMember) String() string { return string(m) }

type xxhasher struct{}

func (xxhasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

type bsLocator struct{ c *consistent.Consistent }

func buraksezer(ids []string) locator {
	ms := make([]consistent.Member, len(ids))
	for i, id := range ids {
		ms[i] = bsMember(id)
	}
	return bsLocator{consistent.New(ms, consistent.Config{
		PartitionCount:    271,
		ReplicationFactor: 20,
		Load:              1.25,
		Hasher:            xxhasher{},
	})}
}

// owner and the benchmarks pass the key as []byte, the library's own key
// type, so that no conversion is charged to it.
func (c bsLocator) owner(_ string, kb []byte) string { return c.c.LocateKey(kb).String() }

func (c bsLocator) bench(b *testing.B, _ []string, bkeys [][]byte) {
	n, i := 0, 0
	for b.Loop() {
		n += len(c.c.LocateKey(bkeys[i]).String())
		if i++; i == len(bkeys) {
			i = 0
		}
	}
	sink += n
}

func (c bsLocator) benchParallel(b *testing.B, _ []string, bkeys [][]byte) {
	b.RunParallel(func(pb *testing.PB) {
		n, i := 0, rand.IntN(len(bkeys))
		for pb.Next() {
			n += len(c.c.LocateKey(bkeys[i]).String())
			if i++; i == len(bkeys) {
				i = 0
			}
		}
		sink += n
	})
}

// measurements

type result struct {
	ns, nsPar, allocs float64
	build             time.Duration
	maxMean, sdMean   float64
	join, leave       movement
}

// movement summarizes the scenarios of one kind (joins or leaves).
type movement struct {
	moved    []float64 // fraction of keys that changed owner, per scenario
	stranger []float64 // fraction that moved between two members that both stayed
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// owners returns, for every key, the index of its owner in ids.
func owners(l locator, ids []string, keys []string, bkeys [][]byte) []int16 {
	idx := make(map[string]int16, len(ids))
	for i, id := range ids {
		idx[id] = int16(i)
	}
	out := make([]int16, len(keys))
	for i, k := range keys {
		o, ok := idx[l.owner(k, bkeys[i])]
		if !ok {
			panic("owner outside the member set")
		}
		out[i] = o
	}
	return out
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// measure builds rings of im and measures build time, balance and movement.
func measure(im impl, base, extra []string, keys []string, bkeys [][]byte) result {
	var res result

	start := time.Now()
	const builds = 5
	for range builds {
		im.new(base)
	}
	res.build = time.Since(start) / builds

	l := im.new(base)
	// Balance of keys over the base members.
	before := owners(l, base, keys, bkeys)
	counts := make([]float64, len(base))
	for _, o := range before {
		counts[o]++
	}
	avg := float64(len(keys)) / float64(len(base))
	var most, ss float64
	for _, c := range counts {
		most = max(most, c)
		ss += (c - avg) * (c - avg)
	}
	res.maxMean = most / avg
	res.sdMean = math.Sqrt(ss/float64(len(base))) / avg

	// Joins: each extra member joins the base set on its own. The joiner
	// gets index len(base) in the larger set.
	for _, x := range extra {
		ids := append(slices.Clone(base), x)
		after := owners(im.new(ids), ids, keys, bkeys)
		var moved, stranger int
		for i := range keys {
			if after[i] != before[i] {
				moved++
				if int(after[i]) != len(base) {
					stranger++
				}
			}
		}
		res.join.moved = append(res.join.moved, float64(moved)/float64(len(keys)))
		res.join.stranger = append(res.join.stranger, float64(stranger)/float64(len(keys)))
	}

	// Leaves: each base member leaves in turn.
	for gone := range base {
		ids := slices.Delete(slices.Clone(base), gone, gone+1)
		after := owners(im.new(ids), ids, keys, bkeys)
		var moved, stranger int
		for i := range keys {
			// Map indexes in ids back to base.
			a := int(after[i])
			if a >= gone {
				a++
			}
			if a != int(before[i]) {
				moved++
				if int(before[i]) != gone {
					stranger++
				}
			}
		}
		res.leave.moved = append(res.leave.moved, float64(moved)/float64(len(keys)))
		res.leave.stranger = append(res.leave.stranger, float64(stranger)/float64(len(keys)))
	}
	return res
}

// timeLookups fills in the lookup figures. The runs are interleaved (run 1
// of every implementation, then run 2...) so that a burst of load from other
// processes does not fall on one implementation only.
func timeLookups(ims []impl, res []result, base, keys []string, bkeys [][]byte) {
	ls := make([]locator, len(ims))
	for i, im := range ims {
		ls[i] = im.new(base)
	}
	ns := make([][]float64, len(ims))
	nsPar := make([][]float64, len(ims))
	for run := range *runs {
		for i, l := range ls {
			fmt.Fprintf(os.Stderr, "timing run %d: %s...\n", run+1, ims[i].name)
			r := testing.Benchmark(func(b *testing.B) {
				b.ReportAllocs()
				l.bench(b, keys, bkeys)
			})
			ns[i] = append(ns[i], float64(r.T.Nanoseconds())/float64(r.N))
			res[i].allocs = max(res[i].allocs, float64(r.MemAllocs)/float64(r.N))
			rp := testing.Benchmark(func(b *testing.B) {
				b.ReportAllocs()
				l.benchParallel(b, keys, bkeys)
			})
			nsPar[i] = append(nsPar[i], float64(rp.T.Nanoseconds())/float64(rp.N))
			res[i].allocs = max(res[i].allocs, float64(rp.MemAllocs)/float64(rp.N))
		}
	}
	for i := range ims {
		res[i].ns, res[i].nsPar = median(ns[i]), median(nsPar[i])
	}
}

func main() {
	flag.Parse()
	rng := rand.New(rand.NewPCG(2024, 11))
	keys := make([]string, *numKeys)
	bkeys := make([][]byte, *numKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%016x", rng.Uint64())
		bkeys[i] = []byte(keys[i])
	}
	n := *numMembers
	var base, extra []string
	for i := range n {
		base = append(base, fmt.Sprintf("node-%d", i))
		extra = append(extra, fmt.Sprintf("node-%d", n+i))
	}

	fmt.Printf("%s; %d CPUs (nproc), GOMAXPROCS %d, %s, %s %s/%s, load average at start %s\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.GOMAXPROCS(0), machine.CPUModel(),
		runtime.Version(), runtime.GOOS, runtime.GOARCH, loadAvg())
	fmt.Printf("%d members node-0..node-%d, %d random keys (\"key-%%016x\"); lookup ns/op = median of %d testing.Benchmark runs\n",
		n, n-1, len(keys), *runs)
	fmt.Printf("joins: node-%d..node-%d each join the %d alone (mean [min-max] of %d); leaves: each of the %d leaves in turn\n\n",
		n, 2*n-1, n, n, n)

	ims := slices.DeleteFunc(impls(), func(im impl) bool { return !strings.Contains(im.name, *only) })
	results := make([]result, len(ims))
	for i, im := range ims {
		fmt.Fprintf(os.Stderr, "measuring %s...\n", im.name)
		results[i] = measure(im, base, extra, keys, bkeys)
	}
	timeLookups(ims, results, base, keys, bkeys)
	printTable(ims, results, n)
	fmt.Printf("\nload average at end %s\n", loadAvg())
}

func printTable(ims []impl, res []result, n int) {
	header := []string{"", "ideal"}
	sep := []string{"---", "---"}
	for _, im := range ims {
		header = append(header, im.name)
		sep = append(sep, "---")
	}
	fmt.Println("| " + strings.Join(header, " | ") + " |")
	fmt.Println("|" + strings.Join(sep, "|") + "|")
	row := func(name, ideal string, f func(r result) string) {
		cells := []string{name, ideal}
		for _, r := range res {
			cells = append(cells, f(r))
		}
		fmt.Println("| " + strings.Join(cells, " | ") + " |")
	}
	pct := func(x float64) string { return fmt.Sprintf("%.2f%%", 100*x) }
	span := func(xs []float64) string {
		return fmt.Sprintf("%s [%s–%s]", pct(mean(xs)), pct(slices.Min(xs)), pct(slices.Max(xs)))
	}
	row("lookup ns/op, 1 goroutine", "", func(r result) string { return fmt.Sprintf("%.1f", r.ns) })
	row(fmt.Sprintf("lookup ns/op, RunParallel on %d", runtime.GOMAXPROCS(0)), "", func(r result) string { return fmt.Sprintf("%.1f", r.nsPar) })
	row("parallel speed-up", fmt.Sprintf("%d×", runtime.GOMAXPROCS(0)), func(r result) string { return fmt.Sprintf("%.2f×", r.ns/r.nsPar) })
	row("allocs per lookup", "0", func(r result) string { return fmt.Sprintf("%.0f", r.allocs) })
	row(fmt.Sprintf("build a ring of %d", n), "", func(r result) string { return r.build.Round(time.Microsecond).String() })
	row("keys per member, max/mean", "1", func(r result) string { return fmt.Sprintf("%.4f", r.maxMean) })
	row("keys per member, stddev/mean", "0", func(r result) string { return fmt.Sprintf("%.4f", r.sdMean) })
	row("join: keys moved", pct(1/float64(n+1)), func(r result) string { return span(r.join.moved) })
	row("join: moved between unchanged members", "0", func(r result) string { return span(r.join.stranger) })
	row("leave: keys moved", pct(1/float64(n)), func(r result) string { return span(r.leave.moved) })
	row("leave: moved between unchanged members", "0", func(r result) string { return span(r.leave.stranger) })
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
