package ring

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Defaults and limits of Config.
const (
	DefaultPartitions = 4096
	DefaultReplicas   = 3
	MaxPartitions     = 1 << 24
)

// Errors returned by New, wrapped with details.
var (
	ErrEmptyID       = errors.New("ring: empty member ID")
	ErrDuplicateID   = errors.New("ring: duplicate member ID")
	ErrInvalidWeight = errors.New("ring: invalid member weight")
	ErrInvalidConfig = errors.New("ring: invalid config")
)

// Member is a member of a ring.
type Member struct {
	// ID names the member. It is what is hashed, so it must be the same
	// on every process (a node ID, not an address that may differ).
	ID string
	// Weight is the member's relative capacity: a member of weight 2 owns
	// about twice as many keys as a member of weight 1. Zero means 1.
	// It must be finite and not negative.
	Weight float64
}

// Config tunes a ring. The zero value is ready to use.
type Config struct {
	// Partitions is the fixed number of partitions P keys are hashed into.
	// Zero means DefaultPartitions (4096); at most MaxPartitions.
	// Every process must use the same value: it is part of Version.
	Partitions int

	// Replicas is how many owners are precomputed per partition. Owners and
	// AppendOwners with n <= Replicas are an array read; larger n ranks the
	// members on the fly. Zero means DefaultReplicas (3). It does not change
	// placement, only memory (4·P·(Replicas+1) bytes) and speed.
	Replicas int

	// LoadFactor, when not zero, bounds the partitions a member is primary
	// owner of to ceil(LoadFactor·P·w/W) (bounded-load assignment, see the
	// package documentation). It must be >= 1. Zero (the default) means
	// plain rendezvous hashing, which never moves a partition between two
	// members that stayed; a bound trades a little of that property for
	// balance. Every process must use the same value: it is part of Version.
	LoadFactor float64
}

// Ring maps keys to members. It is immutable and safe for concurrent use;
// build a new Ring when the member set changes (see Holder).
//
// A nil *Ring behaves as a ring without members and without partitions.
type Ring struct {
	members    []Member // sorted by ID, weights normalized
	ids        []string // members[i].ID
	seeds      [][2]uint64
	logWeight  []float64 // ln(members[i].Weight)
	perm       permutation
	partitions int
	loadFactor float64
	depth      int     // owners stored per partition: min(Replicas, len(members))
	table      []int32 // table[p*depth+i] = index of the i-th owner of partition p
	primary    []int32 // primary[p] = table[p*depth], dense for Owner's cache footprint
	version    uint64
}

