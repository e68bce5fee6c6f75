package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
)

// ErrLeaseLost is set on a Lease whose renewal was refused (it expired or
// was taken over), or could not reach the service before the lease ran out.
var ErrLeaseLost = errors.New("lock: lease lost")

// Options of an acquisition.
type Options struct {
	// TTL of the lease on the server; renewed automatically at TTL/3 while
	// the Lease is held. Zero: 30s. At least MinTTL ms.
	TTL time.Duration
	// Owner names the holder for people reading inspect and events. Zero:
	// the connection's name.
	Owner string
	// Limit > 1 makes the name a counting semaphore of Limit holders.
	// Every contender of a name must use the same Limit.
	Limit int
}

// Client is the Go SDK of the lock service.
type Client struct {
	nc *nats.Conn
}

// NewClient returns a client that talks to the lock service over nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

func (o Options) request(nc *nats.Conn, name string, wait time.Duration) AcquireRequest {
	ttl := o.TTL
	if ttl == 0 {
		ttl = 30 * time.Second
	}
	owner := o.Owner
	if owner == "" {
		owner = nc.Opts.Name
	}
	return AcquireRequest{Name: name, Owner: owner, TTLms: ttl.Milliseconds(), WaitMs: wait.Milliseconds(), Limit: o.Limit}
}

// TryAcquire takes the lock if it is free now, or fails with ErrLocked.
func (c *Client) TryAcquire(ctx context.Context, name string, o Options) (*Lease, error) {
	return c.acquire(ctx, o.request(c.nc, name, 0))
}

// Acquire waits in line for the lock until it is granted or ctx ends
// (ErrWaitTimeout, or ctx's error). Waiters are served in the order they
// asked. If ctx ends while the request is on its way back, the lease it
// carries is never renewed and expires after its TTL.
func (c *Client) Acquire(ctx context.Context, name string, o Options) (*Lease, error) {
	for {
		wait := time.Duration(maxWaitMs) * time.Millisecond
		if dl, ok := ctx.Deadline(); ok {
			wait = time.Until(dl) - 100*time.Millisecond // answer before the caller gives up
			if wait < time.Millisecond {
				return nil, fmt.Errorf("lock %s: %w", name, context.DeadlineExceeded)
			}
		}
		l, err := c.acquire(ctx, o.request(c.nc, name, wait))
		if errors.Is(err, ErrWaitTimeout) && ctx.Err() == nil {
			if _, ok := ctx.Deadline(); !ok {
				continue // an hour passed; wait on
			}
		}
		return l, err
	}
}

func (c *Client) acquire(ctx context.Context, req AcquireRequest) (*Lease, error) {
	rctx, cancel := context.WithTimeout(ctx, time.Duration(req.WaitMs)*time.Millisecond+bus.DefaultTimeout)
	defer cancel()
	if dl, ok := rctx.Deadline(); ok {
		req.Deadline = &bus.Time{Time: dl}
	}
	reply, err := bus.Request[AcquireRequest, AcquireReply](rctx, c.nc, SubjectAcquire, req)
	if err != nil {
		return nil, err
	}
	l := &Lease{
		c: c, name: req.Name, token: reply.Token, ttl: time.Duration(req.TTLms) * time.Millisecond,
		expires: reply.ExpiresAt.Time, done: make(chan struct{}), stop: make(chan struct{}),
	}
	go l.keepAlive()
	return l, nil
}

// Release releases the lease identified by name and token, for a holder
// that kept the token but not the Lease (a CLI, another process).
func (c *Client) Release(ctx context.Context, name string, token uint64) error {
	_, err := bus.Request[ReleaseRequest, ReleaseReply](ctx, c.nc, SubjectRelease, ReleaseRequest{Name: name, Token: token})
	return err
}

