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
//	mesh.scheduler.started           {id, queue, type, attempt, stream_seq, worker}       {run, action, delay_ms, state}
//	mesh.scheduler.finished          {id, queue, attempt, stream_seq, error,              {action, delay_ms, state}
//	                                  skip_retry, interrupted, result}
//	mesh.tasks.<queue>               a task: headers Mesh-Task-*, body the payload        (JetStream work queue; consumer <queue>)
//	mesh.dead.<queue>                a dead task, with Mesh-Task-Last-Error               (stream MESH_TASKS_DEAD)
//	mesh.events.task.submitted|queued|started|succeeded|failed|dead|cancelled|requeued     event data {id, queue, type, state, attempts, ...}
//	mesh.events.task.paused|resumed|scheduled|unscheduled                                  event data {queue} or {schedule, ...}
//
// started and finished are the worker protocol (schemas/README.md, "Worker
// protocol"): a worker in any language pulls from the durable consumer
// named after the queue and reports each delivery's start and outcome.
//
// Errors: duplicate (409, with the existing id at the end of the message:
// DuplicateID), task_not_found, schedule_not_found, queue_not_found (404),
// task_finished (409, cancelling a finished task), stale_report (409, a
// worker's report that matches no delivery of the task), invalid_queue,
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
// service makes an id otherwise. The first state of a task is a
// create-only write of its key, so a submit with the id of a task whose
// state is kept (live, or finished within Retention) makes no second task:
// with the same queue and type it is the same submit sent again, answered
// with that task and its current state; otherwise it is refused with
// duplicate (409). The Go Client makes an id for every submit and sends
// it again with that id when it got no answer (a timeout, no service, a
// 503), so a retried submit never makes a second task.
//
// # Batches
//
// A submit with tasks (up to MaxBatch, within the server's max payload)
// submits each task on its own, 64 at a time so that their writes are
// pipelined, and answers each in order: its id and state, or the coded
// error that refused it (nothing of that task is enqueued). A batch that is
// not one (empty, too long, tasks beside other fields) is refused whole.
// Client.SubmitMany splits a slice into batches and sends a batch that got
// no answer again with the same ids.
//
// # Storage
//
// Stream MESH_TASKS (work-queue retention, message schedules allowed) holds
// the queues mesh.tasks.<queue>, each with one durable pull consumer named
// after the queue; the delayed tasks' server schedules
// mesh.scheduler.at.<queue>.<id>; the periodic schedules
// mesh.scheduler.every.<name>; and the staging subjects
// mesh.scheduler.due.<queue> where both fire, consumed by the scheduler
// instances (consumer scheduler-staging). Stream MESH_TASKS_DEAD keeps dead
// tasks (DeadRetention) and captures the queues' max-deliveries advisories
// (consumer scheduler-advisories), so that none is lost while no instance
// runs. The KV bucket MESH_TASK_STATE holds one state per task, t.<id>,
// kept for Retention once the task has finished (a per-key TTL; the bucket
// is bounded by StateMaxBytes, the oldest finished states making room),
// and the unique keys u.<queue>.<hash> with the TTL of their window.
//
// # Finished tasks never block new work
//
// The bucket is bounded in bytes (StateMaxBytes) and, like every KV
// bucket, refuses a write past its bound. So that finished history never
// stops submits or outcomes, the oldest finished states make room: every
// CleanEvery an instance reads the bucket's size, and past 80% of the bound
// it reads the states oldest first and purges the finished ones
// (succeeded, dead, cancelled) down to 60%, each at its own revision (a
// state written since stays), with a purge marker that expires in a
// second. Live states (scheduled, queued, running, failed), unique keys
// and the state of a finished task whose unique key still names it (else
// the next submit would take the key over) are never purged. A write that finds the bucket full cleans at once and
// is tried again, so an outcome finds room; a submit is refused (429
// overloaded) only while the bucket stays above 90% once cleaned, that is
// while live tasks fill it, which keeps the last tenth for outcomes. A
// finished task's state is kept for Retention or until the bucket needs
// its room, whichever comes first; its dead letter, if any, for
// DeadRetention. The queues reply shows the bucket's figures (states).
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
// # The queue and the states do not drift
//
// The state of a task and its message are in two streams, so they cannot
// be written in one atomic batch (nats.go 1.55 has no atomic batch API
// either). Instead every transition is ordered so that a crash between its
// two writes leaves something a later step repairs, and every state is
// written by one party at a time, under compare-and-set:
//
//   - submit writes the state first (queued or scheduled) carrying the
//     message to publish, then publishes it with Nats-Msg-Id = id. The
//     next write of the state (the worker's start, or the release of a
//     delayed task) drops the carried message. If the instance dies between
//     the two writes of submit, the state still carries the message: every
//     instance looks for states still carrying theirs RepairAfter after
//     their submit and publishes the message again. The stream's
//     deduplication window (DedupWindow, over three times RepairAfter)
//     makes that a no-op when the first publish had landed, even if the
//     task already ran; the repair then drops the carried message. So a
//     task costs no write to confirm its enqueue: only one that waits
//     longer than RepairAfter costs a deduplicated publish and a write.
//     The state written is the commit: if the publish then gets no answer
//     (a leader election, a lost connection), submit still answers with
//     the id and the repair enqueues the task, retrying for as long as the
//     stream stays away; any other failure (the stream refusing the
//     message, say) would fail again, and undoes the submit and fails it.
//     A write that no stream takes (a stream electing its leader after a
//     node's loss) stored nothing: submit sends it again for up to 2 s
//     (bus.RetryNoStream) before failing.
//     A state write that itself gets no answer may have landed: submit
//     reads the state back and goes on if it is there; if not, it purges
//     the key, so that the write cannot land later (it expects no earlier
//     write), and fails. Either way a retry makes no second task. When
//     neither the read nor the purge is answered, submit answers 503 and
//     keeps the unique key (taken over as below if the task does not
//     exist).
//   - a unique key is written before the state. A submit whose state
//     write fails gives the key back; if that fails too, the key names a
//     task that does not exist, and the next submit with that key takes it
//     over once it is older than RepairAfter (asked to try again before).
//   - a worker asks the service (mesh.scheduler.started) before running a
//     delivery; the service marks it running, or answers that it was
//     cancelled, finished or has spent its attempts (then it is dead). So
//     a cancelled task's message that is still in the queue is dropped by
//     the first worker to get it. A cancel served by the instance that
//     enqueued the task removes the message at once: that instance knows
//     its stream sequence from the publish, which no write records; a
//     cancel served elsewhere leaves the message for that first worker
//     (until then the queue's depth counts it).
//   - a worker reports the outcome (mesh.scheduler.finished) before it
//     acknowledges the message; the service writes succeeded, failed (and
//     the retry delay, which the worker applies with a nak) or dead. A
//     worker that dies in between leaves the message unacknowledged; it is
//     delivered again and the service, seeing a finished state, tells the
//     next worker to drop it.
//   - a dead task is copied to mesh.dead.<queue> (deduplicated by id)
//     before its state says dead, and removed from the queue after.
//
// The only writer of task states is the scheduler service; workers never
// touch the bucket, which keeps the worker protocol to two requests and
// the acknowledgements. An instance caches the states it wrote, with their
// revisions, so that the compare-and-set of a worker's report needs no
// read first when the same instance serves the task; a stale entry only
// fails the compare-and-set, and the state is read again. The cache is
// bounded in bytes (CacheMaxBytes, 32 MiB by default, `mesh up|serve
// --scheduler-cache-max-bytes`; the oldest entries go first) and holds no
// payloads or results: a finished state with a result is not cached. Its
// figures (entries, bytes, evictions) are in the queues reply, as cache. A start report
// for a cached state is written in the subscription's callback and answered
// from the write's acknowledgement (bus.Writes, bus.Deferred), with no
// worker: it is on the way from a submit to the task's start, and every
// hand-off between goroutines there costs a thread's wake-up
// (TestStartOnStaleState covers the stale entry).
//
// # Reports must match a delivery
//
// Whoever may publish to mesh.scheduler.started and .finished could
// otherwise run, finish or kill any task, so each report is checked
// against the delivery it claims before it changes anything; a report
// that does not match is refused with ErrStaleReport (409), one for an id
// without a state with ErrNotFound (no state is made up from a report).
// A start must name the task's queue and type; its stream_seq must be the
// task's message (the state knows it, or the message at that sequence is
// read: subject mesh.tasks.<queue>, Mesh-Task-Id, and still in the work
// queue); the queue's consumer must have delivered that far (its
// delivered sequence, cached per queue and asked again only for a
// sequence beyond it); the attempt must be within the consumer's
// MaxDeliver and newer than the last start accepted for that message; and
// a running task is taken over only by a start that comes at least the
// consumer's AckWait after the one it replaces, as a redelivery after a
// worker's death does. The state keeps the accepted delivery (Seq and
// Delivery), and an outcome must name exactly that one: an outcome sent
// again gets the first one's reply and writes nothing, and a dead
// worker's late outcome, after a newer delivery started, is refused. The
// Worker leaves a message alone when a report of its delivery is refused:
// the newer delivery owns it, or it comes back after its ack wait.
//
// What the server does not tell is which client holds a delivery (an
// acknowledgement is not checked against the delivery that sent it), so a
// client that knows a task's id and its message's sequence can still
// claim a delivery that the consumer has made, once its ack wait has
// passed. The NATS permissions decide who may report at all.
//
// # Retries, timeouts, dead letters
//
// max_retries counts retries after the first attempt (default 3). A failed
// attempt is retried after a backoff (exponential from 1 s to 10 min with
// ±25% jitter by default, or constant) through the worker's NakWithDelay.
// A delivery that a stopping worker gives back unfinished (reported as
// interrupted) does not count as an attempt.
// timeout_ms bounds each attempt: the worker cancels the handler's context
// then; while the handler runs the worker reports progress (InProgress)
// at a third of the consumer's AckWait, so a task may run longer than the
// AckWait but a dead worker loses its tasks after one AckWait. Per-task
// retries are enforced by the service at each start and outcome; the
// consumers' MaxDeliver is a backstop for deliveries nobody reports: past
// it the server emits the max-deliveries advisory and leaves the message in
// the work queue, and an instance moves it (by its stream sequence) to the
// dead letters and deletes it.
//
// # Costs
//
// A task costs, in JetStream writes: its state (submit), its message, its
// state at start and at the outcome, and the acknowledgement that removes
// it from the work queue, and three events (submitted, started and the
// outcome) in MESH_EVENTS where that stream exists; a bare work queue costs
// the message and the acknowledgement. Every hop is a round trip: submit
// makes two in a row behind the request, a worker one before running a
// task and one after it (the next task does not wait for that one: the
// acknowledgement follows the report in the background). Checking a start
// against its delivery adds reads, no write: the queue's consumer info
// when the start names a sequence beyond the delivered one last seen (one
// request for the starts waiting on it), and the task's message when the
// instance does not know its sequence (it did not enqueue it). list and the
// repair at start read every state (a scan of the bucket), so list is for
// people and tools, not for a hot path. The scheduler bench's "floor +
// state" row makes the same stored writes with no service in between, a
// ceiling for this design's drain rate (bench/README.md).
//
// In sum, per task: 5 stored writes of its own plus 3 stored events, about
// 16 messages through nats-server (a submit's request and reply, its two
// writes and their acknowledgements, the delivery, the two reports with
// their replies and their writes' acknowledgements, the ack), and 3 round
// trips behind a service (submit, start, outcome). A task of a batch
// submit costs the same writes, but its request and reply are shared by
// the batch and its writes are pipelined with its batch's. Measured
// (bench scheduler, CPU time of nats-server and the bench process per
// task drained, 2026-12-02): 417 µs on a quiet 2-vCPU VM, against 45 µs
// for a bare work queue; the drain rate is bounded by that CPU, not by
// the round trips.
// A store whose record of a live task is its message and whose one write
// per task beyond the message and its ack is the outcome, pipelined before
// the ack, measured 122 µs per task on a loaded machine where the bare
// queue took 35 µs (bench/README.md, "a candidate store").
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
//   - Retries use NakWithDelay with the service's backoff rather than the
//     consumer's BackOff list, which is per consumer too.
//   - Unique keys hold for unique_for_ms from submission, not until the
//     task finishes.
//   - A resume is a pause that ends 20 ms later: nats-server 2.15 wakes the
//     pull requests made during a pause only when a pause deadline passes.
package scheduler
