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
//	mesh.cache.node.<id>.identity    {}                             the node's heartbeat: nodes and clients route keys to a
//	                                                                new node once it answers with its own id and start time
//	mesh.heartbeat.cache.<id>        the nodes' membership heartbeats (package membership)
//	mesh.events.cache.<what>         node_joined, node_left, rebalance_started, rebalance_finished
//
// A miss is a reply ({"found": false}), not an error; the Client returns
// ErrNotFound. Values are bytes: a string in JSON when they are UTF-8 text,
// else {"base64": "..."}; bin (or str) in msgpack. ttl_ms 0 keeps a value
// until it is evicted or deleted. Errors: invalid_key (empty, over 1024
// bytes, not UTF-8), invalid_ttl (negative), value_too_large (over
// Config.MaxValueBytes, 1 MiB by default), invalid (an empty or oversized
// batch), unavailable (503: the owner or a replica did not answer),
// loader_failed (502).
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
// # Rebalancing
//
// After a change of the ring, a node that misses a key it now owns asks the
// key's owners under the previous ring (Mesh-Hop: handoff) before answering a
// miss, for Config.Grace (30 s); a new node also asks the owners the key had
// before it joined, as other nodes may route by that ring a little longer.
// A value found this way is stored with the time it had left. So a join
// moves keys on demand and causes no miss storm. A delete during the grace
// period also removes the previous owners' copies, so that a hand-off cannot
// bring a deleted key back. At the end of the grace period a node drops the
// keys it no longer holds a copy of, so that a later change cannot serve a
// stale copy. The node with the smallest id reports joins and leaves as
// events; every node reports its own rebalance_started and
// rebalance_finished (with the keys it dropped).
//
// # Store
//
// Each node keeps its keys in memory, in an otter v2 cache (W-TinyLFU
// eviction, a TTL per key), bounded by Config.MaxBytes. An entry is one
// allocation holding its expiry, key and value, which otter's node points
// to; the bound counts keys, values and a fixed overhead per entry that is
// what the node, the allocation's header and rounding and the hash table
// take (bench/cache -memory measures it); otter may exceed the bound
// briefly while it evicts. Stats count hits, misses, evictions, items, bytes, forwards,
// hand-offs and loads per node; mesh.cache.stats sums the nodes.
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
// written into pooled buffers (bus.Pooled), up to 64 KiB. otter reads a coarse clock (100 ms), as it needs
// the time only to drop expired entries: a read checks the entry's own
// expiry exactly, and otter drops an entry once its clock passes the
// expiry, never before. Work that waits on another node runs on the
// service's workers. Figures: bench/README.md.
package cache
