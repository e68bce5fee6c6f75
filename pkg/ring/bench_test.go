package ring

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func benchRing(b *testing.B, n int, cfg Config) (*Ring, []string) {
	r := mustNew(b, randomMembers(rand.New(rand.NewPCG(1, 2)), n, false), cfg)
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%016x", rand.Uint64())
	}
	return r, keys
}

func BenchmarkOwner(b *testing.B) {
	r, keys := benchRing(b, 10, Config{})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = r.Owner(keys[i&(len(keys)-1)])
		i++
	}
}

func BenchmarkOwnerParallel(b *testing.B) {
	r, keys := benchRing(b, 10, Config{})
	var h Holder
	h.Store(r)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(len(keys))
		for pb.Next() {
			_ = h.Load().Owner(keys[i&(len(keys)-1)])
			i++
		}
	})
}

func BenchmarkAppendOwners(b *testing.B) {
	r, keys := benchRing(b, 10, Config{})
	dst := make([]string, 0, 3)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dst = r.AppendOwners(dst[:0], keys[i&(len(keys)-1)], 3)
		i++
	}
}

func BenchmarkNew(b *testing.B) {
	for _, n := range []int{10, 100} {
		for _, lf := range []float64{0, 1} {
			b.Run(fmt.Sprintf("members=%d/LoadFactor=%v", n, lf), func(b *testing.B) {
				ms := randomMembers(rand.New(rand.NewPCG(1, 2)), n, true)
				b.ReportAllocs()
				for b.Loop() {
					mustNew(b, ms, Config{LoadFactor: lf})
				}
			})
		}
	}
}
