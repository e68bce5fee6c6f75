package bus_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
)

// fuzzReq has a field of every kind a request uses.
type fuzzReq struct {
	Name    string            `json:"name"`
	TTLms   int64             `json:"ttl_ms"`
	Limit   uint32            `json:"limit"`
	Value   []byte            `json:"value"`
	Keys    []string          `json:"keys"`
	Flag    bool              `json:"flag"`
	At      bus.Time          `json:"at"`
	Labels  map[string]string `json:"labels"`
	Nested  *fuzzReq          `json:"nested"`
	Ratio   float64           `json:"ratio"`
	Payload any               `json:"payload"`
}

func (r *fuzzReq) Validate() error {
	if r.TTLms < 0 {
		return errors.New("ttl_ms must not be negative")
	}
	return nil
}

func fuzzSeeds(f *testing.F) {
	for _, s := range []string{
		``, `{}`, ` {"name":"a","ttl_ms":5}`, `{"name":1}`, `{"at":"2026-01-01T00:00:00.000Z"}`, `{"at":"yesterday"}`,
		`{"nested":{"nested":{"name":"x"}}}`, `{"value":"aGk="}`, `{"ttl_ms":-1}`, `[1,2]`, `{"labels":{"a":"b"}}`,
		"\x81\xa4name\xa1a", "\x82\xa6ttl_ms\x05\xa5value\xc4\x02hi", "\xde\xff\xff", "\xdf\xff\xff\xff\xff", "\x91\x01", "\xc1",
	} {
		f.Add([]byte(s))
	}
	for _, r := range []fuzzReq{{Name: "a", TTLms: 1, Value: []byte{0, 255}, Keys: []string{"x"}, Labels: map[string]string{"k": "v"}}} {
		b, _ := bus.MsgPack.Marshal(r)
		f.Add(b)
	}
}

// FuzzCodec: decoding arbitrary bytes never panics, and whatever decodes
// re-encodes and decodes to the same value in both codecs.
func FuzzCodec(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := bus.DetectCodec(nil, data)
		var v fuzzReq
		if err := c.Unmarshal(data, &v); err != nil {
			return
		}
		v.Payload = nil // an any decodes to codec-specific types
		for _, c2 := range []bus.Codec{bus.MsgPack, bus.JSON} {
			if c2 == bus.JSON && !jsonable(v) {
				continue // JSON replaces invalid UTF-8 (services reject such names) and has no NaN or infinities
			}
			b, err := c2.Marshal(v)
			if err != nil {
				t.Fatalf("%s: re-encoding %+v: %v", c2, v, err)
			}
			var w fuzzReq
			if err := c2.Unmarshal(b, &w); err != nil {
				t.Fatalf("%s: decoding own output %q: %v", c2, b, err)
			}
			if !equalReq(v, w) {
				t.Fatalf("%s: round trip changed %+v into %+v", c2, v, w)
			}
		}
	})
}

// jsonable reports whether JSON can carry r: its strings are valid UTF-8
// and its floats finite.
func jsonable(r fuzzReq) bool {
	ok := utf8.ValidString(r.Name) && !math.IsNaN(r.Ratio) && !math.IsInf(r.Ratio, 0)
	for _, k := range r.Keys {
		ok = ok && utf8.ValidString(k)
	}
	for k, v := range r.Labels {
		ok = ok && utf8.ValidString(k) && utf8.ValidString(v)
	}
	return ok && (r.Nested == nil || jsonable(*r.Nested))
}

func equalReq(a, b fuzzReq) bool {
	if !a.At.Equal(b.At.Time) && a.At.String() != b.At.String() {
		return false
	}
	a.At, b.At = bus.Time{}, bus.Time{}
	if a.Nested != nil && b.Nested != nil {
		if !equalReq(*a.Nested, *b.Nested) {
			return false
		}
		a.Nested, b.Nested = nil, nil
	}
	norm := func(r *fuzzReq) {
		if len(r.Value) == 0 {
			r.Value = nil
		}
		if len(r.Keys) == 0 {
			r.Keys = nil
		}
		if len(r.Labels) == 0 {
			r.Labels = nil
		}
		if r.Ratio != r.Ratio { // NaN
			r.Ratio = 0
		}
	}
	norm(&a)
	norm(&b)
	return reflect.DeepEqual(a, b)
}

