package ring

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// randomMembers returns n members with random IDs and, if weighted, random
// weights in {0 (=1), 0.5, 1, 2, 3}.
func randomMembers(rng *rand.Rand, n int, weighted bool) []Member {
	ws := []float64{0, 0.5, 1, 2, 3}
	ms := make([]Member, n)
	for i := range ms {
		ms[i].ID = fmt.Sprintf("node-%x", rng.Uint64())
		if weighted {
			ms[i].Weight = ws[rng.IntN(len(ws))]
		}
	}
	return ms
}

func mustNew(t testing.TB, ms []Member, cfg Config) *Ring {
	t.Helper()
	r, err := New(ms, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// table returns every partition's first n owners.
func table(r *Ring, n int) [][]string {
	out := make([][]string, r.Partitions())
	for p := range out {
		out[p] = r.PartitionOwners(p, n)
	}
	return out
}

// primaryCounts returns how many partitions each member is primary owner of.
func primaryCounts(r *Ring) map[string]int {
	c := make(map[string]int)
	for p := range r.Partitions() {
		c[r.PartitionOwners(p, 1)[0]]++
	}
	return c
}

func without(s []string, x string) []string {
	return slices.DeleteFunc(slices.Clone(s), func(v string) bool { return v == x })
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name    string
		members []Member
		cfg     Config
		want    error
	}{
		{"empty id", []Member{{ID: "a"}, {ID: ""}}, Config{}, ErrEmptyID},
		{"duplicate", []Member{{ID: "a"}, {ID: "b"}, {ID: "a", Weight: 2}}, Config{}, ErrDuplicateID},
		{"negative weight", []Member{{ID: "a", Weight: -1}}, Config{}, ErrInvalidWeight},
		{"NaN weight", []Member{{ID: "a", Weight: math.NaN()}}, Config{}, ErrInvalidWeight},
		{"Inf weight", []Member{{ID: "a", Weight: math.Inf(1)}}, Config{}, ErrInvalidWeight},
		{"negative partitions", nil, Config{Partitions: -1}, ErrInvalidConfig},
		{"too many partitions", nil, Config{Partitions: MaxPartitions + 1}, ErrInvalidConfig},
		{"negative replicas", nil, Config{Replicas: -1}, ErrInvalidConfig},
		{"load factor < 1", nil, Config{LoadFactor: 0.9}, ErrInvalidConfig},
		{"load factor NaN", nil, Config{LoadFactor: math.NaN()}, ErrInvalidConfig},
		{"load factor Inf", nil, Config{LoadFactor: math.Inf(1)}, ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.members, tt.cfg)
			if !errors.Is(err, tt.want) || r != nil {
				t.Fatalf("New = %v, %v; want nil, %v", r, err, tt.want)
			}
		})
	}
}

func TestEmptyAndNil(t *testing.T) {
	empty := mustNew(t, nil, Config{})
	var nilRing *Ring
	var h Holder
	for name, r := range map[string]*Ring{"empty": empty, "nil": nilRing, "holder": h.Load()} {
		if got := r.Owner("k"); got != "" {
			t.Errorf("%s: Owner = %q", name, got)
		}
		if got := r.Owners("k", 3); got != nil {
			t.Errorf("%s: Owners = %v", name, got)
		}
		if got := r.AppendOwners([]string{"x"}, "k", 3); !slices.Equal(got, []string{"x"}) {
			t.Errorf("%s: AppendOwners = %v", name, got)
		}
		if got := r.PartitionOwners(0, 3); got != nil {
			t.Errorf("%s: PartitionOwners = %v", name, got)
		}
		if r.Len() != 0 || len(r.Members()) != 0 {
			t.Errorf("%s: Len = %d, Members = %v", name, r.Len(), r.Members())
		}
	}
	if p := empty.Partition("k"); p < 0 || p >= DefaultPartitions {
		t.Errorf("empty ring: Partition = %d", p)
	}
	if nilRing.Partition("k") != -1 || nilRing.Version() != 0 || nilRing.Partitions() != 0 {
		t.Errorf("nil ring: Partition %d, Version %d, Partitions %d", nilRing.Partition("k"), nilRing.Version(), nilRing.Partitions())
	}
	if empty.Version() == 0 {
		t.Error("empty ring has version 0")
	}
}

func TestSingleMember(t *testing.T) {
	r := mustNew(t, []Member{{ID: "only"}}, Config{LoadFactor: 1})
	for _, k := range []string{"", "a", "b"} {
		if got := r.Owners(k, 5); !slices.Equal(got, []string{"only"}) {
			t.Fatalf("Owners(%q, 5) = %v", k, got)
		}
	}
}

