package cache

import (
	"encoding/binary"
	"iter"
	"math"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/maypok86/otter/v2"
)

// An entry is one allocation: a header (the expiry in unix nanoseconds, 0
// for none, and the value's length), the key's bytes, then the value's.
// otter's node holds the key as a string over those bytes and a pointer to
// the allocation, so that an entry costs the node and one block: no
// separate key, value or box, and a read finds the expiry, the key it
// compares and the value it returns next to each other in memory.
type entry = *byte

const headerLen = 12

// newEntry copies key and v into a new entry and returns it with the key
// as a string over the entry's bytes.
func newEntry(key string, v []byte, exp int64) (string, entry) {
	b := make([]byte, headerLen+len(key)+len(v))
	binary.LittleEndian.PutUint64(b, uint64(exp))
	binary.LittleEndian.PutUint32(b[8:], uint32(len(v)))
	copy(b[headerLen:], key)
	copy(b[headerLen+len(key):], v)
	return unsafe.String(unsafe.SliceData(b[headerLen:]), len(key)), &b[0]
}

// header returns an entry's expiry and value length.
func header(e entry) (exp int64, vlen int) {
	h := unsafe.Slice(e, headerLen)
	return int64(binary.LittleEndian.Uint64(h)), int(binary.LittleEndian.Uint32(h[8:]))
}

// value returns an entry's value, which follows its key of klen bytes.
func value(e entry, klen, vlen int) []byte {
	if vlen == 0 {
		return []byte{} // no pointer past the entry's end
	}
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(e), headerLen+klen)), vlen)
}

// entryOverhead is what an entry costs beyond its key and value bytes:
// otter's node (80 bytes with the key's string header and the pointer), the
// entry's header, the allocator's rounding and the hash table's share. It
// is what bench/cache -memory measured in the Go heap for 1M entries of a
// 13-byte key and a 100-byte value (247 bytes an entry), so that the
// bound in bytes is the memory the entries take.
const entryOverhead = 134

// store is a node's memory: bounded in bytes, with a TTL per key, evicting by
// W-TinyLFU (otter).
type store struct {
	c         *otter.Cache[string, entry]
	clock     *otter.CoarseClock
	evictions *evictions
	maxBytes  int64
}

// clockStep is the resolution of otter's clock. Reading the precise time at
// every lookup took 7% of an MGET handler's time; otter needs the time only
// to drop expired entries, and a read checks the entry's own expiry exactly.
const clockStep = 100 * time.Millisecond

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
	clock := otter.NewCoarseClock(clockStep)
	c := otter.Must(&otter.Options[string, entry]{
		Clock:         clock,
		MaximumWeight: uint64(maxBytes),
		Weigher: func(k string, e entry) uint32 {
			_, vlen := header(e)
			return uint32(len(k) + vlen + entryOverhead)
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(en otter.Entry[string, entry]) time.Duration {
			exp, _ := header(en.Value)
			if exp == 0 {
				return math.MaxInt64
			}
			// Relative to otter's own (coarse) time: otter drops the
			// entry once its clock passes exp, never before.
			return time.Duration(exp - en.SnapshotAtNano)
		}),
		StatsRecorder: counter,
	})
	return &store{c: c, clock: clock, evictions: counter, maxBytes: maxBytes}
}

// get returns a key's value and the time it has left (0: no expiry). The
// value is the stored one, not a copy: it must not be changed.
func (s *store) get(key string) (v []byte, left time.Duration, ok bool) {
	e, ok := s.c.GetIfPresent(key)
	if !ok {
		return nil, 0, false
	}
	exp, vlen := header(e)
	if exp != 0 {
		if left = time.Duration(exp - time.Now().UnixNano()); left <= 0 {
			return nil, 0, false
		}
	}
	return value(e, len(key), vlen), left, true
}

// set stores a copy of a value; ttl 0 keeps it until it is evicted or
// deleted.
func (s *store) set(key string, v []byte, ttl time.Duration) {
	var exp int64
	if ttl > 0 {
		exp = time.Now().Add(ttl).UnixNano()
	}
	s.c.Set(newEntry(key, v, exp))
}

// del removes a key and reports whether it was there.
func (s *store) del(key string) bool {
	_, ok := s.c.Invalidate(key)
	return ok
}

// keys returns the stored keys.
func (s *store) keys() iter.Seq[string] { return s.c.Keys() }

func (s *store) items() int64   { return int64(s.c.EstimatedSize()) }
func (s *store) bytes() int64   { return int64(s.c.WeightedSize()) }
func (s *store) evicted() int64 { return s.evictions.n.Load() }

// close stops the store's goroutines.
func (s *store) close() {
	s.c.StopAllGoroutines()
	s.clock.Stop()
}
