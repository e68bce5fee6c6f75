package console

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
	"github.com/meshkit/mesh/services/cache"
)

// cacheView is the cache page: the ring's members, every node's figures,
// the hit ratio chart, and a key's lookup.
type cacheView struct {
	RingVersion string
	Partitions  int
	Members     []memberRow
	Stats       cache.StatsReply
	StatsErr    error
	Hits        chart
	Items       chart
	Key         string
	Lookup      *keyLookup
}

type memberRow struct {
	membership.Member
	Owned int
	Share float64
}

// keyLookup is where a key lives and what it holds.
type keyLookup struct {
	Partition int
	Owners    []string // the owner first, then the replicas
	Found     bool
	Value     string
	Size      int
	Binary    bool
	Err       error
}

func (c *Console) cacheView(ctx context.Context, r *http.Request) (any, error) {
	v := &cacheView{Key: r.URL.Query().Get("key"), Hits: c.sampler.hitChart(), Items: c.sampler.itemChart()}
	rg := c.ring.Ring()
	v.RingVersion, v.Partitions = membership.FormatVersion(rg.Version()), rg.Partitions()
	owned := primaries(rg)
	for _, m := range c.ring.Members() {
		row := memberRow{Member: m, Owned: owned[m.ID]}
		if v.Partitions > 0 {
			row.Share = float64(row.Owned) / float64(v.Partitions)
		}
		v.Members = append(v.Members, row)
	}
	v.Stats, v.StatsErr = c.cache.Stats(ctx)
	// The lookup is made once, when the page is opened: the live part does
	// not repeat it (each lookup is a read that the node counts as a hit or
	// a miss).
	if v.Key != "" && r.URL.Path != "/live" {
		l := &keyLookup{Partition: rg.Partition(v.Key), Owners: rg.Owners(v.Key, c.cfg.CacheReplicas)}
		val, err := c.cache.Get(ctx, v.Key)
		switch {
		case errors.Is(err, cache.ErrNotFound):
		case err != nil:
			l.Err = err
		default:
			l.Found, l.Size = true, len(val)
			l.Binary = !utf8.Valid(val)
			s := string(val)
			if l.Binary {
				s = ""
			} else if len(s) > 2048 {
				s = strings.ToValidUTF8(s[:2048], "") + "…"
			}
			l.Value = s
		}
		v.Lookup = l
	}
	return v, nil
}

// primaries counts the partitions each member is the first owner of.
func primaries(r *ring.Ring) map[string]int {
	owned := map[string]int{}
	for p := range r.Partitions() {
		if o := r.PartitionOwners(p, 1); len(o) == 1 {
			owned[o[0]]++
		}
	}
	return owned
}
