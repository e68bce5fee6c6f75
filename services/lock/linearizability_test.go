package lock_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// Histories of concurrent acquires and releases from many clients, checked
// for linearizability against a sequential model of a lock (and of a counting
// semaphore) with porcupine (linearizability_model_test.go), and for fencing
// (token order).
//
// The lease TTL is far longer than a history, so no lease expires while one
// is recorded: expiry is time-based and outside the model. An operation that
// ends with a transport error (no reply in time, a server-side failure) has
// an unknown outcome: it is recorded with a return time of +infinity and an
// output every state accepts, either way, unless the events resolve it. A
// run fails when more than linMaxUnknown of its operations stay unknown, and
// a run with a fault fails unless operations complete while the node is
// down.

const (
	linTTL = 60 * time.Second // no lease expires during a history
	// linMaxHistory bounds a history well inside linTTL: a grant whose
	// client never heard of it holds its name until the TTL, and the model
	// assumes it holds it to the end.
	linMaxHistory = 30 * time.Second
	linMaxLimit   = 4
	// linMaxUnknown is the share of operations whose outcome may stay
	// unknown: past it, a history checks too little.
	linMaxUnknown = 0.05
	// linFaultOps operations called after a node stopped must complete
	// with a known outcome before it is restarted.
	linFaultOps = 10
	// linReplyMargin is the time a wait's request leaves for its answer
	// after wait_ms (scaled).
	linReplyMargin = 2 * time.Second
)

// linHistory records the operations of a run.
type linHistory struct {
	start   time.Time
	mu      sync.Mutex
	ops     []porcupine.Operation
	clients atomic.Int32 // porcupine client ids handed out
	// The fault's window (history time), when the run has one.
	stopped, restarted int64
}

func (h *linHistory) now() int64 { return time.Since(h.start).Nanoseconds() }

