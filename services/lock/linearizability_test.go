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

	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// Histories of concurrent acquires and releases from many clients, checked
// for linearizability against a sequential model of a lock (and of a counting
// semaphore) with porcupine, and for fencing (token order).
//
// The lease TTL is far longer than a history, so no lease expires while one
// is recorded: expiry is time-based and outside the model. An operation that
// ends with a transport error (no reply in time, no responder, a server-side
// failure) has an unknown outcome: it is recorded with a return time of
// +infinity and an output every state accepts, either way.

const (
	linTTL = 60 * time.Second // no lease expires during a history
	// linMaxHistory bounds a history well inside linTTL: a grant whose
	// client never heard of it holds its name until the TTL, and the model
	// assumes it holds it to the end.
	linMaxHistory = 30 * time.Second
	linMaxLimit   = 4
)

// linName is a lock name of a history with its limit (1: a mutex).
type linName struct {
	name  string
	limit int
}

type linOp uint8

const (
	linAcquire linOp = iota
	linRelease
)

type linInput struct {
	op     linOp
	name   string
	limit  int
	wait   time.Duration // acquire: 0 is TryAcquire
	token  uint64        // release
	client int
}

type linResult uint8

const (
	linUnknown  linResult = iota // transport error: took effect or not
	linGranted                   // acquire: granted with token
	linBusy                      // acquire: ErrLocked or ErrWaitTimeout
	linReleased                  // release: ok
	linNotHeld                   // release: ErrNotHeld
)

type linOutput struct {
	result linResult
	token  uint64 // granted
	err    string // for the visualization
}

// linState is the state of one name: the tokens of its known holders
// (sorted), the number of holders whose acquire has an unknown outcome (their
// tokens are unknown), and the greatest token granted so far.
type linState struct {
	held   [linMaxLimit]uint64
	n      int
	ghosts int
	last   uint64
}

func (s linState) holds(token uint64) int {
	for i := range s.n {
		if s.held[i] == token {
			return i
		}
	}
	return -1
}

func (s linState) with(token uint64) linState {
	s.held[s.n] = token
	s.n++
	slices.Sort(s.held[:s.n])
	return s
}

func (s linState) without(i int) linState {
	copy(s.held[i:s.n], s.held[i+1:s.n])
	s.n--
	s.held[s.n] = 0
	return s
}

// linModel is the sequential specification of a lock of limit holders (1: a
// mutex), partitioned by name. A grant needs a free slot and carries a token
// greater than every token granted before (fencing: grants are served in
// token order); a refusal (ErrLocked, ErrWaitTimeout) needs every slot taken;
// a release frees the slot of its token, and ErrNotHeld says the token holds
// none.
var linModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byName := map[string][]porcupine.Operation{}
		var names []string
		for _, op := range history {
			name := op.Input.(linInput).name
			if _, ok := byName[name]; !ok {
				names = append(names, name)
			}
			byName[name] = append(byName[name], op)
		}
		var parts [][]porcupine.Operation
		for _, name := range names {
			parts = append(parts, byName[name])
		}
		return parts
	},
	Init: func() []any { return []any{linState{}} },
	// A ghost (a grant whose reply never arrived) is a lease that nobody
	// renews: it ends at some unknown time, by its TTL or when the service
	// takes the key of a failed request out of the line. So before any
	// step, any number of ghosts may have gone.
	Step: func(state, input, output any) []any {
		var next []any
		for gone := 0; gone <= state.(linState).ghosts; gone++ {
			s := state.(linState)
			s.ghosts -= gone
			next = append(next, linStep(s, input.(linInput), output.(linOutput))...)
		}
		return next
	},
	Hash: func(state any) uint64 {
		s := state.(linState)
		h := uint64(s.n)<<56 ^ uint64(s.ghosts)<<48 ^ s.last
		for i := range s.n {
			h = h*31 + s.held[i]
		}
		return h
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		var call string
		switch {
		case in.op == linRelease:
			call = fmt.Sprintf("release(%s, %d)", in.name, in.token)
		case in.wait == 0:
			call = fmt.Sprintf("try(%s)", in.name)
		default:
			call = fmt.Sprintf("acquire(%s, %v)", in.name, in.wait)
		}
		switch out.result {
		case linGranted:
			return fmt.Sprintf("%s -> token %d", call, out.token)
		case linBusy:
			return call + " -> busy"
		case linReleased:
			return call + " -> ok"
		case linNotHeld:
			return call + " -> not held"
		}
		return call + " -> unknown: " + out.err
	},
	DescribeState: func(state any) string {
		s := state.(linState)
		return fmt.Sprintf("held %v +%d unknown, last %d", s.held[:s.n], s.ghosts, s.last)
	},
}

