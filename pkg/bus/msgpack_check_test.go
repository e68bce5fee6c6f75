package bus

import (
	"math"
	"strings"
	"testing"
	"time"
)

// A header that claims more elements than the body holds is refused before
// the decoder allocates for it.
func TestMsgpackClaimsBeyondTheBody(t *testing.T) {
	type item struct {
		Key   string `json:"key"`
		Value []byte `json:"value"`
	}
	var v struct {
		Items []item `json:"items"`
	}
	for _, body := range []string{
		"\x81\xa5items\xdd\x7f\xff\xff\xff",                // array32 of 2^31-1 items
		"\x81\xa5items\xdc\xff\xff\x80",                    // array16 of 65535 items, one byte left
		"\x81\xa5items\x91\x81\xa3key\xdb\xff\xff\xff\xff", // str32 of 4 GiB
		"\xdf\x7f\xff\xff\xff",                             // map32
		"\x81\xa5items\x91\xc1",                            // never-used code
	} {
		if err := MsgPack.Unmarshal([]byte(body), &v); err == nil {
			t.Errorf("%q decoded", body)
		}
	}
}

// Every body the encoder writes passes the check.
func TestMsgpackCheckAcceptsValidBodies(t *testing.T) {
	values := []any{
		map[string]any{"a": 1, "b": []any{int8(-3), uint16(500), int32(-70000), uint64(math.MaxUint64), 1.5, float32(2.5)}},
		map[string]any{"s": strings.Repeat("x", 40), "m": strings.Repeat("y", 300), "l": strings.Repeat("z", 70000)},
		map[string]any{"bin": []byte{1, 2, 3}, "big": make([]byte, 70000), "nil": nil, "t": true, "f": false},
		map[string]any{"when": Time{time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, "deep": map[string]any{"x": []any{map[string]any{}}}},
		make([]int, 70000),
	}
	for _, v := range values {
		b, err := MsgPack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkMsgpack(b); err != nil {
			t.Errorf("%T: %v", v, err)
		}
	}
}
