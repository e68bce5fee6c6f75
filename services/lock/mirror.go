package lock

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// record is the value of a contender key w.<name>.<id>.
type record struct {
	Owner string   `json:"owner,omitempty"`
	Token uint64   `json:"token,omitempty"` // the create revision; written by renewals
	TTLms int64    `json:"ttl_ms"`
	Limit int      `json:"limit,omitempty"`
	Since bus.Time `json:"since"` // when the contender asked
}

// contender is one key of a lock, as the mirror last saw it.
type contender struct {
	id      string
	rev     uint64 // revision of the last write, for compare-and-set
	token   uint64 // create revision: place in line and fencing token
	written time.Time
	rec     record
}

func (c *contender) expiresAt() time.Time {
	return c.written.Add(time.Duration(c.rec.TTLms) * time.Millisecond)
}

func (c *contender) limit() int { return max(c.rec.Limit, 1) }

// mirror keeps, in memory, the contenders of every lock in the bucket, fed
// by a feed. It is a view for waking waiters and answering reads; every
// decision that must be exclusive is a compare-and-set on the bucket.
type mirror struct {
	mu      sync.Mutex
	locks   map[string]map[string]*contender // name -> id -> contender
	names   map[string]uint64                // name -> sequence of its last message, while it has contenders
	lastSeq uint64
	changed map[string]chan struct{} // name -> closed at the next change of that name
	seq     chan struct{}            // closed at the next message

	// telling holds the expiries seen and not yet told (the expired event
	// not yet emitted, or the compare-and-set that decides who emits it not
	// yet answered): name -> key id -> closed once told.
	telling map[string]map[string]chan struct{}

	// While it loads the bucket afresh, the mirror builds the new view in
	// next and keeps answering from the old one, which lags but is never
	// wrong in a way that matters (see doc.go); the new one replaces it
	// whole once loaded.
	next      map[string]map[string]*contender
	nextNames map[string]uint64
	nextSeq   uint64
}

func newMirror() *mirror {
	return &mirror{
		locks:   map[string]map[string]*contender{},
		names:   map[string]uint64{},
		changed: map[string]chan struct{}{},
		seq:     make(chan struct{}),
		telling: map[string]map[string]chan struct{}{},
	}
}

// splitKey splits a contender key w.<name>.<id> (after the bucket prefix).
func splitKey(key string) (name, id string, ok bool) {
	rest, ok := strings.CutPrefix(key, "w.")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 || i == len(rest)-1 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

// reload starts loading the bucket afresh: the messages that follow are
// the last of every key, then new ones, until one reports nothing pending.
// A mirror that resumed after the last message it saw would miss the
// markers that expired meanwhile (the bucket keeps them MarkerTTL) and keep
// their keys for good.
func (m *mirror) reload() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next, m.nextNames, m.nextSeq = map[string]map[string]*contender{}, map[string]uint64{}, 0
}

// loaded ends a reload: the new view replaces the old one, as of the
// bucket's state when it was loaded, and every waiter takes a look.
func (m *mirror) loaded() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loadedLocked()
}

func (m *mirror) loadedLocked() {
	m.locks, m.names, m.next, m.nextNames = m.next, m.nextNames, nil, nil
	m.lastSeq = max(m.lastSeq, m.nextSeq)
	close(m.seq)
	m.seq = make(chan struct{})
	for name, ch := range m.changed {
		close(ch)
		delete(m.changed, name)
	}
}

// apply takes one message of the bucket's stream. It returns the contender
// that the message shows expired on the server, if any, with its lock name.
func (m *mirror) apply(msg jetstream.Msg, prefix string) (name string, expired *contender) {
	meta, err := msg.Metadata()
	if err != nil {
		return "", nil
	}
	name, id, ok := splitKey(strings.TrimPrefix(msg.Subject(), prefix))
	m.mu.Lock()
	defer m.mu.Unlock()
	defer func() {
		// Registered before any waiter wakes to this message: a grant
		// that follows the expiry waits until it is told (see expiring).
		if expired != nil {
			if m.telling[name] == nil {
				m.telling[name] = map[string]chan struct{}{}
			}
			if m.telling[name][expired.id] == nil {
				m.telling[name][expired.id] = make(chan struct{})
			}
		}
	}()
	if m.next != nil {
		if ok {
			update(m.next, m.nextNames, name, id, msg, meta)
			// A key that expired while the mirror was away shows as the
			// server's marker, still there if no instance has replaced it:
			// its expiry is told as the old view knew the key.
			if c := m.locks[name][id]; c != nil && msg.Headers().Get(jetstream.MarkerReasonHeader) != "" {
				expired = c
			}
		}
		m.nextSeq = meta.Sequence.Stream
		if meta.NumPending == 0 {
			m.loadedLocked()
		}
		if expired == nil {
			return "", nil
		}
		return name, expired
	}
	m.lastSeq = meta.Sequence.Stream
	close(m.seq)
	m.seq = make(chan struct{})
	if !ok {
		return "", nil
	}
	rewrite := m.locks[name][id] != nil && msg.Headers().Get("KV-Operation") == "" && msg.Headers().Get(jetstream.MarkerReasonHeader) == ""
	expired, ok = update(m.locks, m.names, name, id, msg, meta)
	if !ok {
		return "", nil
	}
	// A key written again (a renewal, a lease started at its grant) moves
	// nobody in line: its waiters are not woken for it.
	if ch, ok := m.changed[name]; ok && !rewrite {
		close(ch)
		delete(m.changed, name)
	}
	return name, expired
}

