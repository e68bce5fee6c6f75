package cache

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// HeaderVersion carries the version of the value a copy writes (a replica
// write, a delete), in decimal.
const HeaderVersion = "Mesh-Version"

// A version orders the writes of a key: the owner gives each set one from
// its hybrid clock, and every copy, replica write and hand-off carries it;
// a node keeps the value of the higher version. The clock reads the time in
// unix nanoseconds and never goes back nor repeats, and it moves past every
// version the node receives (a hybrid logical clock), so that a write a
// node serves after it received a value has a higher version than that
// value, whatever the clocks of the nodes.
type clock struct{ last atomic.Uint64 }

// next returns a version higher than every one the clock gave or saw.
func (c *clock) next() uint64 {
	for {
		l := c.last.Load()
		n := max(uint64(time.Now().UnixNano()), l+1)
		if c.last.CompareAndSwap(l, n) {
			return n
		}
	}
}

// observe moves the clock past a version received.
func (c *clock) observe(v uint64) {
	for {
		l := c.last.Load()
		if v <= l || c.last.CompareAndSwap(l, v) {
			return
		}
	}
}

// versionOf returns the version a copy carries, or a new one from the
// node's clock when it carries none; the clock moves past it.
func (s *Server) versionOf(h nats.Header) uint64 {
	if v, err := strconv.ParseUint(h.Get(HeaderVersion), 10, 64); err == nil && v > 0 {
		s.clock.observe(v)
		return v
	}
	return s.clock.next()
}

func setVersion(h nats.Header, v uint64) { h.Set(HeaderVersion, strconv.FormatUint(v, 10)) }