func (h *linHistory) add(in linInput, call int64, out linOutput, ret int64) {
	if out.result == linUnknown {
		ret = math.MaxInt64 // may take effect at any time after its call
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: in.client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

func (h *linHistory) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// linRun is the configuration of a run.
type linRun struct {
	names   []linName
	clients int
	ops     int // at least this many operations per client
	// keepGoing, when set, keeps the clients going past ops until it is
	// closed (a fault was injected and healed), then for ops/2 more.
	keepGoing <-chan struct{}
	deadline  time.Time // no operation starts after it
}

// linClient is one client of a run: one connection, at most one lease at a
// time.
type linClient struct {
	h     *linHistory
	c     *lock.Client
	nc    *nats.Conn
	rng   *rand.Rand
	id    int // porcupine client id: a new one after each unknown outcome
	owner string
	seq   int         // acquires asked for, naming each one's owner
	lease *lock.Lease // held through TryAcquire
	// held through a wait (token 0: none)
	held struct {
		name  string
		token uint64
	}
	limit  int
	past   []linInput // releases of tokens already given back, to replay
	errors []string
}

func (w *linClient) newID() { w.id = int(w.h.clients.Add(1)) - 1 }

func linClassifyAcquire(err error) linOutput {
	switch {
	case err == nil:
		return linOutput{result: linGranted}
	case errors.Is(err, lock.ErrLocked), errors.Is(err, lock.ErrWaitTimeout):
		return linOutput{result: linBusy}
	case errors.Is(err, lock.ErrExpired), errors.Is(err, nats.ErrNoResponders):
		// Written nothing (arrived after its deadline), or received by no
		// instance.
		return linOutput{result: linRefused, err: err.Error()}
	case errors.Is(err, lock.ErrLimitMismatch):
		// Changed nothing, but every contender of a name asks with its
		// limit: no run may see it.
		return linOutput{result: linRefused, err: err.Error(), unexpected: true}
	}
	return linOutput{result: linUnknown, err: err.Error()}
}

func linClassifyRelease(err error) linOutput {
	switch {
	case err == nil:
		return linOutput{result: linReleased}
	case errors.Is(err, lock.ErrNotHeld):
		return linOutput{result: linNotHeld}
	case errors.Is(err, nats.ErrNoResponders):
		return linOutput{result: linRefused, err: err.Error()}
	}
	return linOutput{result: linUnknown, err: err.Error()}
}

func (w *linClient) acquire(n linName) {
	w.seq++
	in := linInput{op: linAcquire, name: n.name, limit: n.limit, client: w.id, owner: fmt.Sprintf("%s.%d", w.owner, w.seq)}
	if w.rng.IntN(2) == 0 {
		w.wait(n, in)
		return
	}
	o := lock.Options{TTL: linTTL, Owner: in.owner, Limit: n.limit}
	if n.limit == 1 {
		o.Limit = 0 // the default
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	call := w.h.now()
	l, err := w.c.TryAcquire(ctx, n.name, o)
	ret := w.h.now()
	cancel()
	w.record(in, call, l, err, ret)
	if l != nil {
		w.lease, w.limit = l, n.limit
		w.hold()
	}
}

// hold holds a lock a moment, now and then for longer than most waits.
func (w *linClient) hold() {
	d := time.Duration(w.rng.IntN(3000)) * time.Microsecond
	if w.rng.IntN(20) == 0 {
		d = time.Duration(50+w.rng.IntN(300)) * time.Millisecond
	}
	time.Sleep(d)
}

// wait asks the service to wait in line up to wait_ms, counted from the
// request's arrival: its wait has run out by waitEnd. The request is sent
// on the wire rather than through the Client, whose Acquire keeps only
// 100 ms after wait_ms for the answer: under load, a refusal decided on a
// view caught up with a replicated bucket takes longer, and its outcome
// would be lost (the Client's Acquire is tested in lock_test.go). Here the
// request's deadline leaves linReplyMargin for the answer.
func (w *linClient) wait(n linName, in linInput) {
	in.wait = time.Duration(50+w.rng.IntN(350)) * time.Millisecond
	now := time.Now()
	call := now.Sub(w.h.start).Nanoseconds()
	in.waitEnd = call + in.wait.Nanoseconds()
	dl := now.Add(in.wait + bustest.Scale(linReplyMargin))
	req := lock.AcquireRequest{Name: n.name, Owner: in.owner, TTLms: linTTL.Milliseconds(), WaitMs: in.wait.Milliseconds(), Deadline: &bus.Time{Time: dl}}
	if n.limit > 1 {
		req.Limit = n.limit
	}
	ctx, cancel := context.WithDeadline(context.Background(), dl)
	reply, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx, w.nc, lock.SubjectAcquire, req)
	ret := w.h.now()
	cancel()
	out := linClassifyAcquire(err)
	if err == nil {
		out.token = reply.Token
	}
	w.h.add(in, call, out, ret)
	if out.result == linUnknown {
		w.errors = append(w.errors, out.err)
		w.newID()
	}
	if err == nil {
		w.held.name, w.held.token, w.limit = n.name, reply.Token, n.limit
		w.hold()
	}
}

func (w *linClient) record(in linInput, call int64, l *lock.Lease, err error, ret int64) {
	out := linClassifyAcquire(err)
	if l != nil {
		out.token = l.Token()
	}
	w.h.add(in, call, out, ret)
	if out.result == linUnknown {
		w.errors = append(w.errors, out.err)
		w.newID()
	}
}

// release gives the lease back, and retries by token while the outcome is
// unknown, so that no lock stays held by a client that moved on.
func (w *linClient) release(deadline time.Time) {
	l := w.lease
	w.lease = nil
	name, token := w.held.name, w.held.token
	w.held.token = 0
	if l != nil {
		name, token = l.Name(), l.Token()
	}
	in := linInput{op: linRelease, name: name, limit: w.limit, token: token, client: w.id}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	call := w.h.now()
	var err error
	if l != nil {
		err = l.Release(ctx) // stops the renewals, whatever the outcome
	} else {
		err = w.c.Release(ctx, name, token)
	}
	ret := w.h.now()
	out := linClassifyRelease(err)
	w.h.add(in, call, out, ret)
	for try := 0; (out.result == linUnknown || out.result == linRefused) && try < 20 && time.Now().Before(deadline); try++ {
		w.errors = append(w.errors, out.err)
		if out.result == linUnknown {
			w.newID()
		}
		time.Sleep(100 * time.Millisecond)
		in.client = w.id
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		call := w.h.now()
		err := w.c.Release(ctx, in.name, in.token)
		ret := w.h.now()
		cancel()
		out = linClassifyRelease(err)
		w.h.add(in, call, out, ret)
	}
	if out.result == linUnknown {
		w.errors = append(w.errors, out.err)
		w.newID()
	}
	w.past = append(w.past, in)
}

// releaseStale releases again a token this client gave back before: it
// frees nothing, unless the first release's outcome stayed unknown.
func (w *linClient) releaseStale() {
	in := w.past[w.rng.IntN(len(w.past))]
	in.client = w.id
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	call := w.h.now()
	err := w.c.Release(ctx, in.name, in.token)
	ret := w.h.now()
	out := linClassifyRelease(err)
	w.h.add(in, call, out, ret)
	if out.result == linUnknown {
		w.errors = append(w.errors, out.err)
		w.newID()
	}
}

func (w *linClient) run(cfg linRun) {
	more := cfg.ops
	fault := cfg.keepGoing != nil
	for i := 0; ; i++ {
		if i >= more {
			// After a fault, the run goes on (up to its deadline) while
			// the outcomes the fault left unknown are more than half the
			// share a history may have: on a loaded machine a fault lasts
			// longer, and the history after it must outweigh it.
			if cfg.keepGoing == nil && (!fault || w.h.unknownShare() <= linMaxUnknown/2) {
				break
			}
			if cfg.keepGoing == nil {
				more = i + 1
			}
			select {
			case <-cfg.keepGoing:
				more, cfg.keepGoing = i+cfg.ops/2, nil
			default:
			}
		}
		if time.Now().After(cfg.deadline) {
			break
		}
		switch {
		case w.lease != nil || w.held.token != 0:
			w.release(cfg.deadline)
		case len(w.past) > 0 && w.rng.IntN(10) == 0:
			w.releaseStale()
		default:
			w.acquire(cfg.names[w.rng.IntN(len(cfg.names))])
		}
		time.Sleep(time.Duration(w.rng.IntN(5000)) * time.Microsecond)
	}
	if w.lease != nil || w.held.token != 0 {
		w.release(time.Now().Add(5 * time.Second))
	}
}

// linClients starts the clients of a run; wait waits for them to end.
func linClients(t *testing.T, url string, h *linHistory, cfg linRun) (wait func() []*linClient) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var wg sync.WaitGroup
	var ws []*linClient
	for i := range cfg.clients {
		nc := bustest.Connect(t, url)
		w := &linClient{
			h:     h,
			c:     lock.NewClient(nc),
			nc:    nc,
			rng:   rand.New(rand.NewPCG(seed, uint64(i))),
			owner: fmt.Sprintf("client-%d", i),
		}
		w.newID()
		ws = append(ws, w)
	}
	for _, w := range ws {
		wg.Go(func() { w.run(cfg) })
	}
	return func() []*linClient {
		wg.Wait()
		return ws
	}
}

// linCheck resolves the unknown outcomes of a history from the events and
// checks it for linearizability and fencing, and that it checks enough:
// few unknown outcomes, and operations completed during its fault.
func linCheck(t *testing.T, h *linHistory, ws []*linClient, js jetstream.JetStream, tap *linJoinTap) {
	t.Helper()
	joins := tap.result()
	events, missing := linReadEvents(t, js, h, bustest.Scale(5*time.Second))
	if missing > 0 && h.stopped == 0 {
		// Without a fault no event is lost: every grant and release emits
		// one.
		t.Errorf("%d grants and releases that clients saw have no event in %s", missing, bus.EventStream)
	}
	// Event times and the stream's timestamps are read on the wall clock,
	// the history on the monotonic one: allow for their drift.
	now := time.Now()
	drift := now.Sub(h.start) - now.Round(0).Sub(h.start.Round(0))
	p := linParams{events: events, joins: joins, slack: (linClockSlack + max(drift, -drift)).Nanoseconds(), gap: bustest.Scale(linGapDefault).Nanoseconds()}
	ops, rep, err := linPrepare(h.ops, p)
	if err != nil {
		t.Fatalf("events: %v", err)
	}

	counts := map[linResult]int{}
	var unexpected []string
	for _, op := range h.ops {
		out := op.Output.(linOutput)
		counts[out.result]++
		if out.unexpected {
			unexpected = append(unexpected, out.err)
		}
	}
	var errs []string
	for _, w := range ws {
		errs = append(errs, w.errors...)
	}
	t.Logf("%d operations in %v: %d granted, %d busy, %d released, %d not held, %d refused, %d unknown; %d lock events",
		len(h.ops), time.Since(h.start).Round(time.Millisecond), counts[linGranted], counts[linBusy], counts[linReleased], counts[linNotHeld], counts[linRefused], counts[linUnknown], len(events))
	t.Logf("resolved from events: %d grants, %d releases; %d unknown left; %d of %d timed-out waits watched from their join",
		rep.resolvedGrants, rep.resolvedReleases, rep.unknown, rep.watched, rep.waits)
	if len(errs) > 0 {
		slices.Sort(errs)
		errs = slices.Compact(errs)
		t.Logf("unknown outcomes and refusals: %s", strings.Join(errs[:min(len(errs), 10)], "; "))
	}
	if rep.unknown > 0 {
		// When the unknown outcomes were asked for, by second of the
		// history, to tell a fault's toll from a service that stalls.
		bySecond := map[int64]int{}
		var last int64
		for _, op := range ops {
			if op.Output.(linOutput).result == linUnknown {
				bySecond[op.Call/int64(time.Second)]++
				last = max(last, op.Call/int64(time.Second))
			}
		}
		var b strings.Builder
		for sec := int64(0); sec <= last; sec++ {
			fmt.Fprintf(&b, " %d", bySecond[sec])
		}
		t.Logf("unknown outcomes by second of call:%s (stopped at %v, restarted at %v)", b.String(), time.Duration(h.stopped).Round(time.Millisecond), time.Duration(h.restarted).Round(time.Millisecond))
	}
	if rep.waits >= 5 && rep.watched == 0 {
		t.Errorf("none of %d timed-out waits was watched from its join: the tap on the bucket saw none", rep.waits)
	}
	if len(unexpected) > 0 {
		t.Errorf("%d refusals no run may see: %s", len(unexpected), unexpected[0])
	}
	if counts[linGranted] == 0 || counts[linReleased] == 0 {
		t.Fatalf("a history without grants or releases checks nothing")
	}
	if h.stopped != 0 {
		if n := linDuringFault(h); n == 0 {
			t.Errorf("no operation completed while the node was down")
		}
	}
	if share := float64(rep.unknown) / float64(len(h.ops)); share > linMaxUnknown {
		t.Errorf("%d of %d outcomes (%.1f%%) stayed unknown, more than %.0f%%: the history checks too little", rep.unknown, len(h.ops), 100*share, 100*linMaxUnknown)
	}
	if err := linCheckFencing(ops); err != nil {
		t.Fatalf("fencing: %v", err)
	}

	model := linModel.ToModel()
	checking := time.Now()
	res := porcupine.CheckOperationsTimeout(model, ops, 30*time.Second)
	t.Logf("porcupine: %s in %v", res, time.Since(checking).Round(time.Millisecond))
	if res == porcupine.Ok {
		return
	}
	_, info := porcupine.CheckOperationsVerbose(model, ops, 30*time.Second)
	f, err := os.CreateTemp("", "lock-linearizability-*.html")
	if err != nil {
		t.Fatalf("history is %s; no visualization: %v", res, err)
	}
	defer f.Close()
	if err := porcupine.Visualize(model, info, f); err != nil {
		t.Fatalf("history is %s; no visualization: %v", res, err)
	}
	// The same history as text, by call time.
	txt := strings.TrimSuffix(f.Name(), ".html") + ".txt"
	var b strings.Builder
	sorted := slices.Clone(ops)
	slices.SortStableFunc(sorted, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	for _, op := range sorted {
		ret := "       inf"
		if op.Return != math.MaxInt64 {
			ret = fmt.Sprintf("%10.3f", float64(op.Return)/1e6)
		}
		fmt.Fprintf(&b, "client %3d  %10.3f ms %s ms  %s\n", op.ClientId, float64(op.Call)/1e6, ret, model.DescribeOperation(op.Input, op.Output))
	}
	if err := os.WriteFile(txt, []byte(b.String()), 0o644); err != nil {
		txt = err.Error()
	}
	t.Fatalf("history is %s (not linearizable); visualization: %s; history: %s", res, f.Name(), txt)
}

// linDuringFault counts the operations called after the node stopped
// that completed, with a known outcome, before it was restarted.
func linDuringFault(h *linHistory) int {
	return linCompleted(h, h.stopped, h.restarted)
}

// unknownShare is the share of the operations so far whose outcome is
// unknown.
func (h *linHistory) unknownShare() float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, op := range h.ops {
		if op.Output.(linOutput).result == linUnknown {
			n++
		}
	}
	return float64(n) / float64(max(len(h.ops), 1))
}

// linCompleted counts the operations called at from or later that
// completed, with a known outcome, by to.
func linCompleted(h *linHistory, from, to int64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, op := range h.ops {
		r := op.Output.(linOutput).result
		if op.Call >= from && op.Return <= to && r != linUnknown && r != linRefused {
			n++
		}
	}
	return n
}

// linCheckFencing checks the tokens of the grants: no two grants share one,
// and a grant that returned before another acquire was called has the
// smaller token (so does a grant released before another was asked for).
func linCheckFencing(ops []porcupine.Operation) error {
	type grant struct {
		name      string
		token     uint64
		call, ret int64
	}
	var grants []grant
	byToken := map[uint64]grant{}
	for _, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		if in.op != linAcquire || out.result != linGranted {
			continue
		}
		g := grant{in.name, out.token, op.Call, op.Return}
		if out.token == 0 {
			return fmt.Errorf("%s granted with token 0", in.name)
		}
		if prev, ok := byToken[out.token]; ok {
			return fmt.Errorf("token %d granted twice: %s at [%d, %d] and %s at [%d, %d]", out.token, prev.name, prev.call, prev.ret, g.name, g.call, g.ret)
		}
		byToken[out.token] = g
		grants = append(grants, g)
	}
	// The first release that returned ok, per token.
	released := map[uint64]int64{}
	for _, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		if in.op == linRelease && out.result == linReleased {
			if r, ok := released[in.token]; !ok || op.Return < r {
				released[in.token] = op.Return
			}
		}
	}
	slices.SortFunc(grants, func(a, b grant) int { return cmp.Compare(a.ret, b.ret) })
	for i, a := range grants {
		for _, b := range grants[i+1:] {
			if a.name != b.name {
				continue
			}
			if b.call > a.ret && b.token <= a.token {
				return fmt.Errorf("%s: token %d granted at [%d, %d], after token %d was granted at [%d, %d]", a.name, b.token, b.call, b.ret, a.token, a.call, a.ret)
			}
			if r, ok := released[a.token]; ok && b.call > r && b.token <= a.token {
				return fmt.Errorf("%s: token %d granted at [%d, %d], after token %d was released at %d", a.name, b.token, b.call, b.ret, a.token, r)
			}
		}
	}
	return nil
}