// linStep applies one operation to a state with a known number of ghosts.
func linStep(s linState, in linInput, out linOutput) []any {
	free := s.n+s.ghosts < in.limit
	switch in.op {
	case linAcquire:
		switch out.result {
		case linGranted:
			if free && out.token > s.last && s.holds(out.token) < 0 {
				next := s.with(out.token)
				next.last = out.token
				return []any{next}
			}
		case linBusy:
			if !free {
				return []any{s}
			}
		case linUnknown:
			if free {
				next := s
				next.ghosts++
				return []any{s, next}
			}
			return []any{s}
		}
	case linRelease:
		i := s.holds(in.token)
		switch out.result {
		case linReleased:
			if i >= 0 {
				return []any{s.without(i)}
			}
		case linNotHeld:
			if i < 0 {
				return []any{s}
			}
		case linUnknown:
			if i >= 0 {
				return []any{s, s.without(i)}
			}
			return []any{s}
		}
	}
	return nil
}

// linHistory records the operations of a run.
type linHistory struct {
	start   time.Time
	mu      sync.Mutex
	ops     []porcupine.Operation
	clients atomic.Int32 // porcupine client ids handed out
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
	h      *linHistory
	c      *lock.Client
	rng    *rand.Rand
	id     int // porcupine client id: a new one after each unknown outcome
	owner  string
	lease  *lock.Lease
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
	}
	return linOutput{result: linUnknown, err: err.Error()}
}

func linClassifyRelease(err error) linOutput {
	switch {
	case err == nil:
		return linOutput{result: linReleased}
	case errors.Is(err, lock.ErrNotHeld):
		return linOutput{result: linNotHeld}
	}
	return linOutput{result: linUnknown, err: err.Error()}
}

