package bus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
)

type decReq struct {
	Key   string    `json:"key"`
	TTLms int64     `json:"ttl_ms,omitempty"`
	Token uint64    `json:"token,omitempty"`
	At    bus.Time  `json:"at,omitzero"`
	Items []decItem `json:"items,omitempty"`
	Opts  *decOpts  `json:"opts,omitempty"`
	Flag  bool      `json:"flag,omitempty"`
	Data  any       `json:"data,omitempty"`
}

type decItem struct {
	Key    string `json:"key"`
	WaitMs int64  `json:"wait_ms"`
}

type decOpts struct {
	Kind string `json:"kind"`
}

type emptyReq struct{}

// decoder starts a service whose endpoints decode a decReq and an empty
// request and answer the request's key.
func decoder(t *testing.T) *nats.Conn {
	s := bustest.RunServer(t)
	startService(t, s, bus.Config{
		Name: "decoder", Version: "1.0.0",
		Endpoints: []bus.Endpoint{
			{Name: "dec", Subject: "test.dec", Handler: bus.Typed(func(_ context.Context, r *decReq) (string, error) { return r.Key, nil })},
			{Name: "empty", Subject: "test.empty", Handler: bus.Typed(func(context.Context, *emptyReq) (string, error) { return "ok", nil })},
		},
	})
	return s.Connect()
}

// send sends a request and returns its coded error, or nil.
func send(t *testing.T, nc *nats.Conn, subject string, body []byte) *bus.Error {
	t.Helper()
	reply, err := nc.RequestWithContext(ctx(t), subject, body)
	if err != nil {
		t.Fatal(err)
	}
	var e *bus.Error
	errors.As(bus.ReplyError(reply), &e)
	return e
}

// Unknown fields and wrong types are refused in both codecs with a message
// that names the field (and the field meant, or the JSON type expected),
// never Go's types.
func TestStrictDecodeNamesTheField(t *testing.T) {
	nc := decoder(t)
	for _, tc := range []struct {
		subject, body, code, msg string
	}{
		{"test.dec", `{"key":"k","ttl":60000}`, "unknown_field", "ttl: unknown field; did you mean ttl_ms?"},
		{"test.dec", `{"key":"k","TTL":60000}`, "unknown_field", "TTL: unknown field; did you mean ttl_ms?"},
		{"test.dec", `{"key":"k","items":[{"key":"a"},{"key":"b","wait":5}]}`, "unknown_field", "items[1].wait: unknown field; did you mean wait_ms?"},
		{"test.dec", `{"key":"k","opts":{"knd":"x"}}`, "unknown_field", "opts.knd: unknown field; did you mean kind?"},
		{"test.dec", `{"key":"k","zzzzzz":1}`, "unknown_field", "zzzzzz: unknown field; the fields are key, ttl_ms, token, at, items, opts, flag, data"},
		{"test.empty", `{"x":1}`, "unknown_field", "x: unknown field; this request takes no fields"},
		{"test.dec", `{"key":"k","ttl_ms":"60000"}`, "invalid", "ttl_ms: expected an integer (milliseconds), got a string"},
		{"test.dec", `{"key":"k","ttl_ms":1.5}`, "invalid", "ttl_ms: expected an integer (milliseconds), got 1.5"},
		{"test.dec", `{"key":"k","items":[{"key":"a","wait_ms":true}]}`, "invalid", "items[0].wait_ms: expected an integer (milliseconds), got a boolean"},
		{"test.dec", `{"key":"k","token":-1}`, "invalid", "token: expected a non-negative integer, got -1"},
		{"test.dec", `{"key":"k","items":[{"key":"a","wait_ms":-1}],"token":1}`, "", "k"},
		{"test.dec", `{"key":"k","flag":"yes"}`, "invalid", "flag: expected true or false, got a string"},
		{"test.dec", `{"key":"k","at":"yesterday"}`, "invalid", "at: expected an RFC 3339 string (2026-01-02T15:04:05.000Z), got a string"},
		{"test.dec", `{"key":"k","items":{}}`, "invalid", "items: expected an array, got an object"},
		{"test.dec", `{"key":["k"]}`, "invalid", "key: expected a string, got an array"},
		{"test.dec", `{"key":"k","opts":"x"}`, "invalid", "opts: expected an object, got a string"},
		{"test.dec", `{"key":"k","data":{"any":[1,{"x":null}]}}`, "", "k"},
		{"test.dec", `{"key":"k","ttl_ms":60000,"items":[{"key":"a","wait_ms":5}],"opts":{"kind":"x"},"at":"2026-01-02T15:04:05.000Z"}`, "", "k"},
	} {
		for _, codec := range []string{"json", "msgpack"} {
			body := []byte(tc.body)
			if codec == "msgpack" {
				body = bustest.MsgpackFromJSON(t, tc.body)
			}
			reply, err := nc.RequestWithContext(ctx(t), tc.subject, body)
			if err != nil {
				t.Fatal(err)
			}
			var e *bus.Error
			errors.As(bus.ReplyError(reply), &e)
			switch {
			case tc.code == "" && e != nil:
				t.Errorf("%s %s: %v", codec, tc.body, e)
			case tc.code == "":
				var got string
				if err := bus.DetectCodec(nil, body).Unmarshal(reply.Data, &got); err != nil || got != tc.msg {
					t.Errorf("%s %s: reply %q (%v)", codec, tc.body, got, err)
				}
			case e == nil:
				t.Errorf("%s %s: accepted, want %s", codec, tc.body, tc.code)
			case e.Code != tc.code || e.Message != tc.msg || e.Status != 400 || !errors.Is(e, bus.ErrInvalid):
				t.Errorf("%s %s:\n got %d %s: %q\nwant 400 %s: %q", codec, tc.body, e.Status, e.Code, e.Message, tc.code, tc.msg)
			}
		}
	}
}