var linNames = []linName{{"lin.a", 1}, {"lin.b", 1}, {"lin.pool", 2}}

// TestLinearizability: one server, one service instance, 8 clients
// acquiring (TryAcquire, or a wait in line up to wait_ms) and releasing two
// mutexes and a semaphore of 2, and releasing stale tokens.
func TestLinearizability(t *testing.T) {
	linSingle(t, 1)
}

// TestLinearizabilityTwoInstances: the same with two service instances
// sharing the requests, whose mirrors lag each other.
func TestLinearizabilityTwoInstances(t *testing.T) {
	linSingle(t, 2)
}

func linSingle(t *testing.T, instances int) {
	s := bustest.RunServer(t)
	js := bustest.JetStream(t, bustest.Connect(t, s.URL()))
	if _, err := bus.EnsureEventStream(ctx(t), js, bus.EventStreamConfig{}); err != nil {
		t.Fatal(err)
	}
	for range instances {
		serveWith(t, s.URL(), lock.Config{})
	}
	h := &linHistory{start: time.Now()}
	tap := linTapJoins(t, js, h)
	wait := linClients(t, s.URL(), h, linRun{names: linNames, clients: 8, ops: 40, deadline: h.start.Add(linMaxHistory)})
	linCheck(t, h, wait(), js, tap)
}

