package lock_test

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The sequential model the lock histories are checked against, and how a
// recorded history is turned into what porcupine checks.
//
// # Waiting
//
// A refused try observes, at one instant, every slot of its name taken. A
// wait that times out observes more: its key stood in line from its join
// until the refusal, and the service grants the first keys in line as soon
// as they hold a slot. So it is legal only if every slot was taken through
// that whole window, or was free only between a release and the grant that
// took the slot again (another waiter served). Porcupine's operations have
// one linearization point each, so a timed-out wait is checked as two:
//
//   - a watch, which begins the window and needs every slot taken. Its
//     interval ends at the join: the timestamp of the key's first message
//     in the bucket's stream, tapped while the history runs (on a cluster
//     the leader stamps a message when it gives it its place in the
//     stream's order), plus the clock slack;
//   - the refusal, which needs every slot taken and ends the window. Its
//     interval starts where the service's wait had surely run out: the
//     service counts wait_ms from the request's arrival, after the call
//     (less the clock slack).
//
// While a watch stands, a slot may be free only briefly: a step that frees
// one (a release, a ghost's key leaving) sets a deadline, the return time
// of that step's operation plus a tolerance (linGapDefault, scaled), and
// every operation linearized while the slot stays free must have been
// called by then. The release took effect by its return and a later
// operation by its call at the earliest, so the model rejects a history only
// if, in every linearization, a slot surely stayed free longer than the
// tolerance while a timed-out waiter stood in line. The service itself
// leaves no such gap: the grant that takes the slot again goes to a key
// ahead of the waiter's, asked for before the waiter joined, so its
// interval covers the hand-off; the tolerance absorbs the clocks' rounding.
//
// A wait whose join the tap missed (its key purged before the tap read it,
// as when the tap's consumer is made again in a failover) keeps only the
// refusal's end of its window.
//
// # Unknown outcomes
//
// An operation that ends with a transport error has an unknown outcome. After
// the run, the acquired and released events of MESH_EVENTS resolve what they
// can: each acquire has an owner of its own, so an acquired event with that
// owner says the acquire was granted, with the event's token, before the
// event's time (the service emits it before it replies); a released event of
// a token whose only release of unknown outcome is that one says it
// released. A resolved grant is a holder like any other: it counts in token
// order and holds its slot until a release of its token (none, as its client
// never learned the token: it holds it for the rest of the history, as on the
// server, where nobody renews it). An acquired event that contradicts a
// known outcome fails the run, as does an expired event (no lease lives
// less than its TTL, far longer than a history).
//
// An acquire still unknown left no acquired event: it was never granted, or
// its event was lost (with a connection, or while the event stream elects a
// leader, in a fault). Either way its key may have stood first in line,
// holding a slot, until the service took it out (the request's caller gone,
// a write that failed). So it may take a slot at any time after its call (a
// ghost), and give it back at any later time: looser than the service,
// never stricter. A run fails when more than 5% of its outcomes stay
// unknown.
//
// A definite refusal (expired: the request arrived after its deadline and
// wrote nothing; no responders: no instance received it) changed nothing.

// linGapDefault is the tolerance of a free slot while a timed-out waiter
// stands in line, scaled by MESH_TEST_TIME_SCALE in runs.
const linGapDefault = 20 * time.Millisecond

// linClockSlack bounds the disagreement of the instants the model compares
// beyond the clocks' drift measured in a run: event times are rounded to
// the millisecond, wait_ms is sent in whole milliseconds.
const linClockSlack = 2 * time.Millisecond

// linName is a lock name of a history with its limit (1: a mutex).
type linName struct {
	name  string
	limit int
}

type linOp uint8

const (
	linAcquire linOp = iota
	linRelease
	linWatch // a timed-out waiter's key stands in line
)

type linInput struct {
	op    linOp
	name  string
	limit int
	wait  time.Duration // acquire: 0 is TryAcquire
	token uint64        // release
	owner string        // acquire: unique to the operation
	// waitEnd (a wait) is when the service's wait had surely run out.
	waitEnd int64
	// watch (a watch, and the refusal of a watched wait) names the watch.
	watch int32
	// The operation's interval as given to porcupine, and the gap
	// tolerance: set by linPrepare.
	call, ret, gap int64
	client         int
}

type linResult uint8

