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
// for none, the value's length and the value's version), the key's bytes,
// then the value's.
// otter's node holds the key as a string over those bytes and a pointer to
// the allocation, so that an entry costs the node and one block: no
// separate key, value or box, and a read finds the expiry, the key it
// compares and the value it returns next to each other in memory.
type entry = *byte

const headerLen = 20

// newEntry copies key and v into a new entry and returns it with the key
// as a string over the entry's bytes.
func newEntry(key string, v []byte, exp int64, ver uint64) (string, entry) {
	b := make([]byte, headerLen+len(key)+len(v))
	binary.LittleEndian.PutUint64(b, uint64(exp))
	binary.LittleEndian.PutUint32(b[8:], uint32(len(v)))
	binary.LittleEndian.PutUint64(b[12:], ver)
	copy(b[headerLen:], key)
	copy(b[headerLen+len(key):], v)
	return unsafe.String(unsafe.SliceData(b[headerLen:]), len(key)), &b[0]
}

// header returns an entry's expiry and value length.
func header(e entry) (exp int64, vlen int) {
	h := unsafe.Slice(e, headerLen)
	return int64(binary.LittleEndian.Uint64(h)), int(binary.LittleEndian.Uint32(h[8:]))
}

// version returns an entry's version.
func version(e entry) uint64 {
	return binary.LittleEndian.Uint64(unsafe.Slice(e, headerLen)[12:])
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
// 13-byte key and a 100-byte value (247 bytes an entry, with a header of 12
// bytes; the version's 8 bytes are added), so that the bound in bytes is
// the memory the entries take.
const entryOverhead = 142

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

// getItem returns a key's value, expiry (unix nanoseconds, 0: none) and
// version. The value is the stored one, not a copy.
func (s *store) getItem(key string) (st stored, ok bool) {
	e, ok := s.c.GetIfPresent(key)
	if !ok {
		return st, false
	}
	exp, vlen := header(e)
	if exp != 0 && exp <= time.Now().UnixNano() {
		return st, false
	}
	return stored{value(e, len(key), vlen), exp, version(e)}, true
}

// set stores a copy of a value whatever the store holds, at version 0; ttl
// 0 keeps it until it is evicted or deleted.
func (s *store) set(key string, v []byte, ttl time.Duration) {
	s.c.Set(newEntry(key, v, expiry(ttl), 0))
}

// expiry is the instant, in unix nanoseconds, at which a value stored now
// with ttl expires; 0: never.
func expiry(ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return time.Now().Add(ttl).UnixNano()
}

// put stores a copy of a value at version ver, unless the store holds the
// key at ver or a later version; it reports whether it stored it. exp is
// the expiry in unix nanoseconds (0: none).
func (s *store) put(key string, v []byte, exp int64, ver uint64) bool {
	k, e := newEntry(key, v, exp, ver)
	stored := false
	s.c.Compute(k, func(old entry, found bool) (entry, otter.ComputeOp) {
		if found && version(old) >= ver && !expired(old, time.Now().UnixNano()) {
			return old, otter.CancelOp
		}
		stored = true
		return e, otter.WriteOp
	})
	return stored
}

func expired(e entry, now int64) bool {
	exp, _ := header(e)
	return exp != 0 && exp <= now
}

// del removes a key and reports whether it was there.
func (s *store) del(key string) bool {
	_, ok := s.c.Invalidate(key)
	return ok
}

// delIf removes a key if its version is ver (a copy handed off and not
// written since).
func (s *store) delIf(key string, ver uint64) bool {
	deleted := false
	s.c.ComputeIfPresent(key, func(old entry) (entry, otter.ComputeOp) {
		if version(old) != ver {
			return old, otter.CancelOp
		}
		deleted = true
		return old, otter.InvalidateOp
	})
	return deleted
}

// all yields the stored entries that have not expired: key, value, expiry
// (unix nanoseconds, 0: none) and version. The value is the stored one,
// not a copy.
func (s *store) all() iter.Seq2[string, stored] {
	return func(yield func(string, stored) bool) {
		now := time.Now().UnixNano()
		for k, e := range s.c.All() {
			exp, vlen := header(e)
			if exp != 0 && exp <= now {
				continue
			}
			if !yield(k, stored{value(e, len(k), vlen), exp, version(e)}) {
				return
			}
		}
	}
}

// stored is an entry as all yields it.
type stored struct {
	value []byte
	exp   int64
	ver   uint64
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