// update applies a message of contender id of name to locks and names: it
// returns the contender the message shows expired on the server, if any,
// and false for a message that is not a contender's.
func update(locks map[string]map[string]*contender, names map[string]uint64, name, id string, msg jetstream.Msg, meta *jetstream.MsgMetadata) (expired *contender, ok bool) {
	h := msg.Headers()
	cs := locks[name]
	if h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != "" {
		if cs != nil {
			names[name] = meta.Sequence.Stream
		}
		if c := cs[id]; c != nil {
			delete(cs, id)
			if len(cs) == 0 {
				delete(locks, name)
				delete(names, name)
			}
			if h.Get(jetstream.MarkerReasonHeader) != "" {
				expired = c
			}
		}
		return expired, true
	}
	var rec record
	if json.Unmarshal(msg.Data(), &rec) != nil {
		return nil, false
	}
	c := &contender{id: id, rev: meta.Sequence.Stream, token: rec.Token, written: meta.Timestamp, rec: rec}
	if c.token == 0 {
		c.token = c.rev
	}
	if cs == nil {
		cs = map[string]*contender{}
		locks[name] = cs
	}
	cs[id] = c
	names[name] = meta.Sequence.Stream
	return nil, true
}

// wrote tells the mirror that this instance wrote contender id of name at
// revision rev (at the time at, or just before), ahead of seeing the
// message itself.
func (m *mirror) wrote(name, id string, rev uint64, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.locks[name][id]; c != nil && c.rev < rev {
		c.rev, c.written = rev, at
	}
}

// rev returns the revision of the last write of contender id of name, and
// whether the mirror has the contender.
func (m *mirror) rev(name, id string) (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.locks[name][id]
	if c == nil {
		return 0, false
	}
	return c.rev, true
}

// expiring reports whether an expiry of name is being told.
func (m *mirror) expiring(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.telling[name]) > 0
}

// told marks the expiry of key id of name told (or given up).
func (m *mirror) told(name, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ch := m.telling[name][id]; ch != nil {
		close(ch)
		delete(m.telling[name], id)
		if len(m.telling[name]) == 0 {
			delete(m.telling, name)
		}
	}
}

