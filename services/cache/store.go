package cache

import (
	"math"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/maypok86/otter/v2/stats"
)

// entryOverhead is what the store counts for an entry beyond its key and
// value bytes: the eviction policy's node, the hash table's slot and the
// slice header, measured with bench/cache (about 100 bytes), rounded up.
const entryOverhead = 112

// item is a stored value with the TTL it was written with.
type item struct {
	v   []byte
	ttl time.Duration // 0: no expiry
}

// store is a node's memory: bounded in bytes, with a TTL per key, evicting by
// W-TinyLFU (otter).
type store struct {
	c        *otter.Cache[string, item]
	counter  *stats.Counter
	maxBytes int64
}

func newStore(maxBytes int64) *store {
	counter := stats.NewCounter()
	c := otter.Must(&otter.Options[string, item]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(k string, it item) uint32 { return uint32(len(k) + len(it.v) + entryOverhead) },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, item]) time.Duration {
			if e.Value.ttl <= 0 {
				return math.MaxInt64
			}
			return e.Value.ttl
		}),
		StatsRecorder: counter,
	})
	return &store{c: c, counter: counter, maxBytes: maxBytes}
}

// get returns a key's value and the time it has left (0: no expiry).
func (s *store) get(key string) (v []byte, left time.Duration, ok bool) {
	e, ok := s.c.GetEntry(key)
	if !ok {
		return nil, 0, false
	}
	if e.Value.ttl > 0 {
		left = time.Until(e.ExpiresAt())
		if left <= 0 {
			return nil, 0, false
		}
	}
	return e.Value.v, left, true
}

// set stores a value; an entry larger than the whole store is not kept.
func (s *store) set(key string, v []byte, ttl time.Duration) {
	s.c.Set(key, item{v: v, ttl: ttl})
}

// del removes a key and reports whether it was there.
func (s *store) del(key string) bool {
	_, ok := s.c.Invalidate(key)
	return ok
}

func (s *store) items() int64     { return int64(s.c.EstimatedSize()) }
func (s *store) bytes() int64     { return int64(s.c.WeightedSize()) }
func (s *store) evictions() int64 { return int64(s.counter.Snapshot().Evictions) }

// close stops the store's goroutines.
func (s *store) close() { s.c.StopAllGoroutines() }
