// Package lock is the lock service of the mesh and its Go SDK: fenced,
// server-leased locks and counting semaphores, with fair (FIFO) waiting.
//
// # Subjects
//
//	subject             request                                        reply
//	mesh.lock.acquire   {name, owner, ttl_ms, wait_ms, limit, deadline} {token, expires_at}
//	mesh.lock.release   {name, token}                                  {released}
//	mesh.lock.renew     {name, token, ttl_ms}                          {expires_at}
//	mesh.lock.inspect   {name}                                         {name, held, limit, holders, waiters}
//	mesh.lock.list      {prefix, limit}                                {locks, truncated}
//	mesh.events.lock.acquired|released|expired                         event data {name, owner, token}
//
// Errors: lock_held (409, a try found it held), wait_timeout (408),
// expired (408, the request arrived after its deadline: see below),
// not_held (409, no holder has this token), limit_mismatch (409, the name
// is in use with another limit: see Semaphores), conflict (409, release or
// renew: other requests wrote or checked the holder's key at every try for
// 4 s; nothing changed, try again: see Conflicts), invalid_name, invalid_ttl,
// invalid (400). The Client maps them to ErrLocked, ErrWaitTimeout,
// ErrExpired, ErrNotHeld, ErrLimitMismatch, ErrInvalidName, ErrInvalidTTL
// and ErrInvalid. Durations are bounded: ttl_ms (acquire, renew) in
// [1000, Config.MaxTTL], 24 h by default; wait_ms at most 3,600,000 (an
// hour). A field the request does not have is refused with unknown_field
// (400), a wrong type with invalid.
//
// # How it works
//
// All state is in the JetStream KV bucket MESH_LOCKS (History 1, with
// LimitMarkerTTL so that an expiry leaves a marker that watchers see). Every
// request to take a lock, holder or waiter alike, creates its own key
// w.<name>.<id> with a per-key TTL (the lease lives on the server; no client
// clock decides it). The key's create revision is its place in line and, once
// granted, its fencing token. A key holds the lock when fewer than its limit
// (1 for a lock) keys of the name with a smaller revision exist. So grants
// follow the order of arrival, and tokens grow with every grant of a name
// (revisions only grow), as with etcd's per-waiter keys.
//
// An instance writes a request's key in the subscription's callback, before
// anything waits, so the keys of the requests it receives take their places
// in line in the order the requests arrived (bus.Endpoint Inline). When the
// key's acknowledgement shows it first in line, the grant is answered from
// the callback that receives acknowledgements (bus.Call.Reply there); otherwise the
// request waits on a worker. A release of a lock the mirror shows held
// purges the key in the callback too and is answered from the
// acknowledgement; any other release (a token the mirror does not show
// holding, a compare-and-set conflict) runs on a worker. Each hand-off
// between goroutines costs a thread's wake-up, which on a 2-vCPU VM is a
// large part of a request's latency: answering from the acknowledgement
// took serial acquire+release cycles from 598 to 880 a second in the
// benchmark (bench/README.md).
//
// Each service instance mirrors the bucket through a consumer of its own,
// read in order (feed.go; nats.go's ordered consumer, replaced for its
// failover, below). A
// waiting acquire sleeps until the mirror reports a change of its lock name,
// then checks its position in memory: a release wakes every local waiter of
// that name for a look at a map, but only the one now first in line does any
// round trip (herd-free). The uncontended path is one KV write to acquire
// and one to release.
//
// Answers are linearizable. A mirror may lag the bucket, but only by
// missing newer writes: a newer key cannot stand ahead of an older one, and
// a release it has not seen yet only makes a key wait longer. So a grant is
// given as soon as the mirror shows the key first in line, or, without
// waiting to see the key itself, as soon as the mirror has seen the bucket up
// to the revision before it and counts fewer than limit older keys. A refusal
// (lock_held, wait_timeout) is given only once the mirror has seen the
// request's own key, written after every release that completed before the
// request began; and when it is decided more than 20 ms after the key was
// written (a mirror lagging through a failover, or a wait that ran out),
// only after catching up as below, because a refused key still stands in
// line until it is taken out: decided on a stale view, it could stand first
// in line, refused, while others are told the lock is held (the cluster
// test that stops a node caught this). For the same reason the refused key
// is taken out only if the holder's key is unchanged since the view that
// refused it: the purge expects the holder key's last message (a
// last-sequence check on the subject w.<name>.<holder>). If the holder left
// meanwhile, the check fails and the refusal is decided again, on a
// caught-up view, where the key may now hold the lock and be granted
// (TestRefusedKeyFirstInLine; the linearizability test found two tries
// refused while nobody held). After 3 such changes the key is taken out
// regardless; only a change of the keys it rested on counts (a key ahead
// leaving, not one written again, nor a write in flight that changed
// nothing: see Conflicts). On a cluster the check also fails while a write
// of the holder's key (its release, a renewal) is still being replicated:
// nats-server matches the writes in flight by their exact subject. A
// newcomer joining the line changes nothing the refusal rests on
// (TestRefusalIgnoresNewcomers). A semaphore's refusal rests on every key
// ahead of the refused one, as any of them leaving moves it up: the purge is
// an atomic batch (nats-server 2.12+, the bucket allows them) of one message
// per key ahead, each checking that key's last revision, applied whole or
// not at all (TestSemaphoreRefusalRestsOnEveryKeyAhead, on one server and on
// a cluster). Past 64 keys ahead the refusal checks all the name's keys at
// once (w.<name>.*) instead; on a cluster that check sees the writes the
// stream has applied, not those still being replicated, so a release in
// flight at that moment can slip past it. A refusal whose batch the stream
// does not take (too many in flight, or at the moment an instance starting
// updates the bucket, which briefly allows none) falls back to that check. A
// not_held answer (release, renew) is given only after the instance has
// caught up: it writes a barrier key of its own and waits to see it, so
// every write made before the request began is in view. The tests check
// histories of concurrent clients with porcupine, on one server with one and
// two instances and on a 3-node cluster losing a node.
//
// Losing a NATS node: when the node that served a mirror's consumer goes,
// the mirror misses two heartbeats (1 s apart) and makes a new consumer;
// when the instance's own connection moves to another node, it does so at
// once (messages may have gone with the old connection). Until then
// acquires wait. Each request to make the consumer waits at most 1 s and
// is sent again until one is answered: nats.go's ordered consumer waits out
// a fixed 10 s on a request sent while the cluster has no meta leader, so
// with it, losing the node an instance was connected to, when that node led
// JetStream, stopped the instance's acquires for 11 s; it is 1.1 s with the
// feed (TestFailoverServiceNode). Answers stay correct meanwhile; they are
// late or time out. While the bucket's stream elects a leader no stream
// takes a key: an acquire sends its key again until its wait ends (a try,
// for a second), then answers unavailable (TestAcquireWhileBucketAway).
//
// A new consumer loads the bucket afresh, into a view that replaces the
// mirror's once loaded, rather than resuming after the last message seen:
// the marker of a key released while the instance was away expires after
// MarkerTTL, and a mirror that resumed would keep the key for good
// (TestAwayPastMarkers). As a precaution the tests do not provoke, the
// consumer is placed on the node that leads the bucket's stream (made
// again, up to 8 times, when the server puts it elsewhere): a node that is
// catching up after a restart may still hold keys the others have dropped,
// and a consumer shows messages, not the deletions of a catch-up.
//
// Renewal publishes the key again with a new TTL and an expected last
// sequence for the key (never kv.Update, which drops the TTL). Release
// purges the key if it is still at the revision the mirror knows (a stale
// holder can never remove a newer holder's key), leaving a marker that
// expires by itself. Conflicts of these compare-and-sets come back as
// JetStream error 10071, or 10164 on clustered streams.
//
// # Conflicts
//
// On a clustered stream, nats-server refuses a compare-and-set (10164)
// while another write naming the same key, as the key it writes or as the
// key it checks, is still being replicated, whether or not the revision
// expected was right. The service makes such writes itself: every refusal
// of a try purges the refused key with a check of the holder's key, and a
// lease granted after a wait writes the holder's key again at the grant.
// So a holder's release or renewal, right after its grant or while others
// try the lock, may conflict for a moment with nothing wrong. None of that
// reaches a client as an error: a release or renewal that conflicts while
// the key still holds with its token is tried again on a view caught up
// with the bucket (a barrier key, as for not_held), so that the write in
// flight is applied and the key's latest revision in view, for up to 4 s,
// then answered conflict (409) with nothing changed; a key that no longer
// holds is not_held. A release or renewal through the instance that
// granted the lease waits for the key's write at the grant to be
// acknowledged first, so as not to expect the revision before it; that
// write, refused for a write in flight, is sent again while the key stands
// unchanged. A waiter's renewal of its place in line, and the marker that
// tells an expiry, are retried the same way (TestHolderRacesOnCluster: on a
// 3-node cluster, holders that waited renew and release at once while
// others try; before, 9 to 15 of its 240 renewals and releases got an
// internal error in every run).
//
// # A waiter that gives up never holds the lock beyond its TTL
//
// A waiting request's key is created with the requested TTL and renewed by
// the instance serving the request every TTL/3 while it waits. When the
// wait ends (wait_ms elapsed, 408), the instance stops (the request's
// context is cancelled) or the client's try fails (409), the instance purges
// the key before answering. If the instance dies instead, its renewals stop
// and the key expires within one TTL. If the client gives up or its
// connection drops while the service grants the lock, the grant's reply is
// lost; nobody renews that lease, so it expires one TTL after the grant.
// In every case the lock is held by a gone waiter for at most its TTL.
//
// A request can also reach an instance long after its caller gave up: it
// sat in the socket of an instance that was stalled (paused, swapping).
// The Client sends its deadline with every acquire; a request that arrives
// more than DeadlineSkew after it is refused with expired and writes no key,
// so it takes no place in line for a caller that is gone. A waiting request
// that carries a deadline also leaves the line when the deadline passes,
// even if wait_ms is longer, and is not granted past it: a caller whose
// wait_ms outlasts its own timeout (nats req's default of 5 s against a
// wait_ms of a minute) is not left in line to be granted a lock nobody
// takes (TestCallerDeadlineEndsWait). One that arrives just past its
// deadline, within DeadlineSkew, is answered at once, as a try. A request
// without a deadline (the nats CLI sends none) waits its whole wait_ms.
//
// # A lease starts at its grant
//
// A request granted after waiting in line has its key written again at the
// grant, so the lease has its TTL from the grant, not from the key's last
// renewal in line (TestGrantGetsFullTTL): before, a waiter renewed 2.25 s
// before its grant got 27.7 s of a 30 s lease. The write is skipped when
// the last one was less than 1% of the TTL before the grant (the lease then
// loses at most that): waiters of a contended lock mostly wait a few
// milliseconds, and the write, one more stored message between two
// hand-offs, cost a quarter to a third of them. It is not awaited: it is
// sent before the grant's reply, and a release or renewal of the key
// through the same instance waits for its acknowledgement (see Conflicts).
// The expiry in the reply is never later than the server's.
//
// # Events
//
// acquired, released and expired are emitted by the instance that made the
// change. The expired event of a holder comes before the acquired event of
// the holder after it: an instance that sees an expiry grants nothing of
// that name until the expiry is told: by it, or by the instance whose marker
// replaced the server's, whose event it waits to receive (up to 5 s, in
// case that instance died before telling). On one NATS server every
// subscriber, and the stream MESH_EVENTS, gets them in that order
// (TestExpiredBeforeAcquired, with one instance and with two).
//
// Expiry is seen by every instance's mirror as the server's marker. One
// instance replaces the marker with its own (a compare-and-set on the
// marker's sequence, so only one succeeds) and emits the expired event.
// An instance that was away when a key expired sees the marker when it
// loads the bucket again, and does the same if no instance has replaced the
// marker meanwhile (TestExpiredWhileAway): the event is not lost when every
// instance was away, as long as one comes back within MarkerTTL.
//
// # Semaphores
//
// limit > 1 makes a name a counting semaphore: a key holds when fewer than
// limit keys are ahead of it. A name has one limit while it has holders or
// waiters, the first in line's: a request with another limit is refused
// with limit_mismatch and changes nothing (a mutex asked for as a semaphore
// of 5 would otherwise have two holders). The instance refuses it before
// writing anything when its mirror, caught up with the bucket, shows the
// name in use with another limit. Two first requests of a free name with
// different limits may both be written; the later in line sees the first's
// limit and leaves, taken out as a refused key is (only while the first
// in line stands unchanged), and meanwhile holds nothing in anyone's view.
package lock
