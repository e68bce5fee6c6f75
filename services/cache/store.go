package cache

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// entryOverhead is what the store counts for an entry beyond its key and
// value bytes: the eviction policy's node, the hash table's slot and the
// slice header. bench/cache -memory measured more, about 170 bytes an entry
// beyond key and value for 100-byte values (otter's 112-byte node, its hash
// table and the allocator's rounding), so MaxBytes understates a node's
// memory by about 60 bytes an entry.
const entryOverhead = 112

// item is a stored value with its expiry.
type item struct {
	v   []byte
	exp int64 // unix nanoseconds; 0: no expiry
}

// store is a node's memory: bounded in bytes, with a TTL per key, evicting by
// W-TinyLFU (otter).
type store struct {
	c         *otter.Cache[string, item]
	evictions *evictions
	maxBytes  int64
}

// evictions counts otter's evictions and nothing else: the node counts its
// own hits and misses, and a shared counter updated on every read was a
// measurable part of an MGET's cost.
type evictions struct{ n atomic.Int64 }

func (e *evictions) RecordHits(int)                  {}
func (e *evictions) RecordMisses(int)                {}
func (e *evictions) RecordEviction(uint32)           { e.n.Add(1) }
func (e *evictions) RecordLoadSuccess(time.Duration) {}
func (e *evictions) RecordLoadFailure(time.Duration) {}

func newStore(maxBytes int64) *store {
	counter := &evictions{}
	c := otter.Must(&otter.Options[string, item]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(k string, it item) uint32 { return uint32(len(k) + len(it.v) + entryOverhead) },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, item]) time.Duration {
			if e.Value.exp == 0 {
				return math.MaxInt64
			}
			return time.Duration(e.Value.exp - time.Now().UnixNano())
		}),
		StatsRecorder: counter,
	})
	return &store{c: c, evictions: counter, maxBytes: maxBytes}
}

// get returns a key's value and the time it has left (0: no expiry).
func (s *store) get(key string) (v []byte, left time.Duration, ok bool) {
	it, ok := s.c.GetIfPresent(key)
	if !ok {
		return nil, 0, false
	}
	if it.exp != 0 {
		if left = time.Duration(it.exp - time.Now().UnixNano()); left <= 0 {
			return nil, 0, false
		}
	}
	return it.v, left, true
}

// set stores a value; ttl 0 keeps it until it is evicted or deleted.
func (s *store) set(key string, v []byte, ttl time.Duration) {
	it := item{v: v}
	if ttl > 0 {
		it.exp = time.Now().Add(ttl).UnixNano()
	}
	s.c.Set(key, it)
}

// del removes a key and reports whether it was there.
func (s *store) del(key string) bool {
	_, ok := s.c.Invalidate(key)
	return ok
}

func (s *store) items() int64   { return int64(s.c.EstimatedSize()) }
func (s *store) bytes() int64   { return int64(s.c.WeightedSize()) }
func (s *store) evicted() int64 { return s.evictions.n.Load() }

// close stops the store's goroutines.
func (s *store) close() { s.c.StopAllGoroutines() }
