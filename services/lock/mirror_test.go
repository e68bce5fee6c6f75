package lock

import "testing"

// A refusal whose purge conflicted is decided again; it counts as the line
// having changed (towards maxRefusals) only when a key it rested on left,
// not when one was written again or nothing changed (a write in flight).
func TestRefusalStands(t *testing.T) {
	m := newMirror()
	set := func(name, id string, token, rev uint64, limit int) {
		if m.locks[name] == nil {
			m.locks[name] = map[string]*contender{}
		}
		m.locks[name][id] = &contender{id: id, token: token, rev: rev, rec: record{Limit: limit}}
		m.names[name] = max(m.names[name], rev)
	}

	// A lock: the refusal of "me" rests on the holder's key.
	set("l", "holder", 1, 1, 0)
	set("l", "me", 2, 2, 0)
	_, holds, _, g := m.position("l", "me")
	if holds || len(g.keys) != 1 {
		t.Fatalf("position = holds %v, guard %+v", holds, g)
	}
	if !m.stands("l", "me", g) {
		t.Error("nothing changed: the refusal does not stand")
	}
	set("l", "holder", 1, 5, 0) // the holder's key written again (its lease started, a renewal)
	if !m.stands("l", "me", g) {
		t.Error("the holder's key written again: the refusal does not stand")
	}
	set("l", "late", 7, 7, 0) // a newcomer behind
	if !m.stands("l", "me", g) {
		t.Error("a newcomer joined behind: the refusal does not stand")
	}
	delete(m.locks["l"], "holder") // the holder left: "me" holds
	if m.stands("l", "me", g) {
		t.Error("the holder left: the refusal stands")
	}

	// A semaphore of 2 with three keys ahead: the refusal rests on all of
	// them.
	set("s", "a", 1, 1, 2)
	set("s", "b", 2, 2, 2)
	set("s", "c", 3, 3, 2)
	set("s", "me", 4, 4, 2)
	if _, holds, _, g = m.position("s", "me"); holds || len(g.keys) != 3 {
		t.Fatalf("position = holds %v, guard %+v", holds, g)
	}
	set("s", "b", 2, 9, 2)
	if !m.stands("s", "me", g) {
		t.Error("a key ahead written again: the semaphore's refusal does not stand")
	}
	delete(m.locks["s"], "a") // one left; "me" still waits
	if _, holds, _, _ := m.position("s", "me"); holds {
		t.Fatal("me holds with two keys ahead of a semaphore of 2")
	}
	if m.stands("s", "me", g) {
		t.Error("a key ahead left: the semaphore's refusal stands")
	}
}