// New returns the ring of members. The result does not depend on the order
// of members: they are sorted by ID, and only IDs and weights are hashed.
func New(members []Member, cfg Config) (*Ring, error) {
	if cfg.Partitions == 0 {
		cfg.Partitions = DefaultPartitions
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = DefaultReplicas
	}
	switch {
	case cfg.Partitions < 0 || cfg.Partitions > MaxPartitions:
		return nil, fmt.Errorf("%w: Partitions %d not in [1, %d]", ErrInvalidConfig, cfg.Partitions, MaxPartitions)
	case cfg.Replicas < 0:
		return nil, fmt.Errorf("%w: Replicas %d < 0", ErrInvalidConfig, cfg.Replicas)
	case cfg.LoadFactor != 0 && !(cfg.LoadFactor >= 1 && cfg.LoadFactor <= math.MaxFloat64):
		return nil, fmt.Errorf("%w: LoadFactor %v is neither 0 nor a finite number >= 1", ErrInvalidConfig, cfg.LoadFactor)
	}

	ms := slices.Clone(members)
	for i := range ms {
		m := &ms[i]
		if m.ID == "" {
			return nil, ErrEmptyID
		}
		if !(m.Weight >= 0 && m.Weight <= math.MaxFloat64) {
			return nil, fmt.Errorf("%w: member %q has weight %v", ErrInvalidWeight, m.ID, m.Weight)
		}
		if m.Weight == 0 {
			m.Weight = 1
		}
	}
	slices.SortFunc(ms, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	for i := 1; i < len(ms); i++ {
		if ms[i].ID == ms[i-1].ID {
			return nil, fmt.Errorf("%w: %q", ErrDuplicateID, ms[i].ID)
		}
	}

	r := &Ring{
		members:    ms,
		ids:        make([]string, len(ms)),
		seeds:      make([][2]uint64, len(ms)),
		logWeight:  make([]float64, len(ms)),
		perm:       newPermutation(cfg.Partitions),
		partitions: cfg.Partitions,
		loadFactor: cfg.LoadFactor,
		depth:      min(cfg.Replicas, len(ms)),
		version:    version(cfg.Partitions, cfg.LoadFactor, ms),
	}
	for i, m := range ms {
		r.ids[i] = m.ID
		r.seeds[i][0], r.seeds[i][1] = memberSeed(m.ID)
		r.logWeight[i] = math.Log(m.Weight)
	}
	r.build()
	return r, nil
}

// build fills the owner table: for every partition, the members of highest
// score in order, with the bounded-load owner (if any) moved to the front.
func (r *Ring) build() {
	n, P := len(r.members), r.partitions
	if n == 0 {
		return
	}
	r.table = make([]int32, P*r.depth)
	scores := make([]float64, n)

	var room []int // partitions each member may still take as primary
	if r.loadFactor != 0 {
		var total, most float64
		for _, m := range r.members {
			total += m.Weight
			most = max(most, m.Weight)
		}
		scale := 1.0
		if math.IsInf(total, 1) { // huge weights: sum them scaled down
			scale, total = 1/most, 0
			for _, m := range r.members {
				total += m.Weight * scale
			}
		}
		room = make([]int, n)
		for i, m := range r.members {
			bound := math.Ceil(r.loadFactor * float64(P) * (m.Weight * scale / total))
			room[i] = int(min(bound, float64(P)))
		}
	}

	for p := range P {
		for i := range n {
			scores[i] = r.score(i, p)
		}
		top := r.table[p*r.depth : (p+1)*r.depth]
		topN(scores, top)
		if room == nil {
			continue
		}
		// Bounded load: the partition goes to its highest-ranked member
		// with room left. Partitions are taken in index order, which is as
		// good as any fixed order because keys are spread uniformly.
		owner := top[0]
		if room[owner] == 0 {
			owner = -1
			for i := range n {
				if room[i] > 0 && (owner < 0 || better(scores, int32(i), owner)) {
					owner = int32(i)
				}
			}
			if owner < 0 { // only if rounding left too little room in total
				owner = top[0]
			}
		}
		room[owner] = max(room[owner]-1, 0)
		promote(top, owner)
	}
	r.primary = make([]int32, P)
	for p := range r.primary {
		r.primary[p] = r.table[p*r.depth]
	}
}

func (r *Ring) score(i, p int) float64 {
	return score(r.perm, r.seeds[i][0], r.seeds[i][1], r.logWeight[i], p)
}

// better reports whether member a ranks before member b: higher score, and
// on a tie the smaller ID (members are sorted by ID).
func better(scores []float64, a, b int32) bool {
	return scores[a] > scores[b] || (scores[a] == scores[b] && a < b)
}

// topN fills top with the len(top) best-ranked members, best first.
func topN(scores []float64, top []int32) {
	k := 0
	for i := range int32(len(scores)) {
		if k == len(top) && !better(scores, i, top[k-1]) {
			continue
		}
		j := min(k, len(top)-1)
		for j > 0 && better(scores, i, top[j-1]) {
			top[j] = top[j-1]
			j--
		}
		top[j] = i
		k = min(k+1, len(top))
	}
}

// promote moves owner to the front of top, keeping the order of the others
// (and dropping the last one if owner was not in top).
func promote(top []int32, owner int32) {
	j := slices.Index(top, owner)
	if j < 0 {
		j = len(top) - 1
	}
	copy(top[1:j+1], top[:j])
	top[0] = owner
}

// Owner returns the member that owns key, or "" if the ring has no members.
// It is an array read and does not allocate.
func (r *Ring) Owner(key string) string {
	if r == nil || r.depth == 0 {
		return ""
	}
	return r.ids[r.primary[r.partition(key)]]
}

// Owners returns the first n owners of key in preference order: n distinct
// members (fewer if the ring has fewer), the first being Owner(key). Use the
// first R as the replica set of key. It returns nil if the ring is empty.
func (r *Ring) Owners(key string, n int) []string {
	if r.Len() == 0 || n <= 0 {
		return nil
	}
	return r.AppendOwners(make([]string, 0, min(n, r.Len())), key, n)
}

// AppendOwners appends Owners(key, n) to dst and returns the extended
// slice. It does not allocate when n <= Config.Replicas and dst has room.
func (r *Ring) AppendOwners(dst []string, key string, n int) []string {
	if r.Len() == 0 {
		return dst
	}
	return r.appendOwners(dst, r.partition(key), n)
}

// Partition returns the partition of key, in [0, Partitions()). It returns
// -1 on a nil ring.
func (r *Ring) Partition(key string) int {
	if r == nil {
		return -1
	}
	return r.partition(key)
}

func (r *Ring) partition(key string) int {
	// Map the 64-bit hash onto [0, P) with a multiply-shift instead of a
	// modulo (Lemire's fast range reduction).
	hi, _ := bits.Mul64(xxhash.Sum64String(key), uint64(r.partitions))
	return int(hi)
}

// PartitionOwners returns the first n owners of partition p in preference
// order, like Owners. It returns nil if p is out of range or the ring is
// empty.
func (r *Ring) PartitionOwners(p, n int) []string {
	if r.Len() == 0 || n <= 0 || p < 0 || p >= r.partitions {
		return nil
	}
	return r.appendOwners(make([]string, 0, min(n, r.Len())), p, n)
}

func (r *Ring) appendOwners(dst []string, p, n int) []string {
	n = min(n, len(r.members))
	row := r.table[p*r.depth : (p+1)*r.depth]
	if n <= r.depth {
		for _, i := range row[:n] {
			dst = append(dst, r.ids[i])
		}
		return dst
	}
	// Beyond the table: rank all members. The stored primary stays first
	// (it may differ from the top score under a LoadFactor), the others
	// follow in score order. O(len(members)·n), one allocation.
	scores := make([]float64, len(r.members))
	for i := range scores {
		scores[i] = r.score(i, p)
	}
	primary := row[0]
	dst = append(dst, r.ids[primary])
	prev := int32(-1)
	for range n - 1 {
		next := int32(-1)
		for i := range int32(len(scores)) {
			if i == primary || (prev >= 0 && !better(scores, prev, i)) {
				continue
			}
			if next < 0 || better(scores, i, next) {
				next = i
			}
		}
		dst = append(dst, r.ids[next])
		prev = next
	}
	return dst
}

// Members returns the members sorted by ID, with zero weights replaced by 1.
func (r *Ring) Members() []Member {
	if r == nil {
		return nil
	}
	return slices.Clone(r.members)
}

// Len returns the number of members.
func (r *Ring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.members)
}

// Partitions returns the number of partitions P (0 for a nil ring).
func (r *Ring) Partitions() int {
	if r == nil {
		return 0
	}
	return r.partitions
}

// Version identifies the placement: a 64-bit xxhash of the algorithm, the
// partition count, the load factor and the members sorted by ID with their
// weights. Two rings with the same Version place every key identically, on
// any process; it is meant to travel in heartbeats and forwarded requests so
// that peers can tell whether they agree. A nil ring has version 0.
func (r *Ring) Version() uint64 {
	if r == nil {
		return 0
	}
	return r.version
}

// Moved returns, in increasing order, the partitions of next whose primary
// owner differs from their primary owner in prev: the partitions whose keys
// a rebalance has to hand over. Partitions without an owner compare as "".
// If the rings have different partition counts, keys map to different
// partitions altogether and every partition of next is returned.
func Moved(prev, next *Ring) []int {
	var moved []int
	P := next.Partitions()
	for p := range P {
		if prev.Partitions() != P || prev.primaryID(p) != next.primaryID(p) {
			moved = append(moved, p)
		}
	}
	return moved
}

func (r *Ring) primaryID(p int) string {
	if r.depth == 0 {
		return ""
	}
	return r.ids[r.primary[p]]
}
