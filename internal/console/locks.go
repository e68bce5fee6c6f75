package console

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meshkit/mesh/services/lock"
)

// locksShown is how many locks the locks page inspects (holders, tokens,
// expiries, waiters); the rest are listed by name with their counts.
const locksShown = 50

// locksView is the locks page.
type locksView struct {
	Prefix    string
	Locks     []lockRow
	More      []lock.LockSummary // listed beyond locksShown
	Total     int
	Truncated bool
	Grants    []event // the recent lock events, stored and live
	Stored    storedRead
}

// lockGrants is how many lock events the locks page shows.
const lockGrants = 30

type lockRow struct {
	lock.LockSummary
	Detail lock.InspectReply
	Err    error
}

func (c *Console) locksView(ctx context.Context, r *http.Request) (any, error) {
	prefix := strings.TrimSpace(r.URL.Query().Get("prefix"))
	v, err := c.lockViews.get(prefix, freshAfter(ctx), func() (*locksView, error) { return c.readLocks(ctx, prefix) })
	if err != nil {
		return &locksView{Prefix: prefix}, err
	}
	return v, nil
}

// readLocks lists the locks whose names start with prefix and inspects the
// first locksShown.
func (c *Console) readLocks(ctx context.Context, prefix string) (*locksView, error) {
	v := &locksView{Prefix: prefix}
	list, err := c.locks.List(ctx, v.Prefix)
	if err != nil {
		return v, err
	}
	v.Total, v.Truncated = len(list.Locks), list.Truncated
	shown := list.Locks
	if len(shown) > locksShown {
		shown, v.More = shown[:locksShown], shown[locksShown:]
	}
	v.Locks = make([]lockRow, len(shown))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, s := range shown {
		v.Locks[i].LockSummary = s
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			v.Locks[i].Detail, v.Locks[i].Err = c.locks.Inspect(ctx, s.Name)
		}()
	}
	wg.Wait()
	about := func(ev event) bool {
		return strings.HasPrefix(ev.Subject, "mesh.events.lock.") && (v.Prefix == "" || strings.HasPrefix(ev.Name, v.Prefix))
	}
	v.Stored = c.stored(ctx, "mesh.events.lock.>", time.Now().Add(-lockHistory), true, lockGrants, about, "lock\x00"+prefix)
	v.Grants = mergeEvents(v.Stored.Events, c.events.recent(lockGrants, about), lockGrants)
	return v, nil
}