const (
	linUnknown  linResult = iota // transport error: took effect or not
	linGranted                   // acquire: granted with token
	linBusy                      // acquire: ErrLocked or ErrWaitTimeout
	linReleased                  // release: ok
	linNotHeld                   // release: ErrNotHeld
	linRefused                   // definite refusal: expired, no responders
	linWatching                  // watch
)

type linOutput struct {
	result linResult
	token  uint64 // granted
	err    string // for the visualization
	// unexpected marks a refusal no run may see (limit_mismatch, where
	// every contender of a name asks with the same limit).
	unexpected bool
}

const linMaxWatch = 32 // watches standing at once on one name

// linState is the state of one name: the tokens of its known holders
// (sorted), the number of ghosts, the greatest token granted so far, the
// watches standing (sorted), and, when a slot is free while a watch stands,
// the time by which the next operation must have been called (gapBy).
type linState struct {
	held   [linMaxLimit]uint64
	n      int
	ghosts int
	last   uint64
	watch  [linMaxWatch]int32
	nw     int
	gapBy  int64
}

func (s linState) full(limit int) bool { return s.n+s.ghosts >= limit }

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

func (s linState) watching(id int32) int {
	for i := range s.nw {
		if s.watch[i] == id {
			return i
		}
	}
	return -1
}

func (s linState) withWatch(id int32) linState {
	if s.nw == linMaxWatch {
		panic("lock model: too many watches on one name")
	}
	s.watch[s.nw] = id
	s.nw++
	slices.Sort(s.watch[:s.nw])
	return s
}

func (s linState) withoutWatch(i int) linState {
	copy(s.watch[i:s.nw], s.watch[i+1:s.nw])
	s.nw--
	s.watch[s.nw] = 0
	return s
}

// linModel is the sequential specification of a lock of limit holders (1: a
// mutex), partitioned by name. A grant needs a free slot and carries a token
// greater than every token granted before (fencing: grants are served in
// token order); a refusal (ErrLocked, ErrWaitTimeout) needs every slot taken;
// a release frees the slot of its token, and ErrNotHeld says the token holds
// none; a watch needs every slot taken, and while one stands a slot is free
// only briefly (see above).
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
	// A ghost may give its slot back at any time: before any step, any
	// number of ghosts may have gone.
	Step: func(state, input, output any) []any {
		s0, in := state.(linState), input.(linInput)
		if s0.gapBy != 0 && in.call > s0.gapBy {
			return nil // a slot stayed free too long while a waiter stood in line
		}
		var next []any
		for gone := 0; gone <= s0.ghosts; gone++ {
			s := s0
			s.ghosts -= gone
			for _, n := range linStep(s, in, output.(linOutput)) {
				ns := n.(linState)
				switch {
				case ns.nw == 0 || ns.full(in.limit):
					ns.gapBy = 0
				case ns.gapBy == 0:
					// The slot was freed by this step at the latest.
					ns.gapBy = math.MaxInt64
					if in.ret < math.MaxInt64-in.gap {
						ns.gapBy = in.ret + in.gap
					}
				}
				next = append(next, ns)
			}
		}
		return next
	},
	Hash: func(state any) uint64 {
		s := state.(linState)
		h := uint64(s.n)<<56 ^ uint64(s.ghosts)<<48 ^ uint64(s.nw)<<40 ^ s.last ^ uint64(s.gapBy)*0x9e3779b97f4a7c15
		for i := range s.n {
			h = h*31 + s.held[i]
		}
		for i := range s.nw {
			h = h*31 + uint64(s.watch[i])
		}
		return h
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		var call string
		switch {
		case in.op == linWatch:
			return fmt.Sprintf("watch %d(%s) of %s", in.watch, in.name, in.owner)
		case in.op == linRelease:
			call = fmt.Sprintf("release(%s, %d)", in.name, in.token)
		case in.wait == 0:
			call = fmt.Sprintf("try(%s)", in.name)
		default:
			call = fmt.Sprintf("acquire(%s, %v)", in.name, in.wait)
		}
		if in.owner != "" {
			call += " by " + in.owner
		}
		switch out.result {
		case linGranted:
			return fmt.Sprintf("%s -> token %d", call, out.token)
		case linBusy:
			if in.watch != 0 {
				return fmt.Sprintf("%s -> busy, ends watch %d", call, in.watch)
			}
			return call + " -> busy"
		case linReleased:
			return call + " -> ok"
		case linNotHeld:
			return call + " -> not held"
		case linRefused:
			return call + " -> refused: " + out.err
		}
		return call + " -> unknown: " + out.err
	},
	DescribeState: func(state any) string {
		s := state.(linState)
		d := fmt.Sprintf("held %v +%d unknown, last %d", s.held[:s.n], s.ghosts, s.last)
		if s.nw > 0 {
			d += fmt.Sprintf(", watches %v", s.watch[:s.nw])
		}
		if s.gapBy != 0 {
			d += fmt.Sprintf(", free: next call by %.3f ms", float64(s.gapBy)/1e6)
		}
		return d
	},
}