// awaitTold waits until every expiry of name seen so far is told, or ctx
// ends.
func (m *mirror) awaitTold(ctx context.Context, name string) {
	for {
		m.mu.Lock()
		var ch chan struct{}
		for _, c := range m.telling[name] {
			ch = c
			break
		}
		m.mu.Unlock()
		if ch == nil {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// watch returns a channel closed at the next change of name, and whether
// the mirror has seen the bucket up to seq.
func (m *mirror) watch(name string, seq uint64) (<-chan struct{}, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastSeq < seq {
		return m.seq, false
	}
	ch, ok := m.changed[name]
	if !ok {
		ch = make(chan struct{})
		m.changed[name] = ch
	}
	return ch, true
}

// sync waits until the mirror has seen the bucket up to seq.
func (m *mirror) sync(ctx context.Context, seq uint64) error {
	for {
		m.mu.Lock()
		ch, done := m.seq, m.lastSeq >= seq
		m.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// place is a contender with its standing in the line.
type place struct {
	*contender
	holds bool // fewer than its limit are ahead of it
}

// lineLocked returns the contenders of name in line order (by token). The
// first in line sets the name's limit: a key that asked with another limit
// holds nothing (it is being refused with limit_mismatch) but keeps its
// place until taken out.
func (m *mirror) lineLocked(name string) []place {
	line := make([]place, 0, len(m.locks[name]))
	for _, c := range m.locks[name] {
		line = append(line, place{contender: c})
	}
	slices.SortFunc(line, func(a, b place) int { return cmp.Compare(a.token, b.token) })
	for ahead := range line {
		limit := line[0].limit()
		line[ahead].holds = ahead < limit && line[ahead].limit() == limit
	}
	return line
}

// limit returns the limit of name, the first in line's, and whether name
// has contenders at all.
func (m *mirror) limit(name string) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first *contender
	for _, c := range m.locks[name] {
		if first == nil || c.token < first.token {
			first = c
		}
	}
	if first == nil {
		return 0, false
	}
	return first.limit(), true
}

// find returns the place of the contender of name that matches.
func (m *mirror) find(name string, match func(*contender) bool) (contender, place, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.lineLocked(name) {
		if match(p.contender) {
			return *p.contender, p, true
		}
	}
	return contender{}, place{}, false
}

// position tells whether contender id of name is present and whether it
// holds the lock, and, for a refusal, what must not have changed for the
// refusal to stand (see Server.refuse). Every waiter of a name asks at every
// change of the name, so it counts the keys ahead instead of sorting the
// line. mismatch is set when the first in line asked with another limit:
// then g guards on that key alone.
func (m *mirror) position(name, id string) (present, holds, mismatch bool, g guard) {
	m.mu.Lock()
	defer m.mu.Unlock()
	me := m.locks[name][id]
	if me == nil {
		return false, false, false, guard{}
	}
	ahead := 0
	var first *contender
	for _, c := range m.locks[name] {
		if c.token < me.token {
			ahead++
		}
		if first == nil || c.token < first.token {
			first = c
		}
	}
	if first.limit() != me.limit() {
		return true, false, true, guard{keys: []keyAt{{first.id, first.rev}}}
	}
	if me.limit() == 1 && first != me {
		// The lock is held by the first in line while its key stands
		// unchanged.
		return true, false, false, guard{keys: []keyAt{{first.id, first.rev}}}
	}
	if ahead < me.limit() {
		return true, true, false, guard{}
	}
	// A semaphore is held by the first limit keys: any key ahead leaving
	// moves this one up.
	g.seq = m.names[name]
	if ahead > maxGuardKeys {
		return true, false, false, g
	}
	g.keys = make([]keyAt, 0, ahead)
	for _, c := range m.locks[name] {
		if c.token < me.token {
			g.keys = append(g.keys, keyAt{c.id, c.rev})
		}
	}
	return true, false, false, g
}

// guard is what a refusal rests on: the last message of each key ahead of
// the refused one (keys), and, for a semaphore, of any key of the name
// (seq), checked instead past maxGuardKeys keys ahead or when the stream
// takes no batch.
type guard struct {
	keys []keyAt
	seq  uint64
}

// stands reports whether a refusal of contender id of name would rest on
// the keys of g still: the mirror shows the same keys ahead, whatever
// their revisions now (a key written again, renewed, still stands ahead),
// or, for a guard checking no key one by one, the same last message of the
// name.
func (m *mirror) stands(name, id string, g guard) bool {
	present, holds, _, now := m.position(name, id)
	if !present || holds {
		return false
	}
	if g.keys == nil || now.keys == nil {
		return g.keys == nil && now.keys == nil && g.seq == now.seq
	}
	if len(g.keys) != len(now.keys) {
		return false
	}
	for _, k := range g.keys {
		if !slices.ContainsFunc(now.keys, func(n keyAt) bool { return n.id == k.id }) {
			return false
		}
	}
	return true
}

// keyAt is a contender's key (its id) and its last revision.
type keyAt struct {
	id  string
	seq uint64
}

// maxGuardKeys bounds the keys a refusal checks one by one, each in a
// message of an atomic batch.
const maxGuardKeys = 64

// freeBefore tells whether fewer than limit keys of name older than rev
// exist, the first of them (if any) with the same limit, when the mirror
// has seen the bucket up to rev-1 and so knows every such key (a key
// written at rev holds the lock then; keys only leave, and a newer key
// cannot stand ahead). False when the mirror is behind.
func (m *mirror) freeBefore(name string, rev uint64, limit int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastSeq+1 < rev {
		return false
	}
	ahead := 0
	var first *contender
	for _, c := range m.locks[name] {
		if c.token < rev {
			ahead++
			if first == nil || c.token < first.token {
				first = c
			}
		}
	}
	limit = max(limit, 1)
	return ahead < limit && (first == nil || first.limit() == limit)
}

// byToken finds the contender of name with token, and whether it holds.
func (m *mirror) byToken(name string, token uint64) (c contender, found, holds bool) {
	c, p, ok := m.find(name, func(c *contender) bool { return c.token == token })
	return c, ok, p.holds
}

// inspect describes name.
func (m *mirror) inspect(name string) InspectReply {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := InspectReply{Name: name, Limit: 1, Holders: []Holder{}, Waiters: []Holder{}}
	for i, p := range m.lineLocked(name) {
		h := Holder{Owner: p.rec.Owner, Token: p.token, Since: p.rec.Since, ExpiresAt: bus.Time{Time: p.expiresAt()}}
		if i == 0 {
			r.Limit = p.limit()
		}
		if p.holds {
			r.Holders = append(r.Holders, h)
		} else {
			r.Waiters = append(r.Waiters, h)
		}
	}
	r.Held = len(r.Holders) > 0
	return r
}

// list summarizes the locks whose name starts with prefix.
func (m *mirror) list(prefix string, limit int) ListReply {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for name := range m.locks {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	r := ListReply{Locks: []LockSummary{}}
	if len(names) > limit {
		names, r.Truncated = names[:limit], true
	}
	for _, name := range names {
		s := LockSummary{Name: name, Limit: 1}
		for i, p := range m.lineLocked(name) {
			if i == 0 {
				s.Limit = p.limit()
			}
			if p.holds {
				s.Holders++
			} else {
				s.Waiters++
			}
		}
		r.Locks = append(r.Locks, s)
	}
	return r
}
