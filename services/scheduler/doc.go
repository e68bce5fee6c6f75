// Package scheduler is the task scheduler of the mesh and its Go SDK:
// immediate, delayed and periodic tasks on JetStream work queues, with
// retries, timeouts, cancellation, unique tasks and dead letters. Server is
// the service, Client its SDK, Worker runs tasks with handlers.
//
// # Subjects
//
//	subject                          request                                              reply
//	mesh.scheduler.submit            {id, queue, type, payload, run_at | delay_ms,        {id, state, run_at}
//	                                  max_retries, timeout_ms, backoff,
//	                                  unique_key, unique_for_ms}
//	                                 or a batch: {tasks: [submit, ...]}                   {tasks: [{id, state, run_at} | {id, error}]}
//	mesh.scheduler.status            {id}                                                 {id, queue, type, state, attempts, ...}
//	mesh.scheduler.cancel            {id}                                                 {id, was, cancelled}
//	mesh.scheduler.list              {queue, state, limit, cursor}                        {tasks, next_cursor}
//	mesh.scheduler.queues            {}                                                   {queues: [{name, depth, in_flight, scheduled, dead, paused}],
//	                                                                                       history: {bytes, records, max_bytes, oldest}}
//	mesh.scheduler.pause|resume      {queue}                                              {queue, paused}
//	mesh.scheduler.schedules.add     {name, queue, type, payload, cron | every_ms,        {name, queue, type, ..., next_run_at}
//	                                  time_zone, max_retries, timeout_ms}
//	mesh.scheduler.schedules.list    {}                                                   {schedules: [{name, ..., next_run_at}]}
//	mesh.scheduler.schedules.rm      {name}                                               {removed}
//	mesh.scheduler.dead.list         {queue, limit, cursor}                               {tasks: [{id, queue, type, last_error, died_at, seq, payload_bytes}], next_cursor}
//	mesh.scheduler.dead.requeue      {id} | {queue, all: true}                            {ids}
//	mesh.scheduler.dead.delete       {id} | {queue, all: true}                            {ids}
//	mesh.tasks.<queue>.<id>          a queued task: headers Mesh-Task-*, body the payload (stream MESH_TASKS, work queue; consumer <queue>)
//	mesh.history.<queue>.<id>        a task's record: its last outcome, TaskInfo in JSON  (stream MESH_TASK_HISTORY; written by workers)
//	mesh.dead.<queue>                a dead task, with Mesh-Task-Last-Error               (stream MESH_TASKS_DEAD)
//	mesh.events.task.submitted|queued|started|succeeded|failed|dead|cancelled|requeued     event data {id, queue, type, state, attempts, ...}
//	mesh.events.task.paused|resumed|scheduled|unscheduled                                  event data {queue} or {schedule, ...}
//
// A worker in any language pulls from the durable consumer named after the
// queue and writes each attempt's record itself, with no request to the
// service: see "Worker protocol" below, and schemas/README.md. Task events
// are live (core NATS): submitted, started, the outcome, cancelled...
//
// Errors: duplicate (409, with the existing id at the end of the message:
// DuplicateID), task_not_found, schedule_not_found, queue_not_found (404),
// task_finished (409, cancelling a finished task), invalid_queue,
// invalid_schedule, invalid (400), payload_too_large (413). The Client
// returns them as the package's sentinels (ErrDuplicate, ...). A field the
// request does not have is refused with unknown_field (400), a wrong type
// with invalid. Durations are bounded: delay_ms, unique_for_ms and every_ms
// at most MaxDelayMs (366 days); timeout_ms, backoff.initial_ms and
// backoff.max_ms at most MaxTimeoutMs (24 h); a larger one is refused.
//
// # Task ids and submits sent again
//
// A submit may name its task (id: letters, digits, '-' and '_'); the
// service makes an id otherwise. A task's message is stored with
// Nats-Msg-Id = its id and only if its subject, mesh.tasks.<queue>.<id>,
// holds no message (Nats-Expected-Last-Subject-Sequence 0). So a submit
// with the id of a task still in its queue, or of one submitted within the
// stream's deduplication window (DedupWindow, 2 minutes), makes no second
// task: with the same queue and type it is the same submit sent again,
// answered with that task and its current state; otherwise it is refused
// with duplicate (409). The Go Client makes an id for every submit and
// sends it again with that id when it got no answer (a timeout, no
// service, a 503), so a retried submit never makes a second task. An id
// is not kept beyond that: the id of a task that finished more than
// DedupWindow ago names a new task when submitted again (its outcome
// replaces the earlier task's record, which a record older than the
// message tells apart).
//
// # Batches
//
// A submit with tasks (up to MaxBatch, within the server's max payload)
// checks each task on its own, publishes their messages pipelined (one
// wait for the store's acknowledgements, not one per task) and answers
// each in order: its id and state, or the coded error that refused it
// (nothing of that task is stored). A batch that is not one (empty, too
// long, tasks beside other fields) is refused whole. Client.SubmitMany
// splits a slice into batches and sends a batch that got no answer again
// with the same ids.
//
// # The direct path
//
// A Client made WithDirect stores a task's message itself, as the service
// would, for the immediate tasks without a unique key of a queue it has
// submitted to through the service once (the service creates a queue's
// consumer on its first submit): one round trip to the store, none to the
// service. It checks the task with the same Validate and the service's
// defaults. A message the store already has is left to the service to
// answer (the same task, or duplicate). Its user needs permission to
// publish on mesh.tasks.> (the compose stack's client user has it).
//
// # Storage
//
// Stream MESH_TASKS (work-queue retention, message schedules allowed, one
// message per subject) holds the queued tasks, one subject per task,
// mesh.tasks.<queue>.<id>, and one durable pull consumer per queue named
// after it (filter mesh.tasks.<queue>.*); the delayed tasks' server
// schedules mesh.scheduler.at.<queue>.<id>; the periodic schedules
// mesh.scheduler.every.<name>; and the staging subjects
// mesh.scheduler.due.> (and .tick.>) where they fire, consumed by the
// scheduler instances (consumer scheduler-staging). A queued task is its
// message: the message's stream timestamp is its created_at (a delayed
// task's message carries Mesh-Task-Created-At). A second message for a live
// task is refused by the store, not checked by the service: every task
// message expects no message on its subject. (DiscardNewPerSubject would
// refuse it without the header, but nats-server refuses discard new on a
// stream with message schedules.)
//
// Stream MESH_TASK_HISTORY keeps one record per task, the last outcome of
// its last attempt, on mesh.history.<queue>.<id> (limits retention, one
// message per subject, MaxAge Retention, MaxBytes HistoryMaxBytes, direct
// gets allowed): failed (attempts, last_error, next_retry_at), succeeded
// (result up to MaxResult, result_truncated past it), dead, cancelled, or
// queued by a requeue or by a worker giving the task back at shutdown;
// returned counts the deliveries given back. Stream MESH_TASKS_DEAD keeps
// dead tasks (DeadRetention) and captures the queues' max-deliveries
// advisories (consumer scheduler-advisories), so that none is lost while
// no instance runs. The KV bucket MESH_TASK_STATE holds only the unique keys,
// u.<queue>.<hash>, each with the TTL of its window.
//
// # Finished tasks never block new work
//
// The records are bounded by HistoryMaxBytes (1 GiB by default, `mesh
// up|serve --scheduler-history-max-bytes`) and by Retention (24 h), and
// the oldest records go first (DiscardOld): a record is never refused for
// room, a submit never waits for history. A record evicted reads as none:
// status answers task_not_found for a finished task whose record went,
// and a write of the task's record then expects none. Queued tasks are
// bounded by the stream's own limits only (none by default).
//
// # Status and cancel read the queue
//
// status reads the task's message (mesh.tasks.*.<id>, one direct get): a
// task in its queue is queued, running once the queue's consumer has
// delivered it (its sequence is at most the consumer's delivered one),
// failed while its record says so (a retry waits); else its schedule or
// staging message (mesh.scheduler.*.*.<id>): scheduled; else its record.
// The state is read from the queue, so it never contradicts it.
//
// cancel writes the task's record cancelled (compare-and-set on the record
// it read, so that an outcome stored meanwhile wins, or loses to it), then
// removes its message (a delete by sequence) or its schedule and staging
// messages (a purge of their subjects), then emits task.cancelled: a worker
// running the task cancels its handler's context, one that pulled it ahead
// does not run it, and one that runs it anyway (it had not heard) drops
// its outcome when the record's write finds the record cancelled. A
// delayed task cancelled while an instance holds it on its timer is
// released all the same, and dropped that way.
//
// # Delayed tasks never run early
//
// nats.go's schedule helper truncates to whole seconds, and the server's
// schedule timer fires at most every 250 ms per stream, so a server
// schedule alone is either early or up to 250 ms late. A delayed task is
// therefore a server schedule, mesh.scheduler.at.<queue>.<id>, that fires
// Lead (1 s) before run_at into the task's own staging subject
// mesh.scheduler.due.<queue>.<id>; a task due in less than 1.5 Lead is put
// there at once. The staging consumer (scheduler-staging) hands it to one
// instance, which holds it on a Go timer and at run_at publishes the
// task's message mesh.tasks.<queue>.<id> (Nats-Msg-Id = the task id,
// expecting no message on that subject), then acknowledges the staging
// message. Nothing else is written: the task's created_at travels with it
// (Mesh-Task-Created-At). Until its release, status and list find the
// task by its schedule or staging message (scheduled), and queues counts
// both subjects. A cancel writes the task's record cancelled, then purges
// them; an instance holding the task reads its staging message and its
// record just before the release, so a task cancelled while held is not
// released. An instance that dies while holding a task
// never acknowledged it, so the staging consumer hands it to another
// instance after its ack wait (5 s: such a task is late, never early); if
// the first had published it, the deduplication, or the refusal of a
// second message of a live task, drops the second copy. A release that
// fails (a reconnection) is retried for a few seconds before the task is
// handed over. The test measures a few milliseconds of lateness and
// checks that no task starts before run_at.
//
// # Periodic tasks: one per tick, no leader
//
// A periodic schedule is a message with a Nats-Schedule header (@every or
// cron, with a time zone) on mesh.scheduler.every.<name> in MESH_TASKS.
// The stream fires each tick once, into the schedule's staging subject
// mesh.scheduler.tick.<name>; the staging consumer delivers it to one
// instance, which publishes the tick's task with an id derived from the
// tick message (schedule name, time and stream sequence) and the tick's
// time as its created_at, so a redelivered tick makes the same task once.
// No instance elects a leader, and nothing is written but the task's
// message. A subject of MESH_TASKS holds one message, so a tick that comes
// while the one before still waits on the staging subject (while no
// instance runs, say) replaces it: after an outage, one task comes of the
// ticks missed, not one per tick. A tick already handed to an instance
// still makes its task. schedules.rm removes the schedule and a tick of
// it still waiting.
//
// schedules.list and schedules.add answer each schedule's next_run_at,
// computed as nats-server computes it (internal/cron is nats-server's own
// cron parser): a cron expression in its time zone, exactly; an interval
// from the schedule's record in the stream rounded to the second, in steps
// of the interval, which is exact until the stream skips ticks (its server
// was down at one) and counts again from its restart.
//
// # Worker protocol
//
// A worker pulls from the durable consumer <queue> of MESH_TASKS with a
// bounded prefetch (WorkerConfig.Prefetch, twice the queue's concurrency
// by default, so that a slot that frees finds its next task in the
// worker; larger for queues of short tasks, which then pull in large
// batches, smaller would let a pulled task wait past its ack wait). For
// each delivery:
//
//  1. attempt = its delivery count (num_delivered). If that is more than 1
//     or the message carries Mesh-Task-Record-Seq (a requeued task), read
//     the task's record (a direct get, last by subject
//     mesh.history.<queue>.<id>): a final one (succeeded, dead,
//     cancelled) means the task has finished: ack the message and stop;
//     another (failed, queued) with attempts a and returned r (the
//     deliveries given back, 0 if absent) makes attempt
//     max(num_delivered−r, a+1), and is carried on (returned) by the next
//     write; its sequence is what the next write expects. On a first delivery, the
//     write expects Mesh-Task-Record-Seq, or no record. A record older than
//     the task's message (its created_at) is an earlier task's of the same
//     id: replaced, not read.
//  2. attempt past max_retries+1: the task is dead (step 5) without running.
//     A task whose cancel event the worker heard (it keeps the last 10,000
//     cancelled ids) is acked and not run.
//  3. Run the handler, with the timeout of Mesh-Task-Timeout-Ms; send
//     in-progress every third of the consumer's AckWait; cancel the
//     handler's context on the live event mesh.events.task.cancelled for
//     the task.
//  4. Write the outcome's record, asynchronously, with
//     Nats-Expected-Last-Subject-Sequence = the sequence expected (0 for
//     none); the message is acked, nak'd with the retry delay, or termed
//     only once that write's acknowledgement came (the slot goes to the
//     next task at once). succeeded: ack. failed with retries left: record
//     failed (attempts, last_error, next_retry_at), nak with the delay
//     computed by the worker from Mesh-Task-Backoff (see Backoff; default
//     exponential from 1 s, ±25% jitter, at most 10 min). A handler
//     interrupted by the worker's shutdown: given back (step 9). A handler
//     cancelled by a cancel: ack (the cancel wrote the record).
//  5. Dead (retries spent, or SkipRetry): publish a copy of the message to
//     mesh.dead.<queue> (Nats-Msg-Id dead-<id>-<stream seq>-<attempt>, with
//     Mesh-Task-Last-Error), then the record dead, then term.
//  6. A write refused with wrong last sequence (10071): someone wrote
//     first. Read the record: a final one (a cancel, a twin delivery that
//     finished) means ack and drop the outcome; a failure by another
//     delivery counts as an attempt: decide again and write again,
//     expecting its sequence.
//  7. A write that fails otherwise (no answer, a store error): nak with a
//     delay; the task runs again, never left running.
//  8. Events: task.started and the outcome (succeeded, failed, dead), live
//     (core NATS), data {id, queue, type, state, attempts, worker}.
//  9. Given back at shutdown (pulled ahead and not started, after steps 1
//     and 2's record read; or interrupted): write the record
//     compare-and-set with returned + 1 and the rest as read (state queued
//     if the task has none), then nak. The delivery is then not an
//     attempt. If that write fails the nak goes anyway and the delivery
//     counts as an attempt (as it does for a worker that dies).
//
// The compare-and-set is what the first version's report checks were: an
// outcome is stored only as the next write after the record its worker
// read, so a dead worker's late outcome after a newer delivery's record is
// refused, and twin deliveries (the ack wait passed while the first still
// ran) finish once. What is lost: a worker user may write any record of the
// queues it may publish to (the compose stack's worker user may publish
// mesh.history.>; mesh.history.<queue>.> narrows it to queues). A client
// user cannot.
//
// # Retries, timeouts, dead letters
//
// max_retries counts retries after the first attempt (default 3). A failed
// attempt is retried after a backoff (exponential from 1 s to 10 min with
// ±25% jitter by default, or constant) through the worker's NakWithDelay.
// A delivery that a stopping worker gives back, unfinished (its handler
// still running after WorkerConfig.ShutdownGrace) or pulled ahead
// (WorkerConfig.Prefetch) and unstarted, is not an attempt: the worker
// counts it in the task's record (returned) before the nak (step 9). The
// consumer counts it still, towards MaxDeliver (the backstop below). A
// delivery lost with its worker (no nak, the ack wait passed) counts.
// timeout_ms bounds each attempt: the worker cancels the handler's context
// then; while the handler runs the worker reports progress (InProgress)
// at a third of the consumer's AckWait, so a task may run longer than the
// AckWait but a dead worker loses its tasks after one AckWait. Per-task
// retries are enforced by the workers; the consumers' MaxDeliver is a
// backstop for deliveries nobody finishes: past
// it the server emits the max-deliveries advisory and leaves the message in
// the work queue, and an instance moves it (by its stream sequence) to the
// dead letters, writes its record dead and deletes it.
//
// # Costs
//
// Per task, on the service path: 3 stored operations of its own (its
// message, its outcome's record, and the ack that removes the message from
// the work queue; the first version made 5 stored writes and 3 stored
// events); about 11 messages through nats-server (the submit's request and
// reply, the message's publish and acknowledgement, the delivery, the
// record's publish and acknowledgement, the ack, and 3 live events:
// submitted, started, the outcome), plus the pull requests, shared by the
// tasks of a prefetch; and 1 round trip behind the service (the submit,
// which waits for the store's acknowledgement). On the direct path: the
// same stored operations, 8 messages (no request, no submitted event) and
// no round trip behind a service. A worker waits for nothing per task: the
// record's write is pipelined, the ack follows its acknowledgement. A task
// of a batch shares the batch's request and reply, and its message is
// pipelined with the batch's. A retry adds a record and a nak per failed
// attempt and a direct get per redelivery; a unique key adds a KV create
// to the submit; a death adds the dead letter. status is two or three
// direct gets and a consumer info; list and the queues' figures are for
// people and tools, not for a hot path.
//
// Measured (bench/scheduler, a quiet 2-vCPU VM, 2026-12-08, NATS's default
// sync, 20,000 no-op tasks, 16 handlers, CPU time of nats-server and of
// the process holding the service, the worker and the producers, per task
// drained): 136 µs per task on the direct path and 213 µs on the service
// path, against 766 µs for the first version, 154 µs for asynq with Redis
// and 29 µs for a bare work queue. The same store driven by a hand-written
// worker with nothing but the message, the record and the ack (the bench's
// "record + history" row) takes 105 µs and drains 37,000 tasks/s, against
// 17,000–21,000 for this Worker: the difference is the Worker's own work
// per task (its events, contexts and progress timer, the record's JSON by
// reflection), not the store.
//
// # Dead letters people can act on
//
// A task dies when its worker copies its message to mesh.dead.<queue> in
// MESH_TASKS_DEAD and writes its record dead (retries spent, or
// SkipRetry), or by the consumers' MaxDeliver, a backstop for deliveries
// nobody settles (a worker that does not speak the protocol, or keeps
// dying): past it the server emits the max-deliveries advisory, captured
// in MESH_TASKS_DEAD (consumer scheduler-advisories) so that none is lost
// while no instance runs, and leaves the message in the work queue; an
// instance copies the message (by its stream sequence) to the dead
// letters, writes the task's record dead with a compare-and-set (a record
// written first is read and decided on again), then deletes the message.
// A task whose record says it finished (its worker died between the
// record and the ack) keeps its outcome and only leaves the queue. Each
// death's dead letter has a deduplication id of its own
// (dead-<id>-<stream seq>-<attempt>), so a death handled twice is stored
// once.
//
// dead.list pages through MESH_TASKS_DEAD, oldest first (the cursor is a
// stream sequence). dead.requeue runs a dead task again with the same id
// and its attempts reset: it writes the task's record queued with attempts
// 0 (compare-and-set on the dead record, or on none when the record has
// gone: records are kept Retention, dead letters DeadRetention), then
// publishes the message carrying that record's sequence
// (Mesh-Task-Record-Seq, the record the worker expects) under a
// deduplication id of its own (requeue-<id>-<dead letter's seq>, as the
// task's id may still be in the window), then deletes the dead letter and
// emits a requeued event. A requeue that died halfway is finished by the
// next one: a record that says queued has its message published again (the
// deduplication, or the refusal of a second message of a live task,
// absorbs a copy); a record that says anything but dead or queued means
// that the task has run since, and only the delete is left. A requeued
// task that dies again has a new dead letter. dead.delete removes dead
// letters; the task's record stays dead until the history drops it.
// Either takes one id, or a queue with all: true; finding an id reads the
// queue's dead letters one by one, so they are for people and tools.
//
// # Listing tasks and queues
//
// list reads no index of its own: it walks the stores in three parts, each
// in its stream's order: the tasks in their queues (mesh.tasks.<queue>.<id>:
// queued; running once the queue's consumer has delivered it; failed while
// a retry waits, as its record says), then the delayed tasks not released
// yet (scheduled), then the finished tasks' records in MESH_TASK_HISTORY
// (succeeded, dead, cancelled), oldest first. The record of a live task
// (failed, or queued by a requeue) is listed from its queue. A page reads
// the messages in batches (one direct get of up to limit messages on the
// part's subjects, filtered by queue), each queue's consumer once, and
// each delivered task as status does (its message, its record, its
// consumer); it looks at 2000 messages at most, so a page filtered by
// state may be short, even empty, and still have a next_cursor. The
// cursor names the part and the stream sequence where the page stopped:
// q<seq>, s<seq> or h<seq>. A task that moves on while a list pages (it
// is released, or finishes) may show in two parts, or in none.
//
// queues answers, per queue: depth, what its stream holds of it (the
// consumer's pending messages and its deliveries not acknowledged);
// in_flight, those deliveries (running, or waiting for a retry);
// scheduled, its delayed tasks' schedule and staging subjects; dead, its
// dead letters; paused. And the history's figures: bytes, records,
// max_bytes (HistoryMaxBytes) and the oldest record's time. Counting the
// scheduled tasks reads their subjects, so it costs as many as there are.
//
// # Departures from the usual JetStream mapping
//
//   - AckWait is per queue (a consumer setting), not per task: the task
//     timeout is enforced by the worker, and the AckWait only detects dead
//     workers. MaxDeliver is likewise a per-queue backstop, not retries+1.
//   - Retries use NakWithDelay with the task's backoff, computed by the
//     worker, rather than the consumer's BackOff list, which is per
//     consumer too.
//   - A task's uniqueness while it is live is the store's (a message
//     expects none on its subject), not a check of the service's.
//   - Unique keys hold for unique_for_ms from submission, not until the
//     task finishes.
//   - A resume is a pause that ends 20 ms later: nats-server 2.15 wakes the
//     pull requests made during a pause only when a pause deadline passes.
package scheduler
