package cache

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An entry keeps its key, value and expiry exactly, whatever their sizes,
// and a value read back is not changed by a later write of the key.
func TestStoreEntries(t *testing.T) {
	s := newStore(64 << 20)
	defer s.close()
	cases := []struct {
		key   string
		value []byte
		ttl   time.Duration
	}{
		{"k", []byte("v"), 0},
		{"empty", []byte{}, 0},
		{strings.Repeat("long-key/", MaxKeyLen/9), bytes.Repeat([]byte{0, 255, 7}, 1000), 0},
		{"big", bytes.Repeat([]byte("x"), DefaultMaxValueBytes), 0},
		{"ttl", []byte("soon gone"), time.Hour},
	}
	for _, c := range cases {
		value := bytes.Clone(c.value)
		s.set(c.key, value, c.ttl)
		if len(value) > 0 {
			value[0] ^= 0xff // the store kept a copy
		}
		got, left, ok := s.get(c.key)
		if !ok || !bytes.Equal(got, c.value) {
			t.Fatalf("%.20s: got %d bytes, ok %v; want %d bytes", c.key, len(got), ok, len(c.value))
		}
		if c.ttl == 0 && left != 0 || c.ttl > 0 && (left <= 0 || left > c.ttl) {
			t.Fatalf("%.20s: %v left of a TTL of %v", c.key, left, c.ttl)
		}
	}
	old, _, _ := s.get("k")
	s.set("k", []byte("new"), 0)
	if got, _, _ := s.get("k"); string(got) != "new" || string(old) != "v" {
		t.Fatalf("after an overwrite: %q, and the earlier read is now %q", got, old)
	}
	seen := map[string]bool{}
	for k := range s.keys() {
		seen[k] = true
	}
	for _, c := range cases {
		if !seen[c.key] {
			t.Fatalf("keys() misses %.20s", c.key)
		}
	}
	if !s.del("k") || s.del("k") {
		t.Fatal("del of a key held, then of one gone")
	}
	if _, _, ok := s.get("k"); ok {
		t.Fatal("a deleted key is still there")
	}
	s.set("past", []byte("x"), time.Nanosecond)
	time.Sleep(time.Millisecond) // a TTL that has passed, not a wait for an event
	if _, _, ok := s.get("past"); ok {
		t.Fatal("an expired key was returned")
	}
}

// The bound in bytes counts an entry's key, value and overhead.
func TestStoreWeight(t *testing.T) {
	s := newStore(64 << 20)
	defer s.close()
	s.set("abc", make([]byte, 100), 0)
	s.c.CleanUp()
	if got, want := s.bytes(), int64(3+100+entryOverhead); got != want {
		t.Fatalf("weighed %d bytes, want %d", got, want)
	}
}

// put (a write that keeps the higher version, as every write now is)
// against set (an unconditional write) of the same keys.
func BenchmarkStoreWrite(b *testing.B) {
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = "bench:" + strings.Repeat("k", i%7) + string(rune('a'+i%26)) + strconv.Itoa(i)
	}
	v := make([]byte, 100)
	b.Run("set", func(b *testing.B) {
		s := newStore(1 << 30)
		defer s.close()
		for i := 0; b.Loop(); i++ {
			s.set(keys[i&(len(keys)-1)], v, 0)
		}
	})
	b.Run("put", func(b *testing.B) {
		s := newStore(1 << 30)
		defer s.close()
		for i := 0; b.Loop(); i++ {
			s.put(keys[i&(len(keys)-1)], v, 0, uint64(i+1))
		}
	})
}