// TestLinearizabilityCluster: a 3-node cluster, the bucket on 3 replicas,
// two service instances and 8 clients connected to every node, no fault.
func TestLinearizabilityCluster(t *testing.T) {
	linCluster(t, "")
}

// TestLinearizabilityClusterStopFollower: as TestLinearizabilityCluster,
// and in the middle of the run the node that leads neither JetStream nor the
// bucket's stream is stopped, then restarted, while the clients keep going.
// Operations cut by the fault have unknown outcomes.
func TestLinearizabilityClusterStopFollower(t *testing.T) {
	linCluster(t, "follower")
}

// TestLinearizabilityClusterStopMetaLeader: the same, stopping the
// JetStream meta leader.
func TestLinearizabilityClusterStopMetaLeader(t *testing.T) {
	linCluster(t, "meta-leader")
}

// TestLinearizabilityClusterStopStreamLeader: the same, stopping the leader
// of the bucket's stream.
func TestLinearizabilityClusterStopStreamLeader(t *testing.T) {
	linCluster(t, "stream-leader")
}

// linCluster runs a history on a 3-node cluster; victim names the node to
// stop and restart in the middle of it ("": none).
func linCluster(t *testing.T, victim string) {
	c := bustest.RunCluster(t, 3)
	js := bustest.JetStream(t, c.Connect())
	if _, err := bus.EnsureEventStream(ctx(t), js, bus.EventStreamConfig{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	cfg := lock.Config{Replicas: 3}
	serveWith(t, c.URL(), cfg)
	serveWith(t, c.URL(), cfg)

	// The node to stop is picked before the run, so that the tap on the
	// bucket is connected to another.
	victimNode, tapURL := -1, c.URL()
	if victim != "" {
		victimNode = linVictim(t, c, victim)
		tapURL = c.Node((victimNode + 1) % c.N()).ClientURL()
	}
	healed := make(chan struct{})
	h := &linHistory{start: time.Now()}
	tapJS := bustest.JetStream(t, bustest.Connect(t, tapURL))
	tap := linTapJoins(t, tapJS, h)
	wait := linClients(t, c.URL(), h, linRun{names: linNames, clients: 8, ops: 40, keepGoing: healed, deadline: h.start.Add(linMaxHistory)})
	ok := false
	defer func() {
		if !ok { // t.Fatal below: let the clients end before the cleanups
			close(healed)
			wait()
		}
	}()

	// Let the clients get going, then stop the node.
	for h.len() < 80 && time.Since(h.start) < 5*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	if victim != "" {
		i := victimNode
		t.Logf("stopping node %d (%s) after %d operations", i, victim, h.len())
		c.Stop(i)
		h.stopped = h.now()
		// The node stays down for 1.5 s at least, and until operations
		// asked for since complete.
		down := time.Now()
		for time.Since(down) < 1500*time.Millisecond || linCompleted(h, h.stopped, h.now()) < linFaultOps {
			if time.Since(down) > bustest.Scale(15*time.Second) {
				t.Errorf("only %d operations completed in %v while node %d was down", linCompleted(h, h.stopped, h.now()), time.Since(down).Round(time.Millisecond), i)
				break
			}
			time.Sleep(10 * time.Millisecond) // polling the history
		}
		h.restarted = h.now()
		t.Logf("restarting node %d after %d operations, %d completed while it was down", i, h.len(), linCompleted(h, h.stopped, h.restarted))
		c.Restart(i)
		t.Logf("node %d is back after %d operations", i, h.len())
	}
	ok = true
	close(healed)
	linCheck(t, h, wait(), tapJS, tap)
}

// linVictim picks the node to stop: the JetStream meta leader, the leader
// of the bucket's stream, or a node that leads neither.
func linVictim(t *testing.T, c *bustest.Cluster, victim string) int {
	t.Helper()
	meta := c.Leader()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js := bustest.JetStream(t, c.Connect())
	stream, err := js.Stream(ctx, "KV_"+lock.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := -1
	if info.Cluster != nil {
		for i := range c.N() {
			if info.Cluster.Leader == fmt.Sprintf("n%d", i) {
				leader = i
			}
		}
	}
	t.Logf("meta leader n%d, stream leader n%d", meta, leader)
	switch victim {
	case "meta-leader":
		if meta < 0 {
			t.Fatal("no meta leader")
		}
		return meta
	case "stream-leader":
		if leader < 0 {
			t.Fatalf("no leader for the stream: %+v", info.Cluster)
		}
		return leader
	}
	for i := range c.N() {
		if i != meta && i != leader {
			return i
		}
	}
	t.Fatal("no follower")
	return -1
}
