package cache_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/cache"
)

// The requests a misspelling, an overflow or a missing value turned into
// silent damage are refused, in both codecs, with an error naming the
// field, and store nothing.
func TestBadWritesAreRefused(t *testing.T) {
	s, _, c := cluster(t, 1, cache.Config{})
	nc := bustest.Connect(t, s.URL())
	for _, tc := range []struct {
		subject, body string
		is            error
		msg           string
	}{
		{cache.SubjectSet, `{"key":"w1","value":"v","ttl":60000}`, bus.ErrUnknownField, "ttl: unknown field; did you mean ttl_ms?"},
		{cache.SubjectSet, `{"key":"w2","value":"v","ttl_ms":18446744073710}`, cache.ErrInvalidTTL, "ttl_ms must be in [0, 31622400000] (0: no expiry; at most 366 days), got 18446744073710"},
		{cache.SubjectSet, `{"key":"w3","value":"v","ttl_ms":9223372036855}`, cache.ErrInvalidTTL, "ttl_ms must be in [0, 31622400000] (0: no expiry; at most 366 days), got 9223372036855"},
		{cache.SubjectSet, `{"key":"w4","value":"v","ttl_ms":31622400001}`, cache.ErrInvalidTTL, "ttl_ms must be in [0, 31622400000]"},
		{cache.SubjectSet, `{"key":"w5"}`, cache.ErrInvalid, `value is required ("" for an empty value)`},
		{cache.SubjectSet, `{"key":"w6","value":"v","ttl_ms":"60000"}`, bus.ErrInvalid, "ttl_ms: expected an integer (milliseconds), got a string"},
		{cache.SubjectSet, `{"key":"w7","value":7}`, bus.ErrInvalid, "value: expected"},
		{cache.SubjectMSet, `{"items":[{"key":"w8","value":"v"},{"key":"w9","value":"v","ttl":1}]}`, bus.ErrUnknownField, "items[1].ttl: unknown field; did you mean ttl_ms?"},
		{cache.SubjectMSet, `{"items":[{"key":"w8","value":"v"},{"key":"w9"}]}`, cache.ErrInvalid, "value is required"},
		{cache.SubjectGet, `{"key":"w1","ttl_ms":1}`, bus.ErrUnknownField, "ttl_ms: unknown field; the fields are key"},
		{cache.SubjectMGet, `{"keys":["w1"],"key":"w2"}`, bus.ErrUnknownField, "key: unknown field; did you mean keys?"},
		{cache.SubjectDel, `{"kye":"w1"}`, bus.ErrUnknownField, "kye: unknown field; did you mean key?"},
		{cache.SubjectStats, `{"node":"n0"}`, bus.ErrUnknownField, "node: unknown field; this request takes no fields"},
	} {
		bustest.Refused(t, nc, tc.subject, tc.body, tc.is, tc.msg)
	}
	// A JSON key that is not UTF-8 is refused, not stored under U+FFFD.
	for _, body := range []string{"{\"key\":\"w\xff\",\"value\":\"v\"}", `{"key":"w\udcff","value":"v"}`, "{\"items\":[{\"key\":\"w\xff\",\"value\":\"v\"}]}"} {
		subject := cache.SubjectSet
		if strings.HasPrefix(body, `{"items"`) {
			subject = cache.SubjectMSet
		}
		_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: subject, Data: []byte(body)})
		if !errors.Is(err, bus.ErrInvalid) || !strings.Contains(err.Error(), "UTF-8") {
			t.Errorf("%q: %v, want a UTF-8 error", body, err)
		}
	}
	for _, k := range []string{"w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9", "w\ufffd"} {
		if v, err := c.Get(ctx(t), k); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("%q was stored by a refused request: %q, %v", k, v, err)
		}
	}
	if st, err := c.Stats(ctx(t)); err != nil || st.Total.Items != 0 {
		t.Errorf("refused requests stored %d items (%v)", st.Total.Items, err)
	}
}

// An empty value is a value, in both codecs and through the SDK; a key
// whose TTL is the maximum is kept.
func TestEmptyValueAndLongestTTL(t *testing.T) {
	s, _, c := cluster(t, 1, cache.Config{})
	nc := bustest.Connect(t, s.URL())
	for i, body := range []string{`{"key":"e1","value":""}`, `{"key":"e2","value":"x","ttl_ms":31622400000}`} {
		for _, data := range [][]byte{[]byte(body), bustest.MsgpackFromJSON(t, body)} {
			if _, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: cache.SubjectSet, Data: data}); err != nil {
				t.Fatalf("%s: %v", body, err)
			}
		}
		if v, err := c.Get(ctx(t), []string{"e1", "e2"}[i]); err != nil || string(v) != []string{"", "x"}[i] {
			t.Fatalf("%s: get = %q, %v", body, v, err)
		}
	}
	if err := c.Set(ctx(t), "e3", nil, 0); err != nil {
		t.Fatalf("the SDK's set of a nil value: %v", err)
	}
	if v, err := c.Get(ctx(t), "e3"); err != nil || len(v) != 0 {
		t.Fatalf("get of an empty value = %q, %v", v, err)
	}
	if err := c.MSet(ctx(t), map[string][]byte{"e4": nil, "e5": {}}, 0); err != nil {
		t.Fatalf("the SDK's mset of empty values: %v", err)
	}
}
