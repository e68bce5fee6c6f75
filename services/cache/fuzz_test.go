package cache

import (
	"bytes"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
)

// FuzzDecodeRequests: any body, in either codec, decodes into a request that
// passed validation, or fails with a 400; never a panic. A decoded value
// encodes and decodes back to the same bytes.
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{
		`{"key":"a"}`, `{"key":"a","value":"v","ttl_ms":1000}`, `{"key":"a","value":{"base64":"/wD+"}}`,
		`{"keys":["a","b"]}`, `{"items":[{"key":"a","value":"x"}]}`, `{"key":""}`, `{"key":"a","ttl_ms":-1}`,
		`{"keys":[]}`, `{"value":{"base64":"!"}}`, "\x81\xa3key\xa1a", "\x82\xa3key\xa1a\xa5value\xc4\x02\xff\x00", ``,
	} {
		f.Add([]byte(s))
	}
	for _, s := range []string{`{"key":"a","value":"v","ttl":60000}`, `{"key":"a","value":"v","ttl_ms":18446744073710}`, `{"key":"a"}`, "{\"key\":\"\xff\",\"value\":\"v\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &bus.Msg{Msg: &nats.Msg{Data: data}, Codec: bus.DetectCodec(nil, data)}
		for _, req := range []any{&GetRequest{}, &SetRequest{}, &DelRequest{}, &MGetRequest{}, &MSetRequest{}} {
			if !bustest.CheckDecoded(t, m, req, m.Decode(req)) {
				continue
			}
			switch r := req.(type) {
			case *GetRequest:
				if CheckKey(r.Key) != nil {
					t.Fatalf("accepted %+v", r)
				}
			case *SetRequest:
				if CheckKey(r.Key) != nil || r.TTLms < 0 || r.TTLms > MaxTTLms || r.Value == nil {
					t.Fatalf("accepted %+v", r)
				}
				for _, c := range []bus.Codec{bus.JSON, bus.MsgPack} {
					enc, err := c.Marshal(r)
					if err != nil {
						t.Fatal(err)
					}
					var back SetRequest
					if err := c.Unmarshal(enc, &back); err != nil || !bytes.Equal(back.Value, r.Value) {
						t.Fatalf("%s round trip of %q: %q, %v", c, r.Value, back.Value, err)
					}
				}
			case *MGetRequest:
				if len(r.Keys) == 0 || len(r.Keys) > MaxBatch {
					t.Fatalf("accepted %d keys", len(r.Keys))
				}
			}
		}
	})
}

// FuzzFastPath: the hand-written GET codec reads what the generic codec
// writes and writes what it reads, and where it accepts a body, the generic
// codec reads the same from it.
func FuzzFastPath(f *testing.F) {
	f.Add("user:42", []byte("v"), int64(0), []byte("\x81\xa3key\xa1a"))
	f.Add("", []byte(nil), int64(5), []byte("\x83\xa5found\xc3\xa5value\xc4\x01x\xa6ttl_ms\xd3\x00\x00\x00\x00\x00\x00\x00\x05"))
	f.Add("k", []byte("xyz"), int64(-1), []byte("\x81\xa5found\xc2"))
	f.Add("k", []byte("v"), int64(1), []byte("\x81\xa4keys\x92\xa1a\xa1b"))
	f.Add("k", []byte("v"), int64(1), []byte("\x81\xa6values\x92\x81\xa5found\xc2\x82\xa5found\xc3\xa5value\xc4\x01z"))
	f.Fuzz(func(t *testing.T, key string, value []byte, ttl int64, raw []byte) {
		// The generic encoding of a request parses to the same key.
		if len(key) < 1<<16 {
			b, err := bus.MsgPack.Marshal(GetRequest{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			if k, ok := parseGetRequest(b); !ok || k != key {
				t.Fatalf("parseGetRequest(% x) = %q, %v", b, k, ok)
			}
			if !bytes.Equal(appendGetRequest(nil, key), b) {
				t.Fatalf("appendGetRequest(%q) differs from the generic encoding", key)
			}
		}
		// A reply the fast path writes reads back the same both ways.
		r := GetReply{Found: len(value) > 0 || ttl != 0, Value: value, TTLms: ttl}
		if len(value) == 0 {
			r.Value = nil
		}
		b := appendGetReply(nil, r)
		var generic GetReply
		if err := bus.MsgPack.Unmarshal(b, &generic); err != nil || !sameReply(generic, r) {
			t.Fatalf("generic decode of % x = %+v, %v; want %+v", b, generic, err, r)
		}
		if back, ok := parseGetReply(b); !ok || !sameReply(back, r) {
			t.Fatalf("parseGetReply(% x) = %+v, %v", b, back, ok)
		}
		// The same for batches.
		if len(key) < 1<<16 {
			keys := []string{key, "x", key}
			b, err := bus.MsgPack.Marshal(MGetRequest{Keys: keys})
			if err != nil {
				t.Fatal(err)
			}
			if ks, ok := parseMGetRequest(b); !ok || !slices.Equal(ks, keys) || !bytes.Equal(appendMGetRequest(nil, keys), b) {
				t.Fatalf("parseMGetRequest(% x) = %q, %v", b, ks, ok)
			}
		}
		vs := []GetReply{r, {}, r}
		b = appendMGetReply(nil, vs)
		var gm MGetReply
		if err := bus.MsgPack.Unmarshal(b, &gm); err != nil || !sameReplies(gm.Values, vs) {
			t.Fatalf("generic decode of % x = %+v, %v", b, gm, err)
		}
		if back, ok := parseMGetReply(b); !ok || !sameReplies(back, vs) {
			t.Fatalf("parseMGetReply(% x) = %+v, %v", b, back, ok)
		}
		// Whatever the fast parsers accept, the generic decoder reads alike.
		if ks, ok := parseMGetRequest(raw); ok {
			var req MGetRequest
			if err := bus.MsgPack.Unmarshal(raw, &req); err != nil || !slices.Equal(req.Keys, ks) {
				t.Fatalf("% x: fast %q, generic %q, %v", raw, ks, req.Keys, err)
			}
		}
		if fv, ok := parseMGetReply(raw); ok {
			var gr MGetReply
			if err := bus.MsgPack.Unmarshal(raw, &gr); err != nil || !sameReplies(fv, gr.Values) {
				t.Fatalf("% x: fast %+v, generic %+v, %v", raw, fv, gr, err)
			}
		}
		if k, ok := parseGetRequest(raw); ok {
			var req GetRequest
			if err := bus.MsgPack.Unmarshal(raw, &req); err != nil || req.Key != k {
				t.Fatalf("% x: fast %q, generic %q, %v", raw, k, req.Key, err)
			}
		}
		if fr, ok := parseGetReply(raw); ok {
			var gr GetReply
			if err := bus.MsgPack.Unmarshal(raw, &gr); err != nil || !sameReply(fr, gr) {
				t.Fatalf("% x: fast %+v, generic %+v, %v", raw, fr, gr, err)
			}
		}
	})
}

// parseMGetReply reads a reply written by appendMGetReply whole.
func parseMGetReply(b []byte) ([]GetReply, bool) {
	var vs []GetReply
	_, ok := eachGetReply(b, func(n, i int, r GetReply) bool {
		if vs == nil {
			vs = make([]GetReply, n)
		}
		vs[i] = r
		return true
	})
	return vs, ok
}

func sameReplies(a, b []GetReply) bool {
	return slices.EqualFunc(a, b, sameReply)
}

func sameReply(a, b GetReply) bool {
	return a.Found == b.Found && a.TTLms == b.TTLms && bytes.Equal(a.Value, b.Value)
}