// Renew extends the lease identified by name and token to ttl from now.
func (c *Client) Renew(ctx context.Context, name string, token uint64, ttl time.Duration) (time.Time, error) {
	r, err := bus.Request[RenewRequest, RenewReply](ctx, c.nc, SubjectRenew, RenewRequest{Name: name, Token: token, TTLms: ttl.Milliseconds()})
	return r.ExpiresAt.Time, err
}

// Inspect tells who holds name and who waits for it.
func (c *Client) Inspect(ctx context.Context, name string) (InspectReply, error) {
	return bus.Request[InspectRequest, InspectReply](ctx, c.nc, SubjectInspect, InspectRequest{Name: name})
}

// List lists the locks whose name starts with prefix.
func (c *Client) List(ctx context.Context, prefix string) (ListReply, error) {
	return bus.Request[ListRequest, ListReply](ctx, c.nc, SubjectList, ListRequest{Prefix: prefix})
}

// Lease is a held lock. It renews itself at TTL/3 until Release, or until
// it is lost: then Done is closed and Err says why.
type Lease struct {
	c     *Client
	name  string
	token uint64
	ttl   time.Duration

	mu      sync.Mutex
	expires time.Time
	err     error
	stop    chan struct{}
	done    chan struct{}
}

// Name is the lock's name.
func (l *Lease) Name() string { return l.name }

// Token is the fencing token: it grows with every grant of the name, so a
// resource guarded by the lock can refuse writes carrying an older token.
func (l *Lease) Token() uint64 { return l.token }

// ExpiresAt is when the lease ends unless renewed, as last told by the
// service.
func (l *Lease) ExpiresAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expires
}

// Done is closed when the lease ends: released, or lost.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Err is nil while the lease is held or after Release, else wraps
// ErrLeaseLost with the cause.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *Lease) keepAlive() {
	defer close(l.done)
	t := time.NewTimer(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
		exp, err := l.c.Renew(ctx, l.name, l.token, l.ttl)
		cancel()
		l.mu.Lock()
		switch {
		case err == nil:
			l.expires = exp
		case errors.Is(err, ErrNotHeld) || !time.Now().Before(l.expires):
			l.err = fmt.Errorf("%w: %s (token %d): %w", ErrLeaseLost, l.name, l.token, err)
			l.mu.Unlock()
			return
		}
		next := l.ttl / 3
		if err != nil { // the service is away: retry sooner, while the lease lasts
			next = min(next, max(time.Until(l.expires)/4, 10*time.Millisecond))
		}
		l.mu.Unlock()
		t.Reset(next)
	}
}

// Release stops the renewals and gives the lock back. Releasing a lost lease
// returns its Err; releasing twice returns nil.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	select {
	case <-l.stop:
		l.mu.Unlock()
		return nil
	default:
	}
	close(l.stop)
	l.mu.Unlock()
	<-l.done
	if err := l.Err(); err != nil {
		return err
	}
	err := l.c.Release(ctx, l.name, l.token)
	if errors.Is(err, ErrNotHeld) {
		return fmt.Errorf("%w: %s (token %d): %w", ErrLeaseLost, l.name, l.token, err)
	}
	return err
}

// Locker returns a sync.Locker on name: Lock waits for the lock without a
// deadline and Unlock releases it. Like etcd's, it panics on an error: use
// Acquire where errors must be handled.
func (c *Client) Locker(name string, o Options) sync.Locker {
	return &locker{c: c, name: name, o: o}
}

type locker struct {
	c     *Client
	name  string
	o     Options
	lease *Lease
}

func (l *locker) Lock() {
	lease, err := l.c.Acquire(context.Background(), l.name, l.o)
	if err != nil {
		panic(fmt.Sprintf("lock: Lock %s: %v", l.name, err))
	}
	l.lease = lease
}

func (l *locker) Unlock() {
	if l.lease == nil {
		panic("lock: Unlock of unlocked " + l.name)
	}
	lease := l.lease
	l.lease = nil
	if err := lease.Release(context.Background()); err != nil {
		panic(fmt.Sprintf("lock: Unlock %s: %v", l.name, err))
	}
}
