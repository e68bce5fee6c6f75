// Package cache is the mesh's sharded, replicated in-memory cache — a node
// (Server) and its Go SDK (Client).
//
// # Subjects
//
//	subject                          request                        reply
//	mesh.cache.get                   {key}                          {found, value, ttl_ms}
//	mesh.cache.set                   {key, value, ttl_ms}           {copies}
//	mesh.cache.del                   {key}                          {deleted}
//	mesh.cache.mget                  {keys}                         {values: [{found, value, ttl_ms}]}
//	mesh.cache.mset                  {items: [{key, value, ttl_ms}]} {stored}
//	mesh.cache.stats                 {}                             {total, nodes}
//	mesh.cache.node.<id>.<op>        the same, served by node <id> (stats: that node's figures)
//	mesh.cache.node.<id>.put         {items: [{key, value, ttl_ms, version}]} {stored}  (between nodes)
//	mesh.cache.node.<id>.digest      {partitions, digests}          {digests: [{keys, hash}]}  (between nodes)
//	mesh.cache.node.<id>.identity    {}                             the node's heartbeat: nodes and clients route keys to a
//	                                                                new node once it answers with its own id and start time
//	mesh.heartbeat.cache.<id>        the nodes' membership heartbeats (package membership)
//	mesh.events.cache.<what>         node_joined, node_left, rebalance_started, rebalance_finished
//
// A miss is a reply ({"found": false}), not an error; the Client returns
// ErrNotFound. Values are bytes: a string in JSON when they are UTF-8 text,
// else {"base64": "..."}; bin (or str) in msgpack. ttl_ms 0 keeps a value
// until it is evicted or deleted; at most MaxTTLms (366 days): a larger
// one is refused, never wrapped. set requires value ("" is an empty value).
// Errors: invalid_key (empty, over 1024 bytes, not UTF-8), invalid_ttl
// (negative or over MaxTTLms), value_too_large (over
// Config.MaxValueBytes, 1 MiB by default), invalid (an empty or oversized
// batch), unavailable (503: the owner or a replica did not answer),
// loader_failed (502), and pkg/bus's unknown_field and invalid for a field
// the request does not have or of the wrong type (requests are read
// strictly: a misspelt "ttl" is refused, not ignored).
//
// # Routing
//
// Keys are placed by the ring of package ring, built from the nodes'
// heartbeats: the key's owner is the first of its R copy holders
// (Config.Replicas, 2 by default, at most the number of nodes). The Client
// keeps the same ring and sends a request straight to the owner on
// mesh.cache.node.<owner>.<op>; when the owner does not answer within
// ClientConfig.AttemptTimeout it tries the next copy holder. A request on
// a service subject reaches any node (a queue group). A node serves a read
// from memory when it holds a copy of the key, and otherwise passes the
// request to the owner once, with the header Mesh-Hop: forward. A node never
// passes on a request that carries Mesh-Hop, so two nodes whose rings
// disagree for a moment answer from what they have instead of bouncing it.
// The owner's reply is passed back from the callback that receives it
// (replies.go); a worker asks the other copy holders only when the owner
// cannot be reached.
//
// # Replication
//
// A set is acknowledged when the owner and its R-1 replicas have stored it:
// the owner stores the value, sends it to the replicas (Mesh-Hop: replica)
// and answers once all have replied, or answers unavailable (503) naming the
// replica that did not. So after a node crashes, every acknowledged key is
// still held by another node, which the ring makes its owner once the crash
// is seen (within 4 heartbeat intervals); meanwhile the Client reads from
// the replica after the owner's attempt times out, and sends a request to
// any node (mesh.cache.<op>) when no copy holder its ring names answers:
// the nodes' rings may have seen the crash before the client's. Writes go on in that
// window too: when the owner does not answer, a replica takes the write as
// the owner would, and a replica that no longer listens (no responders) is
// replaced by the node next in the key's ring order, which holds the copy
// once the ring drops the dead one; a replica whose copy request times out
// is asked once more, so that one that died holding the request counts as
// gone rather than failing the set. When no node is left to stand in (two
// nodes, R = 2, one dead), the set is acknowledged with the copies the live
// nodes hold, and the reply's copies says how many. With one replica (R =
// 2), the owner answers from the replica's reply in the callback that
// receives it (replies.go), with no goroutine waiting for it; any other
// outcome takes the path above, on a worker. Reads of a batch go to the
// fewest copy holders that cover it (with 2 nodes and R = 2, one request): a
// replica answers for the keys it holds and passes its misses to their
// owners. A read right after an acknowledged set sees it on every copy; a
// read during a set may see the old or the new value.
//
// # Versions
//
// Every write of a key has a version, which decides which of two values a
// node keeps. The node that takes a set as owner gives it one from its
// hybrid clock (the time in unix nanoseconds, never repeating nor going
// back, and moved past every version the node receives); the copies it
// writes on the replicas carry it in the header Mesh-Version, and so does a
// hand-off. A node stores a copy only when its version is higher than the
// one it holds, so a hand-off never replaces a newer write, and a set that
// races a hand-off is neither lost nor overwritten by an older value. A
// write that reaches a node after the node received a value has a higher
// version than that value, whatever the clocks of the nodes; two writes of
// one key through different owners with no exchange between them (while
// the rings disagree) are ordered by the owners' clocks, so a clock behind
// by more than the time between them lets the earlier one win. A delete is
// remembered with its version for Config.Grace, so that a hand-off of an
// older version does not bring the key back.
//
// # Rebalancing
//
// After each change of the ring (a join, a leave, a crash seen), at the end
// of the grace period, after a write that raced a change, and every
// Config.AntiEntropy (30 s), each node runs a hand-off pass over its keys,
// by partition. It asks each other copy holder of the partitions it holds
// for their digests (the number of keys and an xor of a hash of each key
// and its version), all holders at once, and sends the keys of a partition
// to each holder whose digest differs from its own, on
// mesh.cache.node.<id>.put: many partitions a batch, each value with the
// time it has left and its version, at most Config.HandoffRate keys a
// second (250,000). A node that is no longer a copy holder of a partition
// (a stray copy) does the same, then drops each copy once every holder has
// it, unless the key was written again meanwhile. So a joining node
// receives its keys without being asked, the survivors of a crash bring
// every partition back to R copies, and a copy written by a node whose ring
// was behind reaches the holders. The request carries the asker's own
// digests, and a node's first pass after its start asks for every
// partition it holds, keys or none: a holder that has keys of a partition
// the asker has none of runs a pass at once, so a node that restarted
// empty before the others' rings saw it go gets its keys back. A node
// whose ring lacks itself (its own heartbeats went unseen, as in a starved
// process) hands nothing off and drops nothing until it is back. A pass that cannot reach a holder leaves
// its partitions counted as under-replicated and is tried again after four
// heartbeats; a change of the ring during a pass starts a new one. Digests
// that differ only because a key expired at a slightly different time on
// each node cost a resend of that partition, which changes nothing.
//
// Stop (SIGTERM to mesh serve cache) hands the node's keys off to the nodes
// that hold them once it is gone (bounded by Config.LeaveTimeout, 30 s, and
// half the time Stop's context has left) before it publishes its leave, then, once its requests in
// flight are done, hands off the writes that came in meanwhile.
//
// Until its keys arrive, a node that misses a key it now owns asks the
// key's owners under the previous ring (Mesh-Hop: handoff) before answering
// a miss, for Config.Grace (30 s); a new node also asks the owners the key
// had before it joined, as other nodes may route by that ring a little
// longer. A value found this way is stored with the time it had left, at
// version 0 (the hand-off replaces it). So a join causes no miss storm.
// The window lasts beyond the grace period while keys keep coming by
// hand-off (one within the last 4 heartbeats, or 2 s); a hand-off stalled
// longer than that answers misses for the keys it has not moved yet (they
// are not lost: their previous holders still have them and send them). A
// delete within the window also removes the previous owners' copies.
//
// Each node's stats count the keys it handed off (acknowledged) and
// received, the partitions it has keys in that are under-replicated now,
// how long its last hand-off took, and the ring whose hand-off it completed
// last (rebalanced_ring): when that is its ring and nothing is
// under-replicated, every key it holds is on all its copy holders. Every
// node reports its own rebalance_started (reason, ring, keys) and
// rebalance_finished (complete, handed_off, dropped, received,
// under_replicated, duration_ms) when a pass has anything to do or follows
// a change; the node with the smallest id reports joins and leaves.
//
// So an acknowledged set survives the crash of any one node (R ≥ 2) at any
// time once the pass that follows each change has completed: the window is
// that pass (bench/README.md has its length for 100k and 1M keys). Two
// crashes within one pass can lose the keys whose two copies they held.
//
// # Store
//
// Each node keeps its keys in memory, in an otter v2 cache (W-TinyLFU
// eviction, a TTL per key), bounded by Config.MaxBytes. An entry is one
// allocation holding its expiry, key and value, which otter's node points
// to; the bound counts keys, values and a fixed overhead per entry that is
// what the node, the allocation's header and rounding and the hash table
// take (bench/cache -memory measures it); otter may exceed the bound
// briefly while it evicts. An entry's header holds its expiry, the value's
// length and its version. Stats count hits, misses, evictions, items, bytes,
// forwards, hand-offs and loads per node; mesh.cache.stats sums the nodes.
// A node whose memory is full evicts keys its peers hold, and their next
// pass sends them again: under memory pressure R copies are not kept.
//
// # Read-through loading
//
// Config.Loaders names a loader subject per namespace (the part of a key
// before its first ':'). On a miss of such a key, its owner requests
// {"key": ...} from the loader and expects {found, value, ttl_ms}; however
// many requests miss the key at once, the loader is asked once and all of
// them get its answer (singleflight, as groupcache does). The value is stored
// on the owner and its replicas. A loader error or timeout is loader_failed.
//
// # Speed
//
// Handlers run Inline (see bus.Endpoint): a hit is answered in the
// subscription's callback, and GET and MGET requests and replies in msgpack
// use a hand-written codec (FuzzFastPath checks it against the generic
// one). An MGET of up to 16 keys that the node holds and has is answered
// straight from the request's bytes, without copying a key; any other
// takes the general path. msgpack replies of GET hits and of MGETs are
// written into pooled buffers (bus.Call.ReplyPooled), up to 64 KiB. otter
// reads a coarse clock (100 ms), as it needs
// the time only to drop expired entries: a read checks the entry's own
// expiry exactly, and otter drops an entry once its clock passes the
// expiry, never before. Work that waits on another node runs on the
// service's workers. Figures: bench/README.md.
package cache
