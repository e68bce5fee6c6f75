// Package console is the mesh's web console: one page over the whole mesh
// — its services, the scheduler's queues and tasks, the locks, the cache
// and the live events — where people see and act on it without reading
// JSON. `mesh up` serves it on a loopback address (--console), and `mesh
// console --nats URL` serves it against any mesh.
//
// It lives under internal/ because it is part of the mesh binary, not an
// API: programs use the SDKs it is built on.
//
// # What it talks to
//
// Only the public subjects, through the SDKs and the user's NATS
// connection, so the user's permissions hold. An action the mesh refuses
// shows the refusal the service sent (its status, code and message); one
// the user's NATS permissions forbid, which the server drops so that it
// would fail as a timeout, shows 403 permission_denied with the server's
// permissions violation (the connection's last error) when it names the
// action's subject:
//
//	page        reads                                                 actions
//	overview    $SRV.INFO, $SRV.STATS (meshstat, shared with          resume (a paused queue)
//	            `mesh status`), JetStream account and stream info,
//	            mesh.scheduler.queues (when a scheduler answers)
//	scheduler   mesh.scheduler.queues, .list, .schedules.list          submit, pause, resume,
//	                                                                   schedules add, rm
//	task        mesh.scheduler.status, MESH_EVENTS (stored events,     cancel, requeue, delete (dead)
//	            when task events are stored)
//	dead        mesh.scheduler.dead.list                               requeue, delete (one, or
//	                                                                   all of a queue)
//	locks       mesh.lock.list, mesh.lock.inspect (first 50 locks),    –
//	            MESH_EVENTS (stored events)
//	cache       mesh.heartbeat.cache.* (the ring), mesh.cache.stats,   –
//	            mesh.cache.node.<id>.get (key lookup)
//	events      mesh.events.>                                          –
//
// The overview puts first what needs someone, each with the way to fix
// it: a paused queue (with the tasks that wait, and Resume), a queue's
// dead tasks (with a link to the dead letters, where they are requeued or
// deleted).
//
// # History from before the console started
//
// A task's page and the locks' history read the stream MESH_EVENTS: an
// ordered consumer of the console's own, filtered by subject
// (mesh.events.task.> from the task's creation; mesh.events.lock.> over
// the last hour, the newest), at most 10,000 events per read, one fetch,
// then deleted. The events are matched by id or lock name, merged with the
// ones the hub heard (each once), and the read is kept 30 s, so a live page
// reads the stream at most twice a minute. A user who may not read the
// stream (or a mesh without it) gets the live events only, with a note
// saying so.
//
// Task events are live only unless the mesh runs with --store-task-events
// (the stream's subjects, from the streams' list, say which): then a
// task's page reads nothing from the stream and says so; what it shows of
// the task's past is its status (mesh.scheduler.status, read from the
// scheduler's own record of the task: state, attempts, last error, result
// and instants) and the events the hub heard. The compose stack's console user may create and fetch from
// consumers of MESH_EVENTS ($JS.API.CONSUMER.CREATE.MESH_EVENTS.>,
// .MSG.NEXT, .DELETE) and nothing else of JetStream but the account's and
// the streams' figures.
//
// # How pages stay live
//
// Pages are rendered on the server from html/template; every asset (the
// templates, one stylesheet, one small script) is embedded in the binary:
// no CDN, no build step, it works offline. Each page has a live part that
// the server renders again and sends over server-sent events (/live) when
// it changed: at every Refresh (2 s), and soon after an event that
// concerns the page (a task event for the scheduler, a lock event for the
// locks). Two reads are kept a while and shared by every page open: the
// task list for TaskListEvery (5 s), and for up to a minute while no task
// event says that something changed (the console's own submit and cancel
// drop it), so a backlog of queued tasks costs no scan; and the locks'
// details for a second (a request per lock). The events page gets the
// events in batches, at most ten a second of at most 200 events. The
// script swaps the live part in, and counts lock expiries down between
// renders from the expires_at the lock service sent (the lease lives on the
// server; the countdown only shows it). The scheduler page lists tasks
// through mesh.scheduler.list, which scans the tasks' messages and
// records: hence its bound, whatever the number of pages open and the rate
// of task events.
//
// Besides the HTTP server, the console owns one subscription to
// mesh.events.> (the hub, which keeps the last 1,000 events for the events
// page and the task and lock pages' recent history) and one goroutine, the
// sampler, which reads the services' micro stats, the queues and the cache
// figures every SampleEvery (10 s) and keeps the last hour in memory for
// the charts (requests per second per service, depth per queue, hit ratio
// and items per cache node). Start starts them; Stop stops them and ends
// the live streams (so that an HTTP server's Shutdown does not wait for
// them).
//
// # Safety
//
// Actions are POSTed forms that ask for confirmation, then return to the
// page with their outcome. The handler refuses requests whose Host is not
// a loopback name or address (DNS rebinding) and actions whose Origin or
// Sec-Fetch-Site says another site sent them (cross-site request forgery).
// Config.ReadOnly hides the actions and refuses them with 403 read_only.
// Listen serves loopback addresses only, unless Config.AllowRemote (mesh
// console --allow-remote): for a container whose port the host publishes
// on its own loopback address (the compose stack); the Host and origin
// checks still hold.
package console
