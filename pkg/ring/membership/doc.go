// Package membership turns heartbeats on NATS into the live member set of a
// service and the ring built from it (package ring).
//
// Every member runs an Announcer: it publishes a Heartbeat (JSON: id,
// weight, version, start time, interval, the ring version it routes by)
// every interval H (1 s by default), answers probes at once, and publishes a
// leave when it stops gracefully. Any process that needs the ring (a member,
// an SDK client, `mesh ring`) runs a Watcher: it subscribes to the
// heartbeats, asks the members to announce themselves when it starts (so its
// first ring is complete when Start returns), drops a member that missed
// k = 3 of its intervals, and rebuilds the ring when the member set changes.
//
// Joins and leaves are debounced over one H, so a rolling restart (a leave
// then a rejoin under the same id) does not change the ring; a member
// restarted under the same id is one member with a new start time. A member
// dropped for silence is removed at once, without a debounce: it has been
// silent for k·H already, so a crash is seen within k·H of its last
// heartbeat, which is within (k+1)·H of the crash. A member whose heartbeats
// are late by less than k·H never leaves the ring. The ring depends only on
// the member set (ids and weights), so watchers that see the same members
// have the same ring version. Malformed heartbeats are logged and ignored.
//
// # What a heartbeat can claim
//
// Anyone allowed to publish on the heartbeat subjects could otherwise
// steer the ring, so a watcher trusts heartbeats only so far:
//
//   - Bounds: weight in [0, MaxWeight] (100; 0 means 1) and interval_ms
//     0 (the watcher's interval) or in [MinInterval, MaxInterval] (100 ms,
//     60 s). A heartbeat outside them is logged and ignored: no single
//     member can take nearly every key, or stay for hours after its last
//     heartbeat.
//   - One incarnation per id: an id belongs to the incarnation (start
//     time) first seen with it until that one leaves or expires. Heartbeats
//     and leaves with another start time are ignored meanwhile (logged at
//     most once per interval), and so is a change of weight. A restart
//     after a crash, before the old incarnation expires, takes the id over
//     only if the new one answers its identity probe and the old one does
//     not (within half a probe's wait).
//   - Identity probe: a watcher configured with IdentitySubject adds a new
//     member to the ring only once a request on that subject (the cache:
//     mesh.cache.node.<id>.identity, among the node's own subjects, which
//     its Announcer answers with its heartbeat) is answered with the same
//     id and start time; it asks again every interval while the member
//     beats. A heartbeat with no responder behind it, or one whose
//     responder answers anything else, never gets a key.
//
// A client that may both publish heartbeats and subscribe to a member's
// subjects can still pose as a member that answers for itself: NATS
// permissions (the compose stack's, `mesh up --auth`) keep those subjects
// to the service's own users.
//
// # Subjects
//
//	subject                              what
//	mesh.heartbeat.<service>.<id>        heartbeats and leaves of member <id>
//	mesh.heartbeat.<service>             probe: every member replies with a heartbeat
//	IdentitySubject (configured)         identity probe: member <id> replies with its heartbeat
//
// # Measured
//
// bench/membership, 10 members, 5 watchers, 5 runs of each event, H = 1 s,
// k = 3, in-process nats-server, 2-core Intel Xeon, go1.26.8, 2026-11-25;
// times until every watcher's ring reflects the event:
//
//	event                        median    max      bound
//	crash (no leave) detected    2.895s    3.003s   (k+1)·H = 4s
//	graceful leave applied       1.007s    1.024s   about H
//	join applied                 1.011s    1.041s   about H
//
// For comparison, memberlist's default LAN configuration took 6-9 s to
// detect a failed member among 10 nodes on the same kind of machine.
package membership
