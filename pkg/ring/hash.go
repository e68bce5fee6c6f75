package ring

import (
	"encoding/binary"
	"math"
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// versionTag prefixes the data hashed by Version. Change it whenever the
// placement algorithm changes, so that processes running different
// algorithms never agree on a version.
const versionTag = "mesh-ring/1\x00"

// mix64 is the SplitMix64 finalizer: a fast bijective 64-bit mixer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

const golden = 0x9e3779b97f4a7c15 // 2^64 / phi, the SplitMix64 increment

// permutation is a keyed pseudo-random permutation of [0, n): a four-round
// balanced Feistel network on 2*half bits (a PRP by Luby-Rackoff), restricted
// to [0, n) by cycle walking.
type permutation struct {
	n    uint64
	half uint
	mask uint64
}

func newPermutation(n int) permutation {
	b := max(bits.Len(uint(n-1)), 2)
	half := uint(b+1) / 2
	return permutation{n: uint64(n), half: half, mask: 1<<half - 1}
}

// apply returns the image of x < n under the permutation keyed by seed.
func (q permutation) apply(seed, x uint64) uint64 {
	for {
		l, r := x>>q.half, x&q.mask
		for round := uint64(0); round < 4; round++ {
			l, r = r, l^(mix64(seed^(round<<56|r))&q.mask)
		}
		x = l<<q.half | r
		if x < q.n {
			return x
		}
	}
}

// memberSeed derives the two hash seeds of a member from its ID alone, so
// that a member's scores do not depend on the other members or their order.
func memberSeed(id string) (perm, jitter uint64) {
	h := xxhash.Sum64String(id)
	return h, mix64(h ^ golden)
}

// score is the weighted rendezvous score of one member for partition p
// (higher wins): -w / ln(u), where u in (0,1) is derived from the member's
// seeds and p. It is computed as ln(w) - ln(-ln(u)), the same order without
// overflow or underflow for any finite positive weight; logWeight is ln(w).
//
// u is stratified: u = 1 - (k+f)/P, where k = perm(p) is the partition's rank
// in a member-specific pseudo-random permutation of the P partitions and f in
// (0,1) is a per-(member, partition) jitter. Each u is still uniform on (0,1),
// so the probability that a member ranks first is exactly w_i/W, but each
// member sees every value range exactly once across the partitions, which
// removes the part of the load variance that comes from a member's own draws
// (about 30% of the standard deviation of plain HRW with independent draws).
//
// -ln(u) is computed as -log1p(-t) with t = 1-u, which keeps full precision
// for the scores that matter, those of members ranking a partition highly.
func score(q permutation, permSeed, jitterSeed uint64, logWeight float64, p int) float64 {
	k := q.apply(permSeed, uint64(p))
	f := (float64(mix64(jitterSeed+uint64(p+1)*golden)>>11) + 0.5) * (1.0 / (1 << 53))
	t := (float64(k) + f) / float64(q.n)
	return logWeight - math.Log(-math.Log1p(-t))
}

// version hashes everything that determines placement: the algorithm tag,
// the partition count, the load factor and the sorted members with their
// weights.
func version(partitions int, loadFactor float64, members []Member) uint64 {
	d := xxhash.New()
	var buf [binary.MaxVarintLen64]byte
	d.WriteString(versionTag)
	d.Write(binary.AppendUvarint(buf[:0], uint64(partitions)))
	d.Write(binary.LittleEndian.AppendUint64(buf[:0], math.Float64bits(loadFactor)))
	for _, m := range members {
		d.Write(binary.AppendUvarint(buf[:0], uint64(len(m.ID))))
		d.WriteString(m.ID)
		d.Write(binary.LittleEndian.AppendUint64(buf[:0], math.Float64bits(m.Weight)))
	}
	return d.Sum64()
}
