package ring

import "sync/atomic"

// Holder holds the current ring of a process. Lookups Load it without a
// lock; the membership layer Stores a new ring when the member set changes,
// and in-flight lookups finish on the ring they loaded. The zero value holds
// nil, which behaves as an empty ring. A Holder must not be copied after
// first use.
type Holder struct {
	p atomic.Pointer[Ring]
}

// Load returns the current ring (nil if none was stored).
func (h *Holder) Load() *Ring { return h.p.Load() }

// Store makes r the current ring.
func (h *Holder) Store(r *Ring) { h.p.Store(r) }

// Swap makes r the current ring and returns the previous one, for a caller
// that wants to compute what moved (see Moved).
func (h *Holder) Swap(r *Ring) *Ring { return h.p.Swap(r) }
