package lock

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meshkit/mesh/pkg/bus"
)

// Subjects of the lock service.
const (
	SubjectAcquire = "mesh.lock.acquire"
	SubjectRelease = "mesh.lock.release"
	SubjectRenew   = "mesh.lock.renew"
	SubjectInspect = "mesh.lock.inspect"
	SubjectList    = "mesh.lock.list"
)

// Limits checked at the edge.
const (
	MaxNameLen  = 256
	MaxOwnerLen = 256
	MinTTL      = 1000      // ms: the server's TTLs have a resolution of one second
	MaxLimit    = 1 << 16   // holders of one semaphore
	maxWaitMs   = 3_600_000 // an hour
)

// Errors of the lock service. Across the wire they are codes; the Client
// maps them back, so errors.Is works on either side.
var (
	// ErrLocked: the lock is held and the request did not wait (wait_ms 0).
	ErrLocked = bus.NewError(409, "lock_held", "the lock is held")
	// ErrWaitTimeout: the lock was still held when wait_ms ran out.
	ErrWaitTimeout = bus.NewError(408, "wait_timeout", "the lock was not free in time")
	// ErrNotHeld: no holder of the name has this token (released, expired,
	// or never granted).
	ErrNotHeld = bus.NewError(409, "not_held", "the lock is not held with this token")
	// ErrInvalidName: empty, too long, or outside the name charset.
	ErrInvalidName = bus.NewError(400, "invalid_name", "invalid lock name")
	// ErrInvalidTTL: ttl_ms outside [MinTTL, the server's maximum].
	ErrInvalidTTL = bus.NewError(400, "invalid_ttl", "invalid ttl_ms")
	// ErrInvalid: another field is out of range.
	ErrInvalid = bus.NewError(400, "invalid", "invalid request")
	// ErrExpired: the request reached the service after its deadline; it
	// changed nothing.
	ErrExpired = bus.NewError(408, "expired", "the request arrived after its deadline")
	// ErrLimitMismatch: the name has holders or waiters that asked with
	// another limit; the request changed nothing.
	ErrLimitMismatch = bus.NewError(409, "limit_mismatch", "the lock is in use with another limit")
)

// AcquireRequest asks for a lease on a lock (or on one of limit slots).
type AcquireRequest struct {
	Name   string `json:"name"`
	Owner  string `json:"owner,omitempty"` // who holds it, for people: host, pid, job id
	TTLms  int64  `json:"ttl_ms"`          // the lease's time to live on the server
	WaitMs int64  `json:"wait_ms"`         // 0: try once; else wait in line up to this long
	Limit  int    `json:"limit,omitempty"` // > 1: a counting semaphore of limit holders
	// Deadline is when the caller stops waiting for the reply. A request
	// that reaches the service more than DeadlineSkew after it (it sat in a
	// stalled instance's socket, say) is refused with ErrExpired and writes
	// nothing, instead of taking a place in line for a caller that is gone.
	Deadline *bus.Time `json:"deadline,omitempty"`
}

// DeadlineSkew is how far the clocks of a caller and the service may differ
// before a request's deadline is trusted.
const DeadlineSkew = time.Second

// AcquireReply grants a lease.
type AcquireReply struct {
	Token     uint64   `json:"token"` // fencing token: grows with every grant of the name
	ExpiresAt bus.Time `json:"expires_at"`
}

// ReleaseRequest gives a lease back.
type ReleaseRequest struct {
	Name  string `json:"name"`
	Token uint64 `json:"token"`
}

// ReleaseReply confirms a release.
type ReleaseReply struct {
	Released bool `json:"released"`
}

// RenewRequest extends a lease, keeping its token.
type RenewRequest struct {
	Name  string `json:"name"`
	Token uint64 `json:"token"`
	TTLms int64  `json:"ttl_ms"`
}

// RenewReply tells the new expiry.
type RenewReply struct {
	ExpiresAt bus.Time `json:"expires_at"`
}

// InspectRequest asks who holds a lock and who waits.
type InspectRequest struct {
	Name string `json:"name"`
}

