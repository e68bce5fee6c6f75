package bustest

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/meshkit/mesh/pkg/bus"
)

// CheckDecoded checks the outcome err of m.Decode(req) against the strict
// rules of requests, for fuzz targets of request decoders: a refused body
// gets a 400 whose message speaks JSON, never Go; an accepted body has no
// field req's type lacks and, in JSON, is UTF-8 text. It reports whether
// req was accepted.
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
		}
	}
	if m.Codec == bus.JSON && !utf8.Valid(m.Data) {
		t.Fatalf("%T: a JSON body that is not UTF-8 was accepted: %q", req, m.Data)
	}
	return true
}