func TestOwnersDistinctAndConsistent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, lf := range []float64{0, 1, 1.1} {
		for _, n := range []int{1, 2, 5, 13} {
			ms := randomMembers(rng, n, true)
			cfg := Config{Partitions: 512, LoadFactor: lf}
			r := mustNew(t, ms, cfg)
			cfg.Replicas = n
			full := mustNew(t, ms, cfg) // whole order precomputed
			if r.Version() != full.Version() {
				t.Fatal("Replicas changed Version")
			}
			valid := make(map[string]bool)
			for _, m := range ms {
				valid[m.ID] = true
			}
			for p := range r.Partitions() {
				all := r.PartitionOwners(p, n+2) // beyond the table when n > 3
				if want := full.PartitionOwners(p, n); !slices.Equal(all, want) {
					t.Fatalf("lf %v, %d members, partition %d: ranked on the fly %v, precomputed %v", lf, n, p, all, want)
				}
				if len(all) != n {
					t.Fatalf("PartitionOwners(%d, %d) has %d members, want %d", p, n+2, len(all), n)
				}
				seen := make(map[string]bool)
				for _, id := range all {
					if !valid[id] || seen[id] {
						t.Fatalf("partition %d: owners %v invalid or repeated", p, all)
					}
					seen[id] = true
				}
				for k := 1; k <= n; k++ {
					if got := r.PartitionOwners(p, k); !slices.Equal(got, all[:k]) {
						t.Fatalf("PartitionOwners(%d, %d) = %v, not a prefix of %v", p, k, got, all)
					}
				}
			}
			for i := range 200 {
				key := fmt.Sprint("key-", i)
				p := r.Partition(key)
				if got, want := r.Owners(key, n), r.PartitionOwners(p, n); !slices.Equal(got, want) {
					t.Fatalf("Owners(%q) = %v, partition %d has %v", key, got, p, want)
				}
				if got := r.Owner(key); got != r.PartitionOwners(p, 1)[0] {
					t.Fatalf("Owner(%q) = %q, want %q", key, got, r.PartitionOwners(p, 1)[0])
				}
			}
		}
	}
}

func TestOrderIndependence(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, lf := range []float64{0, 1} {
		ms := randomMembers(rng, 12, true)
		cfg := Config{Partitions: 1024, LoadFactor: lf}
		r := mustNew(t, ms, cfg)
		want := table(r, 4)
		for range 5 {
			rng.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
			s := mustNew(t, ms, cfg)
			if s.Version() != r.Version() {
				t.Fatalf("Version %x after shuffle, want %x", s.Version(), r.Version())
			}
			if got := table(s, 4); !slices.EqualFunc(got, want, slices.Equal) {
				t.Fatal("owners changed after shuffling the members")
			}
			if !slices.Equal(s.Members(), r.Members()) {
				t.Fatal("Members changed after shuffling the members")
			}
		}
	}
}

func TestVersion(t *testing.T) {
	base := []Member{{ID: "a"}, {ID: "b", Weight: 2}, {ID: "c"}}
	v := mustNew(t, base, Config{}).Version()
	same := map[string]struct {
		ms  []Member
		cfg Config
	}{
		"permuted":        {[]Member{{ID: "c"}, {ID: "a"}, {ID: "b", Weight: 2}}, Config{}},
		"zero weight = 1": {[]Member{{ID: "a", Weight: 1}, {ID: "b", Weight: 2}, {ID: "c", Weight: 0}}, Config{}},
		"explicit config": {base, Config{Partitions: DefaultPartitions, Replicas: 7}},
	}
	for name, c := range same {
		if got := mustNew(t, c.ms, c.cfg).Version(); got != v {
			t.Errorf("%s: Version %x, want %x", name, got, v)
		}
	}
	differ := map[string]struct {
		ms  []Member
		cfg Config
	}{
		"member added":   {append(slices.Clone(base), Member{ID: "d"}), Config{}},
		"member removed": {base[:2], Config{}},
		"weight changed": {[]Member{{ID: "a"}, {ID: "b", Weight: 3}, {ID: "c"}}, Config{}},
		"id changed":     {[]Member{{ID: "a"}, {ID: "b", Weight: 2}, {ID: "cc"}}, Config{}},
		"ids re-split":   {[]Member{{ID: "a"}, {ID: "bc", Weight: 2}, {ID: "c"}}, Config{}},
		"partitions":     {base, Config{Partitions: 1024}},
		"load factor":    {base, Config{LoadFactor: 1}},
		"empty":          {nil, Config{}},
	}
	seen := map[uint64]string{v: "base"}
	for name, c := range differ {
		got := mustNew(t, c.ms, c.cfg).Version()
		if prev, ok := seen[got]; ok {
			t.Errorf("%s: Version %x equals that of %s", name, got, prev)
		}
		seen[got] = name
	}
}

