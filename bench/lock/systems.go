package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/meshkit/mesh/services/lock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// errBusy: a try found the lock held.
var errBusy = errors.New("the lock is held")

// release gives back what an acquisition took.
type release func(ctx context.Context) error

// A system is one lock implementation under test. Worker w (0 <= w <
// workers of the scenario) calls it; a worker makes one call at a time.
type system interface {
	name() string
	// try takes the lock on key if it is free now, else fails with errBusy.
	try(ctx context.Context, w int, key string) (release, error)
	// wait takes the lock on key, waiting for it as long as ctx allows. The
	// token is the grant's place in the system's own line (mesh: the fencing
	// token; etcd: the create revision of the waiter's key; KV: the key's
	// revision).
	wait(ctx context.Context, w int, key string) (release, uint64, error)
}

// meshSystem is the lock service through its Go SDK. Worker w asks as
// owner "bench-lock-w<w>", so that a sniffer can tell whose request is whose.
type meshSystem struct {
	c    *lock.Client
	opts []lock.Options // by worker
}

func meshOwner(w int) string { return fmt.Sprintf("bench-lock-w%d", w) }

func newMesh(c *lock.Client, ttl time.Duration, workers int) *meshSystem {
	m := &meshSystem{c: c}
	for w := range workers {
		m.opts = append(m.opts, lock.Options{TTL: ttl, Owner: meshOwner(w)})
	}
	return m
}

func (m *meshSystem) name() string { return meshName }

func (m *meshSystem) try(ctx context.Context, w int, key string) (release, error) {
	l, err := m.c.TryAcquire(ctx, key, m.opts[w])
	if errors.Is(err, lock.ErrLocked) {
		return nil, errBusy
	}
	if err != nil {
		return nil, err
	}
	return l.Release, nil
}

func (m *meshSystem) wait(ctx context.Context, w int, key string) (release, uint64, error) {
	l, err := m.c.Acquire(ctx, key, m.opts[w])
	if err != nil {
		return nil, 0, err
	}
	return l.Release, l.Token(), nil
}

// etcdSystem is etcd's concurrency.Mutex. Each worker has a session (a
// lease kept alive by the client) of its own, made before the measurements:
// a Mutex's key is its session's lease, so contenders need distinct ones.
type etcdSystem struct {
	cli      *clientv3.Client
	sessions []*concurrency.Session
}

func newEtcd(ctx context.Context, endpoint string, ttl time.Duration, workers int) (*etcdSystem, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Context:     ctx,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", endpoint, err)
	}
	e := &etcdSystem{cli: cli}
	for range workers {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl.Seconds())))
		if err != nil {
			e.close()
			return nil, fmt.Errorf("etcd %s: session: %w", endpoint, err)
		}
		e.sessions = append(e.sessions, s)
	}
	return e, nil
}

func (e *etcdSystem) close() {
	for _, s := range e.sessions {
		_ = s.Close()
	}
	_ = e.cli.Close()
}

func (e *etcdSystem) name() string { return etcdName }

func (e *etcdSystem) try(ctx context.Context, w int, key string) (release, error) {
	m := concurrency.NewMutex(e.sessions[w], "/bench-lock/"+key)
	err := m.TryLock(ctx)
	if errors.Is(err, concurrency.ErrLocked) {
		return nil, errBusy
	}
	if err != nil {
		return nil, err
	}
	return m.Unlock, nil
}

func (e *etcdSystem) wait(ctx context.Context, w int, key string) (release, uint64, error) {
	m := concurrency.NewMutex(e.sessions[w], "/bench-lock/"+key)
	if err := m.Lock(ctx); err != nil {
		return nil, 0, err
	}
	// IsOwner compares the key's create revision with the one the Mutex
	// took its place in line with.
	var token uint64
	if c, ok := m.IsOwner().TargetUnion.(*etcdserverpb.Compare_CreateRevision); ok {
		token = uint64(c.CreateRevision)
	}
	return m.Unlock, token, nil
}

// kvSystem is the floor: the KV operations a lock needs at the least, with
// no service in between. It has no waiting line: wait spins on Create.
type kvSystem struct {
	kv       jetstream.KeyValue
	ttl      time.Duration
	value    []byte
	attempts atomic.Int64 // Create calls made by wait
}

// kvBucket is the bucket of the floor, configured like the lock service's.
const kvBucket = "BENCH_LOCK_FLOOR"

func newKV(ctx context.Context, nc *nats.Conn, ttl time.Duration) (*kvSystem, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         kvBucket,
		History:        1,
		LimitMarkerTTL: 30 * time.Second,
		Storage:        jetstream.FileStorage,
		Replicas:       1,
	})
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", kvBucket, err)
	}
	return &kvSystem{kv: kv, ttl: ttl, value: []byte(`{"owner":"bench-lock","ttl_ms":10000}`)}, nil
}

func (k *kvSystem) name() string { return kvName }

func (k *kvSystem) try(ctx context.Context, _ int, key string) (release, error) {
	rel, _, err := k.create(ctx, key)
	return rel, err
}

func (k *kvSystem) create(ctx context.Context, key string) (release, uint64, error) {
	rev, err := k.kv.Create(ctx, key, k.value, jetstream.KeyTTL(k.ttl))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, 0, errBusy
	}
	if err != nil {
		return nil, 0, err
	}
	return func(ctx context.Context) error {
		return k.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	}, rev, nil
}

func (k *kvSystem) wait(ctx context.Context, _ int, key string) (release, uint64, error) {
	for {
		k.attempts.Add(1)
		rel, rev, err := k.create(ctx, key)
		if !errors.Is(err, errBusy) {
			return rel, rev, err
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
	}
}
