package ring

import (
	"math"
	"slices"
	"strings"
	"testing"
)

// FuzzRing builds rings from arbitrary member lists (IDs separated by "\n",
// one weight byte each) and checks lookups on arbitrary keys: no panic,
// owners distinct and members of the ring, the same answers whatever the
// member order, and errors only for invalid member lists.
func FuzzRing(f *testing.F) {
	f.Add("a\nb\nc", []byte{1, 2, 0}, "key", uint8(2), false)
	f.Add("node-1\nnode-2\nnode-3\nnode-4", []byte{0, 0, 0, 255}, "", uint8(9), true)
	f.Add("x\nx", []byte{}, "k", uint8(1), false)
	f.Add("\n", []byte{3}, "κ", uint8(0), true)
	f.Fuzz(func(t *testing.T, ids string, weights []byte, key string, n uint8, bounded bool) {
		var ms []Member
		valid := true
		seen := make(map[string]bool)
		for i, id := range strings.Split(ids, "\n") {
			w := 1.0
			if i < len(weights) {
				w = float64(weights[i]) / 16 // 0 means 1
			}
			if i == 3 && len(weights) > 3 && weights[3] == 255 {
				w = math.NaN()
			}
			ms = append(ms, Member{ID: id, Weight: w})
			valid = valid && id != "" && !seen[id] && !math.IsNaN(w)
			seen[id] = true
		}
		cfg := Config{Partitions: 61, Replicas: 2}
		if bounded {
			cfg.LoadFactor = 1
		}
		r, err := New(ms, cfg)
		if (err == nil) != valid {
			t.Fatalf("New(%q) error %v, valid %v", ids, err, valid)
		}
		if err != nil {
			return
		}
		slices.Reverse(ms)
		rev, err := New(ms, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rev.Version() != r.Version() {
			t.Fatal("Version depends on member order")
		}

		owners := r.Owners(key, int(n))
		if want := min(int(n), len(ms)); len(owners) != want {
			t.Fatalf("Owners(%q, %d) = %v, want %d owners", key, n, owners, want)
		}
		if !slices.Equal(owners, rev.Owners(key, int(n))) {
			t.Fatal("owners depend on member order")
		}
		got := make(map[string]bool)
		for _, o := range owners {
			if !seen[o] || got[o] {
				t.Fatalf("Owners(%q, %d) = %v: unknown or repeated member", key, n, owners)
			}
			got[o] = true
		}
		p := r.Partition(key)
		if p < 0 || p >= cfg.Partitions {
			t.Fatalf("Partition(%q) = %d", key, p)
		}
		if !slices.Equal(owners, r.PartitionOwners(p, int(n))) {
			t.Fatal("Owners and PartitionOwners disagree")
		}
		if n > 0 && owners[0] != r.Owner(key) {
			t.Fatalf("Owner(%q) = %q, Owners[0] = %q", key, r.Owner(key), owners[0])
		}
	})
}