func (w *linClient) acquire(n linName) {
	in := linInput{op: linAcquire, name: n.name, limit: n.limit, client: w.id}
	o := lock.Options{TTL: linTTL, Owner: w.owner, Limit: n.limit}
	if n.limit == 1 {
		o.Limit = 0 // the default
	}
	var (
		l   *lock.Lease
		err error
	)
	if w.rng.IntN(2) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
		call := w.h.now()
		l, err = w.c.TryAcquire(ctx, n.name, o)
		ret := w.h.now()
		cancel()
		w.record(in, call, l, err, ret)
	} else {
		// Acquire waits up to the deadline less 100ms, and answers before it.
		in.wait = time.Duration(50+w.rng.IntN(350)) * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), in.wait+100*time.Millisecond)
		call := w.h.now()
		l, err = w.c.Acquire(ctx, n.name, o)
		ret := w.h.now()
		cancel()
		w.record(in, call, l, err, ret)
	}
	if l != nil {
		w.lease, w.limit = l, n.limit
		time.Sleep(time.Duration(w.rng.IntN(3000)) * time.Microsecond) // hold it a moment
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
	in := linInput{op: linRelease, name: l.Name(), limit: w.limit, token: l.Token(), client: w.id}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	call := w.h.now()
	err := l.Release(ctx) // stops the renewals, whatever the outcome
	ret := w.h.now()
	out := linClassifyRelease(err)
	w.h.add(in, call, out, ret)
	for try := 0; out.result == linUnknown && try < 20 && time.Now().Before(deadline); try++ {
		w.errors = append(w.errors, out.err)
		w.newID()
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
	for i := 0; ; i++ {
		if i >= more {
			if cfg.keepGoing == nil {
				break
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
		case w.lease != nil:
			w.release(cfg.deadline)
		case len(w.past) > 0 && w.rng.IntN(10) == 0:
			w.releaseStale()
		default:
			w.acquire(cfg.names[w.rng.IntN(len(cfg.names))])
		}
		time.Sleep(time.Duration(w.rng.IntN(5000)) * time.Microsecond)
	}
	if w.lease != nil {
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
		w := &linClient{
			h:     h,
			c:     lock.NewClient(bustest.Connect(t, url)),
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

// linCheck checks a history for linearizability and fencing.
func linCheck(t *testing.T, h *linHistory, ws []*linClient) {
	t.Helper()
	ops := h.ops
	var unknown int
	counts := map[linResult]int{}
	for _, op := range ops {
		counts[op.Output.(linOutput).result]++
	}
	unknown = counts[linUnknown]
	var errs []string
	for _, w := range ws {
		errs = append(errs, w.errors...)
	}
	t.Logf("%d operations in %v: %d granted, %d busy, %d released, %d not held, %d unknown",
		len(ops), time.Since(h.start).Round(time.Millisecond), counts[linGranted], counts[linBusy], counts[linReleased], counts[linNotHeld], unknown)
	if len(errs) > 0 {
		slices.Sort(errs)
		errs = slices.Compact(errs)
		t.Logf("unknown outcomes: %s", strings.Join(errs[:min(len(errs), 10)], "; "))
	}
	if counts[linGranted] == 0 || counts[linReleased] == 0 {
		t.Fatalf("a history without grants or releases checks nothing")
	}
	if err := linCheckFencing(ops); err != nil {
		t.Fatalf("fencing: %v", err)
	}

	model := linModel.ToModel()
	res := porcupine.CheckOperationsTimeout(model, ops, 30*time.Second)
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
// acquiring (TryAcquire, or Acquire with a wait) and releasing two mutexes
// and a semaphore of 2, and releasing stale tokens.
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
	for range instances {
		serveWith(t, s.URL(), lock.Config{})
	}
	h := &linHistory{start: time.Now()}
	wait := linClients(t, s.URL(), h, linRun{names: linNames, clients: 8, ops: 40, deadline: h.start.Add(linMaxHistory)})
	linCheck(t, h, wait())
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
	cfg := lock.Config{Replicas: 3}
	serveWith(t, c.URL(), cfg)
	serveWith(t, c.URL(), cfg)

	healed := make(chan struct{})
	h := &linHistory{start: time.Now()}
	wait := linClients(t, c.URL(), h, linRun{names: linNames, clients: 8, ops: 40, keepGoing: healed, deadline: h.start.Add(linMaxHistory)})
	ok := false
	defer func() {
		if !ok { // t.Fatal below: let the clients end before the cleanups
			close(healed)
			wait()
		}
	}()

	// Let the clients get going, then pick the node and stop it.
	for h.len() < 80 && time.Since(h.start) < 5*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	if victim != "" {
		i := linVictim(t, c, victim)
		t.Logf("stopping node %d (%s) after %d operations", i, victim, h.len())
		c.Stop(i)
		time.Sleep(1500 * time.Millisecond)
		t.Logf("restarting node %d after %d operations", i, h.len())
		c.Restart(i)
		t.Logf("node %d is back after %d operations", i, h.len())
	}
	ok = true
	close(healed)
	linCheck(t, h, wait())
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

// TestLinearizabilityModel: the model and the fencing check reject the
// histories they must reject, and accept unknown outcomes either way.
func TestLinearizabilityModel(t *testing.T) {
	const inf = math.MaxInt64
	acq := func(name string, limit int, call int64, out linOutput, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: linInput{op: linAcquire, name: name, limit: limit}, Call: call, Output: out, Return: ret}
	}
	rel := func(name string, token uint64, call int64, out linOutput, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: linInput{op: linRelease, name: name, limit: 1, token: token}, Call: call, Output: out, Return: ret}
	}
	granted := func(token uint64) linOutput { return linOutput{result: linGranted, token: token} }
	var (
		busy     = linOutput{result: linBusy}
		released = linOutput{result: linReleased}
		notHeld  = linOutput{result: linNotHeld}
		unknown  = linOutput{result: linUnknown}
	)
	for _, c := range []struct {
		name    string
		ok      bool
		fencing bool // the fencing check rejects it too
		ops     []porcupine.Operation
	}{
		{"acquire release acquire", true, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 30), acq("a", 1, 40, granted(7), 50)}},
		{"two holders", false, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), acq("a", 1, 20, granted(7), 30)}},
		{"two names", true, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), acq("b", 1, 20, granted(7), 30)}},
		{"concurrent grant and release", true, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 40), acq("a", 1, 15, granted(7), 30)}},
		{"busy while free", false, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 30), acq("a", 1, 40, busy, 50)}},
		{"not held while held", false, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, notHeld, 30)}},
		{"stale release", true, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 30), rel("a", 5, 40, notHeld, 50)}},
		{"token going back", false, true, []porcupine.Operation{
			acq("a", 1, 0, granted(7), 10), rel("a", 7, 20, released, 30), acq("a", 1, 40, granted(5), 50)}},
		{"token reused", false, true, []porcupine.Operation{
			acq("a", 1, 0, granted(7), 10), rel("a", 7, 20, released, 30), acq("a", 1, 40, granted(7), 50)}},
		{"semaphore of 2", true, false, []porcupine.Operation{
			acq("p", 2, 0, granted(5), 10), acq("p", 2, 20, granted(7), 30), acq("p", 2, 40, busy, 50)}},
		{"semaphore of 2, three holders", false, false, []porcupine.Operation{
			acq("p", 2, 0, granted(5), 10), acq("p", 2, 20, granted(7), 30), acq("p", 2, 40, granted(9), 50)}},
		{"unknown acquire, not taken", true, false, []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, granted(7), 30)}},
		{"unknown acquire, taken", true, false, []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, busy, 30)}},
		{"unknown acquire, taken, then its lease ends", true, false, []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, busy, 30), acq("a", 1, 40, granted(7), 50)}},
		{"a ghost does not come back", false, false, []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, busy, 30), acq("a", 1, 40, granted(7), 50),
			rel("a", 7, 60, released, 70), acq("a", 1, 80, busy, 90)}},
		{"unknown release, taken", true, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, unknown, inf), acq("a", 1, 40, granted(7), 50)}},
		{"unknown release, not taken", true, false, []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, unknown, inf), acq("a", 1, 40, busy, 50), rel("a", 5, 60, released, 70)}},
	} {
		res := porcupine.CheckOperationsTimeout(linModel.ToModel(), c.ops, 10*time.Second)
		if (res == porcupine.Ok) != c.ok {
			t.Errorf("%s: %s, want ok %v", c.name, res, c.ok)
		}
		if err := linCheckFencing(c.ops); (err != nil) != c.fencing {
			t.Errorf("%s: fencing check: %v, want a failure: %v", c.name, err, c.fencing)
		}
	}
}
