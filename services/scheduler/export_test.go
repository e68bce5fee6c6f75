package scheduler

import "github.com/nats-io/nats.go/jetstream"

// UniqueKey is the bucket key of a queue's unique key, for tests that
// write the bucket as a failed submit leaves it.
var UniqueKey = uniqueKey

// WrapStates makes s, not started yet, use wrap(its state bucket), for tests
// that make the bucket fail.
func WrapStates(s *Server, wrap func(jetstream.KeyValue) jetstream.KeyValue) { s.wrapStates = wrap }

// StateKey is the bucket key of a task's state, for tests that change the
// state as another instance would.
var StateKey = stateKey
