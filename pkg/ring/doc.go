// Package ring is mesh's consistent hashing: it maps a key to the members
// that own it, the same way on every process that knows the same members.
// It is pure computation (no I/O, no NATS, no goroutines); the membership
// layer turns heartbeats into member lists and builds rings from them.
//
//	r, err := ring.New([]ring.Member{{ID: "a"}, {ID: "b"}, {ID: "c", Weight: 2}}, ring.Config{})
//	owner := r.Owner("user:42")         // the primary owner
//	replicas := r.Owners("user:42", 2)  // primary, then the next in line
//
// A Ring is immutable and safe for concurrent use. When the member set
// changes, build a new Ring and Store it in a Holder: lookups Load the
// current ring with one atomic read and take no lock. Moved lists the
// partitions whose primary changed between two rings.
//
// # Algorithm
//
// A key is hashed with xxhash64 and mapped onto one of P fixed partitions
// (Config.Partitions, 4096 by default) by multiply-shift, hi64(h·P). Members
// own partitions, not keys, so everything per member is computed once per
// partition in New and a lookup is an array read.
//
// The owners of a partition are all members ranked by weighted rendezvous
// (highest random weight, HRW) hashing: member i scores -w_i/ln(u) for the
// partition, with u in (0,1) derived from hash(ID, partition), and the
// higher score ranks first (ties go to the smaller ID; scores are compared
// as ln(w) - ln(-ln(u)), the same order without overflow). -ln(u)/w is an
// exponential variable of rate w, so member i ranks first with probability
// exactly w_i/W. New stores the first Config.Replicas (3) members of every
// partition; Owners(key, n) returns the first n, the primary being Owner.
//
// u is stratified: for each member, the partitions are put in a pseudo-random
// order by a keyed permutation (a four-round Feistel network keyed by the ID
// hash, cycle-walked to [0, P)), and the partition of rank k gets
// u = 1 - (k+f)/P with a jitter f in (0,1) also hashed from (ID, partition).
// Every u is still uniform, so the shares above hold exactly, but each member
// draws every slice of (0,1) exactly once instead of P independent draws:
// this removes the member's own part of the variance, about 30% of the
// spread. With 10 equal members the largest owns on average 1.05× the mean
// number of partitions, against 1.075× with independent draws (simulated).
//
// Rings are identical on every process: members are sorted by ID and only
// IDs and weights are hashed, never positions. Version is a 64-bit hash of
// the algorithm, P, the load factor and the sorted members with their
// weights; it is meant to travel in heartbeats and forwarded requests so
// that two nodes can tell whether they route alike.
//
// # Movement and balance
//
// Because the ranking of a partition depends only on the IDs it ranks, a
// join inserts the new member into each partition's order and a leave
// removes one, leaving the order of everybody else untouched: a join moves
// keys only to the new member, a leave moves only the leaver's keys, and
// not one key moves between two members that stayed, for the primary and
// for every replica position. The keys moved are exactly the new (or
// leaving) member's share, the minimum any scheme must move. The tests
// check this over every partition.
//
// The price is balance. Zero movement between the members that stay, for
// every possible member set, forces each partition's owner to be the best of
// a fixed ranking of all possible IDs (a choice that never changes when
// another option is added or removed is the maximum of a fixed order), so
// each member's partition count is a sum of per-partition chances and its
// spread shrinks only as 1/√P. With 10 equal members, max/mean of
// partitions is 1.052 on average over 200 random member sets with P = 4096
// (1.113 at worst), and 1.013 over 30 sets with P = 65536 (1.019 at worst;
// 16× the memory and build time, lookups barely slower). No assignment
// computed from the member set alone can give both zero movement and a
// guaranteed bound.
//
// Config.LoadFactor chooses the other side of that trade. With LoadFactor c,
// partitions are taken in index order and each goes to its highest-ranked
// member that owns fewer than ceil(c·P·w/W) partitions so far (consistent
// hashing with bounded loads, applied to partitions; replicas after the
// primary keep the HRW order). With c = 1 the largest member owns at most
// one partition above its share, but a join or leave also moves about 0.8%
// of the keys between members that stayed (0.5% to 1.1% in the runs below),
// and about 1.08× the minimum in all.
//
// # Compared with
//
// groupcache's consistenthash puts 50 to 160 crc32 virtual nodes per member
// on a circle and binary-searches it on every lookup: a lookup costs a
// []byte conversion (one allocation) and a search, balance depends on the
// virtual nodes (max/mean 1.28 with 50, 1.20 with 160, measured below), and
// there are no weights and no replica lists. It moves no keys between
// members that stay, but a joining member gets between 7.4% and 10.8% of
// the keys instead of 9.1%.
//
// buraksezer/consistent partitions keys too (271 by default) but assigns the
// partitions with bounded loads over a circle of 20 virtual nodes per
// member, recomputed from scratch on every change: balance is bounded by
// its load factor (1.25), and a change moves keys between members that stay
// (1.3% on average, up to 4.5%, measured below). Every lookup takes a
// sync.RWMutex read lock, which does not scale with cores, and GetClosestN
// hashes every member name per call.
//
// This package pays the ranking work once per partition in New instead, so
// its lookups do no search, take no lock and do not allocate.
//
// # Complexity
//
// New evaluates P·N scores (N members; a Feistel permutation and a logarithm
// each) and keeps the best Replicas per partition: O(P·N·Replicas) time in
// the worst case, about 2.1 ms for 10 members and P = 4096, 19 ms for 100; it
// holds 4·P·(Replicas+1) bytes of tables. Owner and Partition hash the key
// and read an array: O(len(key)), no allocation. Owners and AppendOwners are
// O(n) for n <= Replicas (AppendOwners without allocation), and rank the
// members on the fly for larger n: O(N·n) and one allocation.
//
// # Measured
//
// bench/ring (cd bench && go run ./ring), 2 CPUs (nproc) Intel(R) Xeon(R)
// Processor (KVM), go1.26.8 linux/amd64, 2026-11-25, load average 0.52 at
// the start and 1.92 at the end (other jobs were running; lookup times vary
// by about ±20% between runs, the other figures are exact). 10 members
// node-0..node-9 of weight 1, 1,000,000 random keys; lookup ns/op is the
// median of 5 testing.Benchmark runs over the 1M keys; joins:
// node-10..node-19 each join the 10 alone; leaves: each of the 10 leaves in
// turn; mean [min–max].
// Columns: mesh = this package with the defaults (P = 4096); LF=1 = with
// LoadFactor 1; P=65536 = with 65536 partitions; gc50 and gc160 =
// groupcache consistenthash, crc32, 50 and 160 replicas; bsc =
// buraksezer/consistent v0.10.0, 271 partitions, load 1.25, replication
// factor 20, xxhash.
//
//	                              ideal   mesh     LF=1     P=65536  gc50     gc160    bsc
//	lookup ns/op, 1 goroutine              7.8      7.1      8.4     92.0     97.1     22.4
//	lookup ns/op, 2 goroutines             3.5      3.6      4.0     48.5     69.2    103.3
//	parallel speed-up              2×      2.22×    1.99×    2.09×    1.90×    1.40×    0.22×
//	allocs per lookup              0       0        0        0        1        1        0
//	build a ring of 10                     2.1ms    2.2ms   34.1ms    71µs    212µs    141µs
//	keys per member, max/mean      1       1.0453   1.0047   1.0246   1.2761   1.1955   1.2510
//	keys per member, stddev/mean   0       0.0255   0.0045   0.0132   0.1505   0.1229   0.1611
//	join: keys moved, mean         9.09%   9.07%    9.86%    9.09%    9.07%    8.05%   10.64%
//	                  min–max              8.69–    9.61–    9.00–    7.48–    7.35–    6.26–
//	                                       9.43%   10.12%    9.20%   10.75%    8.86%   12.91%
//	join: moved between unchanged  0       0        0.76%    0        0        0        1.33%
//	leave: keys moved, mean       10.00%  10.00%   10.75%   10.00%   10.00%   10.00%   11.26%
//	                   min–max             9.44–   10.36–    9.77–    7.89–    7.76–    7.39–
//	                                      10.45%   11.02%   10.25%   12.76%   11.95%   15.87%
//	leave: moved between unchanged 0       0        0.75%    0        0        0        1.26%
//
// For the defaults: lookups meet the 30 ns, zero-allocation target and
// scale with cores; a join or leave moves exactly the member's share and
// nothing between members that stay; but the balance of keys is 1.045, not
// 1.02, for the reason given above. LoadFactor 1 reaches 1.005 at the cost
// of 0.76% of keys moving between unchanged members; P = 65536 reaches
// 1.025 here (1.013 on average over member sets) with zero such moves.
package ring