// TestAddRemoveMovesOnlyChangedMember checks, over every partition and the
// whole replica order, that adding a member only moves partitions to it and
// removing one only moves its partitions: the order of the other members
// never changes.
func TestAddRemoveMovesOnlyChangedMember(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const depth = 4
	for _, n := range []int{1, 2, 3, 10, 31} {
		for _, weighted := range []bool{false, true} {
			ms := randomMembers(rng, n+1, weighted)
			x := ms[n].ID // the member that joins, or leaves
			small := mustNew(t, ms[:n], Config{Replicas: depth})
			big := mustNew(t, ms, Config{Replicas: depth})
			moved := 0
			for p := range DefaultPartitions {
				before, after := small.PartitionOwners(p, depth), big.PartitionOwners(p, depth)
				if after[0] != before[0] {
					moved++
					if after[0] != x {
						t.Fatalf("%d members: partition %d moved from %s to %s, not to the new member %s", n, p, before[0], after[0], x)
					}
				}
				// Dropping x from the larger ring's order gives the smaller ring's.
				if got := without(after, x); !slices.Equal(got, before[:len(got)]) {
					t.Fatalf("%d members: partition %d order %v with %s, %v without", n, p, after, x, before)
				}
			}
			if got := len(Moved(small, big)); got != moved {
				t.Fatalf("Moved reports %d partitions, counted %d", got, moved)
			}
			if moved != primaryCounts(big)[x] {
				t.Fatalf("%d partitions moved, the new member owns %d", moved, primaryCounts(big)[x])
			}
		}
	}
}

// TestBoundedLoad checks the capacity bound of LoadFactor and measures what
// it costs: partitions moving between members that did not change.
func TestBoundedLoad(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var churn, total int
	for range 10 {
		for _, weighted := range []bool{false, true} {
			ms := randomMembers(rng, 11, weighted)
			x := ms[10].ID
			cfg := Config{LoadFactor: 1}
			small := mustNew(t, ms[:10], cfg)
			big := mustNew(t, ms, cfg)
			for _, r := range []*Ring{small, big} {
				var w float64
				for _, m := range r.Members() {
					w += m.Weight
				}
				counts := primaryCounts(r)
				for _, m := range r.Members() {
					if limit := int(math.Ceil(float64(DefaultPartitions) * m.Weight / w)); counts[m.ID] > limit {
						t.Fatalf("member of weight %v/%v owns %d partitions, bound %d", m.Weight, w, counts[m.ID], limit)
					}
				}
			}
			for _, p := range Moved(small, big) {
				if big.PartitionOwners(p, 1)[0] != x {
					churn++
				}
			}
			total += DefaultPartitions
		}
	}
	// Measured: about 0.8% of partitions (see doc.go). Fail well above it.
	if f := float64(churn) / float64(total); f > 0.015 {
		t.Errorf("bounded load moved %.2f%% of partitions between unchanged members", 100*f)
	} else {
		t.Logf("LoadFactor 1: %.2f%% of partitions moved between unchanged members on a join", 100*f)
	}
}

// TestBalance checks plain rendezvous balance of partitions for 10 equal
// members against its expected spread: the largest member owns on average
// about 1.05x the mean with P = 4096 (1.075x without stratification).
func TestBalance(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	var sum float64
	const trials = 20
	for range trials {
		r := mustNew(t, randomMembers(rng, 10, false), Config{})
		most := 0
		for _, c := range primaryCounts(r) {
			most = max(most, c)
		}
		sum += float64(most) / (DefaultPartitions / 10.0)
	}
	if mean := sum / trials; mean > 1.065 {
		t.Errorf("mean max/mean of partitions %.4f, want <= 1.065", mean)
	} else {
		t.Logf("mean max/mean of partitions over %d rings of 10: %.4f", trials, mean)
	}
}

// TestWeightsProportional checks that keys go to members in proportion to
// their weights: each member within ±15% of its share (the spread of HRW
// over 4096 partitions is a few percent), and each weight class within ±3%
// on average over 16 rings, which is where a biased score would show.
func TestWeightsProportional(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	weights := []float64{1, 1, 1, 1, 2, 2, 3, 0.5}
	var total float64
	for _, w := range weights {
		total += w
	}
	const keys, trials = 200_000, 16
	got := make(map[float64]float64)  // keys owned by each weight class
	want := make(map[float64]float64) // and its expected number
	for trial := range trials {
		ms := randomMembers(rng, len(weights), false)
		for i := range ms {
			ms[i].Weight = weights[i]
		}
		r := mustNew(t, ms, Config{})
		counts := make(map[string]int)
		for i := range keys {
			counts[r.Owner(fmt.Sprint(trial, "/", i))]++
		}
		for _, m := range ms {
			share := keys * m.Weight / total
			if dev := float64(counts[m.ID])/share - 1; math.Abs(dev) > 0.15 {
				t.Errorf("member of weight %v got %d keys, want %.0f ± 15%%", m.Weight, counts[m.ID], share)
			}
			got[m.Weight] += float64(counts[m.ID])
			want[m.Weight] += share
		}
	}
	for w := range got {
		if dev := got[w]/want[w] - 1; math.Abs(dev) > 0.03 {
			t.Errorf("members of weight %v got %.0f keys in all, want %.0f ± 3%%", w, got[w], want[w])
		} else {
			t.Logf("weight %v: %+.2f%% from its share", w, 100*dev)
		}
	}
}