// FuzzDecodeRequest: a request body of any bytes either decodes into a
// request that passed validation and has no field the type lacks, or fails
// with a 400 invalid or unknown_field whose message speaks JSON, not Go;
// nothing else.
func FuzzDecodeRequest(f *testing.F) {
	fuzzSeeds(f)
	for _, s := range []string{`{"ttl":5}`, `{"nested":{"nam":"x"}}`, `{"name":"\udc80"}`, "{\"name\":\"\xff\"}", "\x81\xa3ttl\x05", `{"ttl_ms":"5"}`} {
		f.Add([]byte(s))
	}
	known := bus.FieldNames(reflect.TypeFor[fuzzReq]())
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, h := range []nats.Header{nil, {"Content-Type": []string{"application/json"}}, {"Content-Type": []string{"application/msgpack"}}} {
			m := &bus.Msg{Msg: &nats.Msg{Subject: "x", Data: data, Header: h}, Codec: bus.DetectCodec(h, data)}
			var r fuzzReq
			err := m.Decode(&r)
			if err != nil {
				var e *bus.Error
				if !errors.As(err, &e) || e.Status != 400 || (e.Code != "invalid" && e.Code != "unknown_field") || e.Message == "" {
					t.Fatalf("decode error %v is not a 400 invalid or unknown_field", err)
				}
				if strings.Contains(e.Message, "Go struct") || strings.Contains(e.Message, "of type") || strings.Contains(e.Message, "bus_test.") {
					t.Fatalf("decode error %q speaks Go", e.Message)
				}
				continue
			}
			if r.TTLms < 0 {
				t.Fatalf("validation skipped: %+v", r)
			}
			// Every field of the body is one of the type's.
			var fields map[string]any
			if m.Codec.Unmarshal(data, &fields) == nil {
				for k := range fields {
					if !slices.ContainsFunc(known, func(n string) bool { return n == k || m.Codec == bus.JSON && strings.EqualFold(n, k) }) {
						t.Fatalf("%s body with the unknown field %q decoded: %q", m.Codec, k, data)
					}
				}
			}
			if m.Codec == bus.JSON && !utf8.Valid(data) {
				t.Fatalf("a JSON body that is not UTF-8 decoded: %q", data)
			}
		}
	})
}

type allocItem struct {
	Key   string `json:"key"`
	Value []byte `json:"value"`
	TTLms int64  `json:"ttl_ms"`
}

// allocReq has the shapes of requests that allocate most per byte: an
// opaque payload (a task's), a batch of items (mset's), a list of keys
// (mget's).
type allocReq struct {
	Payload any         `json:"payload"`
	Items   []allocItem `json:"items"`
	Keys    []string    `json:"keys"`
}

// Bounds of what decoding a msgpack request may allocate: per byte of the
// body, and in all for a small body.
const (
	allocPerByte = 256
	allocBase    = 64 << 10
)

// allocSeeds are msgpack requests of about size bytes that allocate much
// per byte when decoded: small values in a payload, a batch or a list of
// keys, deep nesting, lying headers.
func allocSeeds(size int) [][]byte {
	var out [][]byte
	elems := [][]byte{{0x80}, {0x90}, {0x05}, {0xc0}, {0xa0}, {0x81, 0xa0, 0xc0}, {0x91, 0x00}, {0xc4, 0}, {0xcb, 0, 0, 0, 0, 0, 0, 0, 0}, append(bytes.Repeat([]byte{0x91}, 97), 0x90)}
	for _, field := range []string{"\xa7payload", "\xa5items", "\xa4keys"} {
		for _, e := range elems {
			n := size / len(e)
			b := binary.BigEndian.AppendUint32([]byte("\x81"+field+"\xdd"), uint32(n))
			out = append(out, append(b, bytes.Repeat(e, n)...))
		}
	}
	out = append(out, append([]byte("\x81\xa7payload"), bytes.Repeat([]byte{0x91}, size)...))
	return append(out, []byte("\x81\xa5items\xdd\x7f\xff\xff\xff"))
}

// checkAllocs decodes a msgpack request and fails if it allocated more
// than allocBase + allocPerByte per byte of the body.
func checkAllocs(t *testing.T, data []byte) {
	m := &bus.Msg{Msg: &nats.Msg{Data: data}, Codec: bus.MsgPack}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var r allocReq
	err := m.Decode(&r)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(allocBase+allocPerByte*len(data)) {
		t.Fatalf("decoding %d bytes allocated %d bytes (%.0f a byte; error %v)", len(data), alloc, float64(alloc)/float64(len(data)), err)
	}
}

// Decoding the costliest msgpack requests of 256 KiB allocates less than
// allocPerByte per byte.
func TestMsgpackAllocsBounded(t *testing.T) {
	for _, data := range allocSeeds(256 << 10) {
		checkAllocs(t, data)
	}
}

// FuzzMsgpackAllocs: what decoding a msgpack request allocates is bounded
// by a multiple of its length, whatever the body.
func FuzzMsgpackAllocs(f *testing.F) {
	for _, data := range allocSeeds(300) {
		f.Add(data)
	}
	f.Fuzz(checkAllocs)
}
