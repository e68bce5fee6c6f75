package bustest

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshkit/mesh/pkg/bus"
)

// CheckDecoded checks the outcome err of m.Decode(req) against the strict
// rules of requests, for fuzz targets of request decoders: a refused body
// gets a 400 whose message speaks JSON, never Go; an accepted body has no
// field req's type lacks, no negative number in an unsigned field and no
// number beyond 2^63 in a signed one, and, in JSON, is UTF-8 text. It
// reports whether req was accepted.
func CheckDecoded(t testing.TB, m *bus.Msg, req any, err error) bool {
	t.Helper()
	if err != nil {
		var e *bus.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Message == "" {
			t.Fatalf("%T: error %v is not a 400", req, err)
		}
		if strings.Contains(e.Message, "Go struct") || strings.Contains(e.Message, "of type") || strings.Contains(e.Message, "reflect.") {
			t.Fatalf("%T: error %q speaks Go", req, e.Message)
		}
		return false
	}
	known := bus.FieldNames(reflect.TypeOf(req))
	var fields map[string]any
	if m.Codec.Unmarshal(m.Data, &fields) == nil {
		for k := range fields {
			found := false
			for _, n := range known {
				found = found || n == k || m.Codec == bus.JSON && strings.EqualFold(n, k)
			}
			if !found {
				t.Fatalf("%T: a %s body with the unknown field %q was accepted: %q", req, m.Codec, k, m.Data)
			}
			if !fitsField(reflect.TypeOf(req), k, fields[k]) {
				t.Fatalf("%T: a %s body with %s: %v was accepted: %q", req, m.Codec, k, fields[k], m.Data)
			}
		}
	}
	if m.Codec == bus.JSON && !utf8.Valid(m.Data) {
		t.Fatalf("%T: a JSON body that is not UTF-8 was accepted: %q", req, m.Data)
	}
	return true
}

// fitsField reports whether v, a field's value decoded leniently, has a
// sign the field named k of struct type t (or a pointer to one) can hold.
func fitsField(t reflect.Type, k string, v any) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if n, _, _ := strings.Cut(f.Tag.Get("json"), ","); n != k {
			continue
		}
		kind := f.Type.Kind()
		rv := reflect.ValueOf(v)
		switch {
		case !rv.IsValid():
		case kind >= reflect.Uint && kind <= reflect.Uint64 && rv.CanInt():
			return rv.Int() >= 0
		case kind >= reflect.Int && kind <= reflect.Int64 && rv.CanUint():
			return rv.Uint() <= 1<<63-1
		}
	}
	return true
}

// MsgpackFromJSON encodes a JSON body in msgpack as a client would:
// integral numbers as integers, others as floats, strings as str.
func MsgpackFromJSON(t testing.TB, body string) []byte {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	var conv func(any) any
	conv = func(v any) any {
		switch x := v.(type) {
		case json.Number:
			if i, err := x.Int64(); err == nil {
				return i
			}
			f, _ := x.Float64()
			return f
		case map[string]any:
			for k, e := range x {
				x[k] = conv(e)
			}
		case []any:
			for i, e := range x {
				x[i] = conv(e)
			}
		}
		return v
	}
	b, err := msgpack.Marshal(conv(v))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Refused sends body (JSON) to subject, and then its msgpack form, and
// fails t unless each is answered 400 with an error that matches is and
// whose message starts with msg and names no Go type.
func Refused(t testing.TB, nc *nats.Conn, subject, body string, is error, msg string) {
	t.Helper()
	for _, codec := range []string{"json", "msgpack"} {
		data := []byte(body)
		if codec == "msgpack" {
			data = MsgpackFromJSON(t, body)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := bus.RequestMsg(ctx, nc, &nats.Msg{Subject: subject, Data: data})
		cancel()
		var e *bus.Error
		if !errors.Is(err, is) || !errors.As(err, &e) || e.Status != 400 || !strings.HasPrefix(e.Message, msg) || strings.Contains(e.Message, "Go struct") {
			t.Errorf("%s %s: %v; want %v %q", codec, body, err, is, msg)
		}
	}
}
