package bus_test

import (
	"errors"
	"math"
	"reflect"
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
// request that passed validation, or fails with ErrInvalid; nothing else.
func FuzzDecodeRequest(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, h := range []nats.Header{nil, {"Content-Type": []string{"application/json"}}, {"Content-Type": []string{"application/msgpack"}}} {
			m := &bus.Msg{Msg: &nats.Msg{Subject: "x", Data: data, Header: h}, Codec: bus.DetectCodec(h, data)}
			var r fuzzReq
			err := m.Decode(&r)
			if err != nil {
				var e *bus.Error
				if !errors.As(err, &e) || e.Status != 400 || e.Code != "invalid" || e.Message == "" {
					t.Fatalf("decode error %v is not a 400 invalid", err)
				}
				continue
			}
			if r.TTLms < 0 {
				t.Fatalf("validation skipped: %+v", r)
			}
		}
	})
}
