package scheduler

import (
	"container/list"
	"sync"
)

// stateCache holds task states with their revisions, bounded by an
// estimate of their size in bytes; when an entry would pass the bound,
// the oldest entries (by first insertion) go first.
type stateCache struct {
	mu       sync.Mutex
	maxBytes int64
	bytes    int64
	entries  map[string]*list.Element // of *cachedState
	order    list.List                // oldest first
	evicted  uint64
}

type cachedState struct {
	rec  record
	rev  uint64
	size int64
}

func newStateCache(maxBytes int64) *stateCache {
	return &stateCache{maxBytes: maxBytes, entries: map[string]*list.Element{}}
}

// stateOverhead estimates the bytes of an entry besides its strings: the
// record's fixed fields, the map entry, the list element.
const stateOverhead = 400

func stateSize(rec *record) int64 {
	n := len(rec.ID)*2 + len(rec.Queue) + len(rec.Type) + len(rec.LastError) + len(rec.UniqueKey) + len(rec.Result)
	return int64(n + stateOverhead)
}

// put caches rec at revision rev, unless a newer revision is cached.
func (c *stateCache) put(rec *record, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	size := stateSize(rec)
	if e, ok := c.entries[rec.ID]; ok {
		cs := e.Value.(*cachedState)
		if cs.rev >= rev {
			return
		}
		c.bytes += size - cs.size
		cs.rec, cs.rev, cs.size = *rec, rev, size
	} else {
		c.entries[rec.ID] = c.order.PushBack(&cachedState{rec: *rec, rev: rev, size: size})
		c.bytes += size
	}
	for c.bytes > c.maxBytes && c.order.Len() > 0 {
		c.drop(c.order.Front())
		c.evicted++
	}
}

func (c *stateCache) drop(e *list.Element) {
	cs := c.order.Remove(e).(*cachedState)
	delete(c.entries, cs.rec.ID)
	c.bytes -= cs.size
}

func (c *stateCache) get(id string) (record, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok {
		return record{}, 0, false
	}
	cs := e.Value.(*cachedState)
	return cs.rec, cs.rev, true
}

func (c *stateCache) noteSeq(id string, rev, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[id]; ok {
		if cs := e.Value.(*cachedState); cs.rev == rev {
			cs.rec.Seq = seq
		}
	}
}

func (c *stateCache) remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[id]; ok {
		c.drop(e)
	}
}

// stats returns the cache's figures.
func (c *stateCache) stats() CacheInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheInfo{Entries: len(c.entries), Bytes: c.bytes, MaxBytes: c.maxBytes, Evicted: c.evicted}
}
