package cache

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/meshkit/mesh/pkg/ring"
)

// An MGET whose keys this node holds and has is answered by mgetHits with
// the very reply the general path writes; any other goes to the general
// path, and a refused request counts no hit.
func TestMGetHits(t *testing.T) {
	s := &Server{cfg: Config{ID: "a", Replicas: 2}, store: newStore(64 << 20)}
	defer s.store.close()
	keys := make([]string, 16)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i)
		s.store.set(keys[i], bytes.Repeat([]byte{byte(i)}, i), 0) // key 0: an empty value
	}
	s.store.set("ttl", []byte("v"), time.Hour)

	want := make([]GetReply, len(keys))
	for i, k := range keys {
		want[i], _ = s.lookup(k)
	}
	got, ok := s.mgetHits(appendMGetRequest(nil, keys), nil, false)
	if !ok || !bytes.Equal(replyBytes(got), appendMGetReply(nil, want)) {
		t.Fatalf("mgetHits = % x, %v; want the general path's reply", replyBytes(got), ok)
	}
	if n := s.hits.Load(); n != 16 {
		t.Fatalf("hits %d, want 16", n)
	}
	got, ok = s.mgetHits(appendMGetRequest(nil, []string{"ttl"}), nil, false)
	vs, _ := parseMGetReply(replyBytes(got))
	if !ok || len(vs) != 1 || vs[0].TTLms <= 0 || vs[0].TTLms > time.Hour.Milliseconds() {
		t.Fatalf("mgetHits of a key with a TTL = %+v, %v", vs, ok)
	}

	refused := map[string][]byte{
		"a missing key":     appendMGetRequest(nil, []string{keys[1], "absent"}),
		"an invalid key":    appendMGetRequest(nil, []string{keys[1], "\xff"}),
		"an empty key":      appendMGetRequest(nil, []string{""}),
		"17 keys":           appendMGetRequest(nil, append(keys, keys[0])),
		"no key":            appendMGetRequest(nil, nil),
		"trailing bytes":    append(appendMGetRequest(nil, keys[:1]), 0xc0),
		"a cut request":     appendMGetRequest(nil, keys[:2])[:12],
		"another field":     []byte("\x81\xa3key\xa1a"),
		"a JSON request":    []byte(`{"keys":["user:1"]}`),
		"a key not a str":   []byte("\x81\xa4keys\x91\xc4\x01a"),
		"keys not an array": []byte("\x81\xa4keys\xa6user:1"),
	}
	elsewhere, err := ring.New([]ring.Member{{ID: "b"}}, ring.Config{})
	if err != nil {
		t.Fatal(err)
	}
	one := appendMGetRequest(nil, keys[1:2])
	if rep, ok := s.mgetHits(one, elsewhere, false); ok {
		t.Errorf("a key held elsewhere: answered % x", replyBytes(rep))
	}
	if _, ok := s.mgetHits(one, elsewhere, true); !ok { // sent here by its holder
		t.Error("a key sent here: not answered")
	}
	before := s.hits.Load()
	for what, req := range refused {
		if rep, ok := s.mgetHits(req, nil, false); ok {
			t.Errorf("%s: answered % x", what, replyBytes(rep))
		}
	}
	if n := s.hits.Load(); n != before {
		t.Fatalf("refused requests counted %d hits", n-before)
	}
}

// replyBytes is the body a reply sends.
func replyBytes(a appended) []byte {
	if a.buf == nil {
		return nil
	}
	return *a.buf
}