// A msgpack integer that does not fit its field is refused, as in JSON,
// rather than wrapped by the decoder.
func TestMsgpackIntegersDoNotWrap(t *testing.T) {
	nc := decoder(t)
	for _, tc := range []struct{ body, msg string }{
		{"\x82\xa3key\xa1k\xa6ttl_ms\xcf\xff\xff\xff\xff\xff\xff\xff\xff", "ttl_ms: expected an integer (milliseconds), got 18446744073709551615"},
		{"\x82\xa3key\xa1k\xa6ttl_ms\xcf\x80\x00\x00\x00\x00\x00\x00\x00", "ttl_ms: expected an integer (milliseconds), got 9223372036854775808"},
		{"\x82\xa3key\xa1k\xa5token\xd3\xff\xff\xff\xff\xff\xff\xff\xfe", "token: expected a non-negative integer, got -2"},
		{"\x82\xa3key\xa1k\xa5token\xff", "token: expected a non-negative integer, got -1"},
	} {
		e := send(t, nc, "test.dec", []byte(tc.body))
		if e == nil || e.Code != "invalid" || e.Message != tc.msg {
			t.Errorf("%q: %v, want %q", tc.body, e, tc.msg)
		}
	}
	if e := send(t, nc, "test.dec", []byte("\x83\xa3key\xa1k\xa6ttl_ms\xcf\x00\x00\x00\x01\x00\x00\x00\x00\xa4data\xff")); e != nil {
		t.Errorf("a uint64 that fits and a negative payload: %v", e)
	}
}

// JSON that is not UTF-8 text, raw or as an escaped lone surrogate, is
// refused rather than rewritten to U+FFFD; a surrogate pair is text.
func TestJSONMustBeUTF8(t *testing.T) {
	nc := decoder(t)
	for _, body := range []string{
		"{\"key\":\"\xff\"}", `{"key":"\udc80"}`, `{"key":"a\ud83dz"}`, `{"key":"k","items":[{"key":"\ud800"}]}`,
		"{\"key\":\"k\",\"\xfe\":1}",
	} {
		e := send(t, nc, "test.dec", []byte(body))
		if e == nil || e.Code != "invalid" || !strings.Contains(e.Message, "UTF-8") {
			t.Errorf("%q: %v, want a UTF-8 error", body, e)
		}
	}
	if e := send(t, nc, "test.dec", []byte(`{"key":"\ud83d\ude00 \\udc80"}`)); e != nil {
		t.Errorf("a surrogate pair and an escaped backslash: %v", e)
	}
}

// Malformed bodies get a 400 saying so, in their codec.
func TestMalformedBodies(t *testing.T) {
	nc := decoder(t)
	for _, tc := range []struct{ body, msg string }{
		{`{"key":"k"} {"key":"k"}`, "malformed json request: data after the request's object"},
		{`{"key":`, "malformed json request: unexpected end of JSON input (at byte 7)"},
		{"\x81\xa3key\xa1k\x00", "malformed msgpack request: 1 trailing bytes"},
		{"\x81\xa3key" + strings.Repeat("\x91", bus.MaxDepth) + "\x00", "malformed msgpack request: nested deeper than 100 levels"},
	} {
		e := send(t, nc, "test.dec", []byte(tc.body))
		if e == nil || e.Code != "invalid" || e.Message != tc.msg {
			t.Errorf("%q: %v, want %q", tc.body, e, tc.msg)
		}
	}
}

// A MiB of nested msgpack arrays is refused before it is decoded, and so
// is a body one level deeper than MaxDepth; one at MaxDepth is decoded.
func TestMsgpackNestingBounded(t *testing.T) {
	nc := decoder(t)
	head := []byte("\x82\xa3key\xa1k\xa4data")
	size := min(1<<20, int(nc.MaxPayload())) // the server's limit, 1 MiB by default
	deep := append(head, bytes.Repeat([]byte{0x91}, size-len(head)-1)...)
	deep = append(deep, 0x00)
	e := send(t, nc, "test.dec", deep)
	if e == nil || e.Code != "invalid" || !strings.Contains(e.Message, "nested deeper than 100 levels") {
		t.Fatalf("a MiB of nested arrays: %v", e)
	}
	// The body's map is one level, data's value 99 more.
	at := func(levels int) []byte {
		b := append([]byte("\x82\xa3key\xa1k\xa4data"), bytes.Repeat([]byte{0x91}, levels-1)...)
		return append(b, 0x00)
	}
	if e := send(t, nc, "test.dec", at(bus.MaxDepth)); e != nil {
		t.Fatalf("%d levels: %v", bus.MaxDepth, e)
	}
	if e := send(t, nc, "test.dec", at(bus.MaxDepth+1)); e == nil {
		t.Fatalf("%d levels accepted", bus.MaxDepth+1)
	}
}

func TestTimeMarshalJSON(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 891_000_000, time.FixedZone("x", 3600))
	for _, tm := range []bus.Time{{}, {Time: at}} {
		got, err := json.Marshal(struct {
			At bus.Time `json:"at"`
		}{tm})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(map[string]string{"at": tm.String()})
		if string(got) != string(want) {
			t.Errorf("%v encodes as %s, want %s", tm, got, want)
		}
		var back struct {
			At bus.Time `json:"at"`
		}
		if err := json.Unmarshal(got, &back); err != nil || !back.At.Equal(tm.Time) {
			t.Errorf("%s decodes as %v (%v), want %v", got, back.At, err, tm)
		}
	}
	if s := (bus.Time{Time: at}).String(); s != "2026-03-04T04:06:07.891Z" {
		t.Errorf("String() = %s", s)
	}
}