func TestMoved(t *testing.T) {
	ms := []Member{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	r3 := mustNew(t, ms, Config{Partitions: 256})
	r4 := mustNew(t, append(slices.Clone(ms), Member{ID: "d"}), Config{Partitions: 256})
	if m := Moved(r3, r3); m != nil {
		t.Errorf("Moved(r, r) = %v", m)
	}
	moved := Moved(r3, r4)
	if len(moved) == 0 || !slices.IsSorted(moved) {
		t.Fatalf("Moved = %v", moved)
	}
	for p := range 256 {
		if slices.Contains(moved, p) != (r4.PartitionOwners(p, 1)[0] == "d") {
			t.Fatalf("partition %d: moved %v, owner %s", p, slices.Contains(moved, p), r4.PartitionOwners(p, 1)[0])
		}
	}
	if got := len(Moved(nil, r3)); got != 256 {
		t.Errorf("Moved(nil, r) has %d partitions, want 256", got)
	}
	other := mustNew(t, ms, Config{Partitions: 128})
	if got := len(Moved(r3, other)); got != 128 {
		t.Errorf("Moved across partition counts has %d partitions, want 128", got)
	}
	if got := Moved(r3, nil); got != nil {
		t.Errorf("Moved(r, nil) = %v", got)
	}
}

func TestNoAllocations(t *testing.T) {
	r := mustNew(t, randomMembers(rand.New(rand.NewPCG(1, 1)), 10, true), Config{})
	dst := make([]string, 0, DefaultReplicas)
	if a := testing.AllocsPerRun(1000, func() { _ = r.Owner("some-key") }); a != 0 {
		t.Errorf("Owner allocates %v times", a)
	}
	if a := testing.AllocsPerRun(1000, func() { dst = r.AppendOwners(dst[:0], "some-key", DefaultReplicas) }); a != 0 {
		t.Errorf("AppendOwners allocates %v times", a)
	}
	var h Holder
	h.Store(r)
	if a := testing.AllocsPerRun(1000, func() { _ = h.Load().Owner("some-key") }); a != 0 {
		t.Errorf("Holder.Load().Owner allocates %v times", a)
	}
}

func TestHolderConcurrent(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	rings := make([]*Ring, 4)
	valid := make(map[string]bool)
	for i := range rings {
		ms := randomMembers(rng, 3+i, false)
		for _, m := range ms {
			valid[m.ID] = true
		}
		rings[i] = mustNew(t, ms, Config{Partitions: 64})
	}
	var h Holder
	h.Store(rings[0])
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if o := h.Load().Owner(fmt.Sprint(g, i)); !valid[o] {
					t.Errorf("Owner = %q", o)
					return
				}
			}
		})
	}
	for i := range 1000 {
		if prev := h.Swap(rings[i%len(rings)]); prev == nil {
			t.Fatal("Swap returned nil")
		}
	}
	close(stop)
	wg.Wait()
}

// TestExtremeWeights checks that scores neither overflow nor underflow:
// two members of the largest weight still share the partitions evenly, and
// the tiniest weights still rank (last) without ties.
func TestExtremeWeights(t *testing.T) {
	ms := []Member{
		{ID: "huge-1", Weight: math.MaxFloat64}, {ID: "huge-2", Weight: math.MaxFloat64},
		{ID: "tiny-1", Weight: math.SmallestNonzeroFloat64}, {ID: "tiny-2", Weight: math.SmallestNonzeroFloat64},
	}
	for _, lf := range []float64{0, 1} {
		r := mustNew(t, ms, Config{LoadFactor: lf})
		c := primaryCounts(r)
		if share := float64(c["huge-1"]) / DefaultPartitions; share < 0.45 || share > 0.55 {
			t.Errorf("LoadFactor %v: huge-1 owns %.1f%% of partitions, huge-2 %d, tiny ones %d and %d",
				lf, 100*share, c["huge-2"], c["tiny-1"], c["tiny-2"])
		}
		var tinyFirst int
		for p := range DefaultPartitions {
			if r.PartitionOwners(p, 3)[2] == "tiny-1" {
				tinyFirst++
			}
		}
		if share := float64(tinyFirst) / DefaultPartitions; share < 0.45 || share > 0.55 {
			t.Errorf("LoadFactor %v: tiny-1 ranks before tiny-2 in %.1f%% of partitions", lf, 100*share)
		}
	}
}
