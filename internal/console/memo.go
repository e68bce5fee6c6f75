package console

import (
	"context"
	"sync"
	"time"
)

// memo keeps the results of costly reads for a while, shared by every page
// and tab that asks within that time: the scheduler's task list (a scan of
// the stored tasks) and the locks' details (a request per lock).
type memo[T any] struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]memoEntry[T]
}

type memoEntry[T any] struct {
	v  T
	at time.Time
}

func newMemo[T any](ttl time.Duration) *memo[T] {
	return &memo[T]{ttl: ttl, m: map[string]memoEntry[T]{}}
}

// get returns the value kept for key if it is younger than the memo's ttl
// and was read after notBefore, else reads it with read and keeps it
// (unless read fails).
func (m *memo[T]) get(key string, notBefore time.Time, read func() (T, error)) (T, error) {
	return m.getIf(key, func(at time.Time) bool { return time.Since(at) < m.ttl && !at.Before(notBefore) }, read)
}

// getIf returns the value kept for key if valid says it still is (given
// when it was read), else reads it with read and keeps it (unless read
// fails).
func (m *memo[T]) getIf(key string, valid func(at time.Time) bool, read func() (T, error)) (T, error) {
	m.mu.Lock()
	e, ok := m.m[key]
	m.mu.Unlock()
	if ok && valid(e.at) {
		return e.v, nil
	}
	at := time.Now()
	v, err := read()
	if err != nil {
		return v, err
	}
	m.mu.Lock()
	if len(m.m) > 256 { // filters people typed: keep the memo small
		clear(m.m)
	}
	m.m[key] = memoEntry[T]{v, at}
	m.mu.Unlock()
	return v, nil
}

// forget drops every kept value: after an action that changes them.
func (m *memo[T]) forget() {
	m.mu.Lock()
	clear(m.m)
	m.mu.Unlock()
}

// freshKey carries in a context the instant of the last event that asked for
// a render: what is rendered must have been read after it.
type freshKey struct{}

// freshAfter returns that instant, zero if none.
func freshAfter(ctx context.Context) time.Time {
	t, _ := ctx.Value(freshKey{}).(time.Time)
	return t
}