// InspectReply describes a lock.
type InspectReply struct {
	Name    string   `json:"name"`
	Held    bool     `json:"held"`
	Limit   int      `json:"limit"`
	Holders []Holder `json:"holders"`
	Waiters []Holder `json:"waiters"`
}

// Holder is one holder (or waiter) of a lock.
type Holder struct {
	Owner     string   `json:"owner"`
	Token     uint64   `json:"token"` // for a waiter: its place in line
	Since     bus.Time `json:"since"` // when it asked
	ExpiresAt bus.Time `json:"expires_at"`
}

// ListRequest lists the locks whose name starts with Prefix.
type ListRequest struct {
	Prefix string `json:"prefix,omitempty"`
	Limit  int    `json:"limit,omitempty"` // at most this many; zero: 1000
}

// ListReply lists locks, sorted by name.
type ListReply struct {
	Locks     []LockSummary `json:"locks"`
	Truncated bool          `json:"truncated,omitempty"`
}

// LockSummary is one lock of a list.
type LockSummary struct {
	Name    string `json:"name"`
	Holders int    `json:"holders"`
	Waiters int    `json:"waiters"`
	Limit   int    `json:"limit"`
}

// CheckName reports whether name can name a lock: 1 to MaxNameLen bytes of
// letters, digits, '-', '_', '/', '=', in tokens separated by single dots.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return ErrInvalidName.With("lock name must be 1 to %d bytes, got %d", MaxNameLen, len(name))
	}
	for _, tok := range strings.Split(name, ".") {
		if tok == "" {
			return ErrInvalidName.With("lock name %q has an empty token (leading, trailing or double dot)", name)
		}
		for _, c := range tok {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/' || c == '=') {
				return ErrInvalidName.With("lock name %q: character %q is not allowed (letters, digits, - _ / = and dots)", name, c)
			}
		}
	}
	return nil
}

func checkTTL(ttlMs, maxTTL int64) error {
	if ttlMs < MinTTL || ttlMs > maxTTL {
		return ErrInvalidTTL.With("ttl_ms must be in [%d, %d], got %d", MinTTL, maxTTL, ttlMs)
	}
	return nil
}

func checkOwner(owner string) error {
	if len(owner) > MaxOwnerLen || !utf8.ValidString(owner) {
		return ErrInvalid.With("owner must be UTF-8 of at most %d bytes", MaxOwnerLen)
	}
	return nil
}

// Validate implements bus.Validator. The TTL bound is the service's and is
// checked by the service.
func (r *AcquireRequest) Validate() error {
	if err := CheckName(r.Name); err != nil {
		return err
	}
	if err := checkOwner(r.Owner); err != nil {
		return err
	}
	if r.WaitMs < 0 || r.WaitMs > maxWaitMs {
		return ErrInvalid.With("wait_ms must be in [0, %d], got %d", maxWaitMs, r.WaitMs)
	}
	if r.Limit < 0 || r.Limit > MaxLimit {
		return ErrInvalid.With("limit must be in [0, %d], got %d", MaxLimit, r.Limit)
	}
	return nil
}

// Validate implements bus.Validator.
func (r *ReleaseRequest) Validate() error { return checkNameToken(r.Name, r.Token) }

// Validate implements bus.Validator.
func (r *RenewRequest) Validate() error { return checkNameToken(r.Name, r.Token) }

// Validate implements bus.Validator.
func (r *InspectRequest) Validate() error { return CheckName(r.Name) }

// Validate implements bus.Validator.
func (r *ListRequest) Validate() error {
	if r.Prefix != "" && (len(r.Prefix) > MaxNameLen || !utf8.ValidString(r.Prefix)) {
		return ErrInvalid.With("prefix must be UTF-8 of at most %d bytes", MaxNameLen)
	}
	if r.Limit < 0 {
		return ErrInvalid.With("limit must not be negative")
	}
	return nil
}

func checkNameToken(name string, token uint64) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if token == 0 {
		return ErrInvalid.With("token is required")
	}
	return nil
}

func (r *AcquireRequest) limit() int { return max(r.Limit, 1) }

func (r *AcquireRequest) String() string {
	return fmt.Sprintf("%s (owner %q, ttl %dms, wait %dms, limit %d)", r.Name, r.Owner, r.TTLms, r.WaitMs, r.limit())
}