// linStep applies one operation to a state with a known number of ghosts.
func linStep(s linState, in linInput, out linOutput) []any {
	free := !s.full(in.limit)
	if out.result == linRefused {
		return []any{s}
	}
	switch in.op {
	case linWatch:
		if !free && s.watching(in.watch) < 0 {
			return []any{s.withWatch(in.watch)}
		}
	case linAcquire:
		switch out.result {
		case linGranted:
			if free && out.token > s.last && s.holds(out.token) < 0 {
				next := s.with(out.token)
				next.last = out.token
				return []any{next}
			}
		case linBusy:
			if free {
				return nil
			}
			if in.watch == 0 {
				return []any{s}
			}
			if i := s.watching(in.watch); i >= 0 {
				return []any{s.withoutWatch(i)}
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

// linEvent is a lock event of MESH_EVENTS, its time on the history's clock.
type linEvent struct {
	what  string // acquired, released, expired
	name  string
	owner string
	token uint64
	at    int64
}

// linParams are what linPrepare needs beyond the history.
type linParams struct {
	events []linEvent
	joins  map[string]int64 // owner -> when the stream stored its key (first write)
	slack  int64            // clock disagreement allowed (linClockSlack and drift)
	gap    int64            // tolerance of a free slot while a waiter stands in line
}

// linReport counts what linPrepare did.
type linReport struct {
	resolvedGrants, resolvedReleases int
	waits, watched                   int // timed-out waits, and those watched
	unknown                          int // outcomes still unknown
}

// linPrepare resolves unknown outcomes from the events and turns timed-out
// waits into watches and refusals (see above). It fails on events that
// contradict the history.
func linPrepare(history []porcupine.Operation, p linParams) ([]porcupine.Operation, linReport, error) {
	var rep linReport
	ops := slices.Clone(history)
	acquired := map[string]linEvent{}   // by owner
	released := map[uint64][]linEvent{} // by token
	for _, e := range p.events {
		switch e.what {
		case "acquired":
			if prev, ok := acquired[e.owner]; ok {
				return nil, rep, fmt.Errorf("two acquired events for owner %s: tokens %d and %d", e.owner, prev.token, e.token)
			}
			acquired[e.owner] = e
		case "released":
			released[e.token] = append(released[e.token], e)
		case "expired":
			return nil, rep, fmt.Errorf("lease %s (token %d, owner %s) expired within a history shorter than its ttl", e.name, e.token, e.owner)
		}
	}
	// Acquires.
	for i, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		if in.op != linAcquire {
			continue
		}
		e, ok := acquired[in.owner]
		switch {
		case !ok:
		case e.name != in.name:
			return nil, rep, fmt.Errorf("acquired event of %s for owner %s, which asked for %s", e.name, in.owner, in.name)
		case out.result == linGranted && out.token != e.token:
			return nil, rep, fmt.Errorf("%s: owner %s was granted token %d, its acquired event says %d", in.name, in.owner, out.token, e.token)
		case out.result == linUnknown:
			ops[i].Output = linOutput{result: linGranted, token: e.token, err: "resolved from its acquired event"}
			ops[i].Return = max(op.Call, min(op.Return, e.at+p.slack))
			rep.resolvedGrants++
		case out.result != linGranted:
			return nil, rep, fmt.Errorf("%s: owner %s was refused, yet an acquired event grants it token %d", in.name, in.owner, e.token)
		}
	}
	// Releases: a token released by an event, whose releases are all of
	// unknown outcome but one, was released by that one.
	type rel struct{ unknown, ok []int }
	rels := map[uint64]*rel{}
	for i, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		if in.op != linRelease {
			continue
		}
		r := rels[in.token]
		if r == nil {
			r = &rel{}
			rels[in.token] = r
		}
		switch out.result {
		case linUnknown:
			r.unknown = append(r.unknown, i)
		case linReleased:
			r.ok = append(r.ok, i)
		}
	}
	for token, r := range rels {
		if len(released[token]) == 1 && len(r.ok) == 0 && len(r.unknown) == 1 {
			i := r.unknown[0]
			ops[i].Output = linOutput{result: linReleased, err: "resolved from its released event"}
			ops[i].Return = max(ops[i].Call, min(ops[i].Return, released[token][0].at+p.slack))
			rep.resolvedReleases++
		}
	}
	// Timed-out waits.
	var watches []porcupine.Operation
	var id int32
	for i, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		if in.op != linAcquire || in.wait == 0 || out.result != linBusy {
			continue
		}
		rep.waits++
		end := in.waitEnd - p.slack
		if end <= op.Call {
			continue
		}
		ops[i].Call = end
		k, ok := p.joins[in.owner]
		if !ok || max(k, op.Call)+p.slack >= end {
			continue
		}
		id++
		in.watch = id
		ops[i].Input = in
		w := linInput{op: linWatch, name: in.name, limit: in.limit, owner: in.owner, watch: id, client: in.client}
		watches = append(watches, porcupine.Operation{ClientId: op.ClientId, Input: w, Call: op.Call, Output: linOutput{result: linWatching}, Return: max(k, op.Call) + p.slack})
		rep.watched++
	}
	ops = append(ops, watches...)
	for i, op := range ops {
		in := op.Input.(linInput)
		in.call, in.ret, in.gap = op.Call, op.Return, p.gap
		ops[i].Input = in
		if op.Output.(linOutput).result == linUnknown {
			rep.unknown++
		}
	}
	return ops, rep, nil
}

// TestLinearizabilityModel: the model, the resolution of unknown outcomes
// and the fencing check reject the histories they must reject, and accept
// unknown outcomes either way.
func TestLinearizabilityModel(t *testing.T) {
	const (
		inf = math.MaxInt64
		ms  = int64(time.Millisecond)
	)
	acq := func(name string, limit int, call int64, out linOutput, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: linInput{op: linAcquire, name: name, limit: limit}, Call: call, Output: out, Return: ret}
	}
	// by: an acquire by owner; wait: a wait of w ms by owner (times in ms).
	by := func(name string, limit int, owner string, call int64, out linOutput, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: linInput{op: linAcquire, name: name, limit: limit, owner: owner}, Call: call * ms, Output: out, Return: min(ret, inf/ms) * ms}
	}
	wait := func(name string, limit int, owner string, w, call int64, out linOutput, ret int64) porcupine.Operation {
		op := by(name, limit, owner, call, out, ret)
		in := op.Input.(linInput)
		in.wait, in.waitEnd = time.Duration(w*ms), (call+w-1)*ms
		op.Input = in
		return op
	}
	rel := func(name string, token uint64, call int64, out linOutput, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: linInput{op: linRelease, name: name, limit: 1, token: token}, Call: call, Output: out, Return: ret}
	}
	relMs := func(name string, limit int, token uint64, call int64, out linOutput, ret int64) porcupine.Operation {
		op := rel(name, token, call*ms, out, min(ret, inf/ms)*ms)
		in := op.Input.(linInput)
		in.limit = limit
		op.Input = in
		return op
	}
	granted := func(token uint64) linOutput { return linOutput{result: linGranted, token: token} }
	event := func(what, name, owner string, token uint64, at int64) linEvent {
		return linEvent{what: what, name: name, owner: owner, token: token, at: at * ms}
	}
	var (
		busy     = linOutput{result: linBusy}
		released = linOutput{result: linReleased}
		notHeld  = linOutput{result: linNotHeld}
		unknown  = linOutput{result: linUnknown}
		refused  = linOutput{result: linRefused}
	)
	joined := func(owner string, at int64) map[string]int64 { return map[string]int64{owner: at * ms} }
	for _, c := range []struct {
		name    string
		ok      bool
		fencing bool // the fencing check rejects it too
		ops     []porcupine.Operation
		events  []linEvent
		joins   map[string]int64
		prepErr bool // the events contradict the history
	}{
		{name: "acquire release acquire", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 30), acq("a", 1, 40, granted(7), 50)}},
		{name: "two holders", ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), acq("a", 1, 20, granted(7), 30)}},
		{name: "two names", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), acq("b", 1, 20, granted(7), 30)}},
		{name: "concurrent grant and release", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 40), acq("a", 1, 15, granted(7), 30)}},
		{name: "busy while free", ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 30), acq("a", 1, 40, busy, 50)}},
		{name: "not held while held", ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, notHeld, 30)}},
		{name: "stale release", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, released, 30), rel("a", 5, 40, notHeld, 50)}},
		{name: "token going back", fencing: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(7), 10), rel("a", 7, 20, released, 30), acq("a", 1, 40, granted(5), 50)}},
		{name: "token reused", fencing: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(7), 10), rel("a", 7, 20, released, 30), acq("a", 1, 40, granted(7), 50)}},
		{name: "semaphore of 2", ok: true, ops: []porcupine.Operation{
			acq("p", 2, 0, granted(5), 10), acq("p", 2, 20, granted(7), 30), acq("p", 2, 40, busy, 50)}},
		{name: "semaphore of 2, three holders", ops: []porcupine.Operation{
			acq("p", 2, 0, granted(5), 10), acq("p", 2, 20, granted(7), 30), acq("p", 2, 40, granted(9), 50)}},
		{name: "unknown acquire, not taken", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, granted(7), 30)}},
		{name: "unknown acquire, taken", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, busy, 30)}},
		{name: "unknown acquire, its key in line for a while, no acquired event", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, busy, 30), acq("a", 1, 40, granted(7), 50)}},
		{name: "a ghost does not come back", ops: []porcupine.Operation{
			acq("a", 1, 0, unknown, inf), acq("a", 1, 20, busy, 30), acq("a", 1, 40, granted(7), 50),
			rel("a", 7, 60, released, 70), acq("a", 1, 80, busy, 90)}},
		{name: "unknown release, taken", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, unknown, inf), acq("a", 1, 40, granted(7), 50)}},
		{name: "unknown release, not taken", ok: true, ops: []porcupine.Operation{
			acq("a", 1, 0, granted(5), 10), rel("a", 5, 20, unknown, inf), acq("a", 1, 40, busy, 50), rel("a", 5, 60, released, 70)}},

		// Waiting (times in ms).
		{name: "lost wake-up: free 380ms of a 400ms wait", ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "w", 400, 20, busy, 420), relMs("a", 1, 5, 30, released, 40)},
			joins: joined("w", 21)},
		{name: "lost wake-up, join not seen", ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "w", 400, 20, busy, 420), relMs("a", 1, 5, 30, released, 40)}},
		{name: "lost wake-up, then taken by a newcomer", ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "w", 400, 20, busy, 420), relMs("a", 1, 5, 30, released, 40),
			by("a", 1, "n", 300, granted(7), 310)},
			joins: joined("w", 21)},
		{name: "free while a waiter stands, join not seen: only the end is checked", ok: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "w", 400, 20, busy, 420), relMs("a", 1, 5, 30, released, 40),
			by("a", 1, "n", 300, granted(7), 310)}},
		{name: "free at the join", ops: []porcupine.Operation{
			wait("a", 1, "w", 400, 20, busy, 420), by("a", 1, "n", 100, granted(5), 110)},
			joins: joined("w", 21)},
		{name: "hand-off to a waiter ahead", ok: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "x", 300, 12, granted(7), 100),
			wait("a", 1, "w", 400, 20, busy, 420), relMs("a", 1, 5, 30, released, 40), relMs("a", 1, 7, 430, released, 440)},
			joins: map[string]int64{"x": 13 * ms, "w": 21 * ms}},
		{name: "hand-off to a holder that asked 60ms after the release", ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "w", 400, 20, busy, 420), relMs("a", 1, 5, 30, released, 40),
			by("a", 1, "n", 100, granted(7), 110), relMs("a", 1, 7, 430, released, 440)},
			joins: joined("w", 21)},
		{name: "hand-off to a holder that asked 10ms after the release", ok: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "w", 400, 20, busy, 420), relMs("a", 1, 5, 30, released, 40),
			by("a", 1, "n", 50, granted(7), 60), relMs("a", 1, 7, 430, released, 440)},
			joins: joined("w", 21)},
		{name: "a wait that timed out, released after", ok: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), wait("a", 1, "w", 400, 20, busy, 425), relMs("a", 1, 5, 421, released, 430)},
			joins: joined("w", 22)},
		{name: "semaphore: a slot free 260ms while a waiter stands", ops: []porcupine.Operation{
			by("p", 2, "h1", 0, granted(5), 10), by("p", 2, "h2", 0, granted(7), 10), wait("p", 2, "w", 400, 20, busy, 420),
			relMs("p", 2, 5, 30, released, 40), by("p", 2, "n", 300, granted(9), 310)},
			joins: joined("w", 21)},
		{name: "semaphore: a slot handed to a waiter ahead", ok: true, ops: []porcupine.Operation{
			by("p", 2, "h1", 0, granted(5), 10), by("p", 2, "h2", 0, granted(7), 10), wait("p", 2, "x", 300, 12, granted(9), 100),
			wait("p", 2, "w", 400, 20, busy, 420), relMs("p", 2, 5, 30, released, 40)},
			joins: map[string]int64{"x": 13 * ms, "w": 21 * ms}},
		{name: "a ghost's key leaves while a waiter stands, the next takes it", ok: true, ops: []porcupine.Operation{
			by("a", 1, "g", 0, unknown, inf), wait("a", 1, "w", 400, 20, busy, 420), by("a", 1, "n", 300, granted(7), 310)},
			joins: joined("w", 21)},

		// Unknown outcomes resolved from the events (times in ms).
		{name: "unknown acquire granted by its event, try busy, try granted: a double grant", ops: []porcupine.Operation{
			by("a", 1, "g", 0, unknown, inf), by("a", 1, "t1", 20, busy, 30), by("a", 1, "t2", 40, granted(7), 50)},
			events: []linEvent{event("acquired", "a", "g", 5, 5)}},
		{name: "unknown acquire granted by its event, released by its event, a lower token after", fencing: true, ops: []porcupine.Operation{
			by("a", 1, "g", 0, unknown, inf), relMs("a", 1, 9, 20, unknown, inf), by("a", 1, "t", 40, granted(7), 50)},
			events: []linEvent{event("acquired", "a", "g", 9, 5), event("released", "a", "g", 9, 25)}},
		{name: "unknown acquire granted by its event, a lower token while it holds", fencing: true, ops: []porcupine.Operation{
			by("a", 1, "g", 0, unknown, inf), by("a", 1, "t", 40, granted(7), 50)},
			events: []linEvent{event("acquired", "a", "g", 9, 5)}},
		{name: "unknown acquire granted by its event, released by its event, a higher token after", ok: true, ops: []porcupine.Operation{
			by("a", 1, "g", 0, unknown, inf), relMs("a", 1, 5, 20, unknown, inf), by("a", 1, "t", 40, granted(7), 50)},
			events: []linEvent{event("acquired", "a", "g", 5, 5), event("released", "a", "g", 5, 25)}},
		{name: "an acquired event for a refused acquire", prepErr: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), by("a", 1, "t", 20, busy, 30)},
			events: []linEvent{event("acquired", "a", "h", 5, 5), event("acquired", "a", "t", 7, 25)}},
		{name: "an acquired event with another token", prepErr: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10)},
			events: []linEvent{event("acquired", "a", "h", 6, 5)}},
		{name: "a lease expired", prepErr: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10)},
			events: []linEvent{event("acquired", "a", "h", 5, 5), event("expired", "a", "h", 5, 500)}},
		{name: "definite refusal while free", ok: true, ops: []porcupine.Operation{
			by("a", 1, "h", 0, granted(5), 10), relMs("a", 1, 5, 20, released, 30), by("a", 1, "x", 40, refused, 50)}},
	} {
		ops, rep, err := linPrepare(c.ops, linParams{events: c.events, joins: c.joins, slack: linClockSlack.Nanoseconds(), gap: linGapDefault.Nanoseconds()})
		if (err != nil) != c.prepErr {
			t.Errorf("%s: resolving from the events: %v, want an error: %v", c.name, err, c.prepErr)
		}
		if err != nil {
			continue
		}
		if c.joins != nil && rep.watched == 0 {
			t.Errorf("%s: no wait watched from its join", c.name)
		}
		res := porcupine.CheckOperationsTimeout(linModel.ToModel(), ops, 10*time.Second)
		if (res == porcupine.Ok) != c.ok {
			t.Errorf("%s: %s, want ok %v", c.name, res, c.ok)
		}
		if err := linCheckFencing(ops); (err != nil) != c.fencing {
			t.Errorf("%s: fencing check: %v, want a failure: %v", c.name, err, c.fencing)
		}
	}
}
