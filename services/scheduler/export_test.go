package scheduler

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// UniqueKey is the bucket key of a queue's unique key, for tests that
// write the bucket as a failed submit leaves it.
var UniqueKey = uniqueKey

// WrapStates makes s, not started yet, use wrap(its unique keys' bucket),
// for tests that make the bucket fail.
func WrapStates(s *Server, wrap func(jetstream.KeyValue) jetstream.KeyValue) { s.wrapStates = wrap }

// SetUniqueGrace sets how old a unique key naming no task must be to be
// taken over, and returns the previous value.
func SetUniqueGrace(d time.Duration) time.Duration {
	old := uniqueGrace
	uniqueGrace = d
	return old
}
