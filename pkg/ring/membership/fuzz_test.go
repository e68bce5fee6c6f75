package membership

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeHeartbeat: any bytes on a heartbeat subject either decode into a
// heartbeat that passed its checks, or are an error; never a panic.
func FuzzDecodeHeartbeat(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","weight":1,"interval_ms":1000}`, `{"id":"a","leave":true}`, `{"id":"","weight":1}`,
		`{"id":"a.b"}`, `{"id":"a","weight":-1}`, `{"id":"a","weight":1e400}`, `{"id":"evil","weight":3e38,"interval_ms":20000}`, `{"id":"a","interval_ms":3600000}`, `{"id":"a","started":"x"}`,
		"\x83\xa2id\xa1a\xa6weight\x01\xabinterval_ms\xcd\x03\xe8", ``, `null`, `[]`,
	} {
		f.Add("a", []byte(s))
	}
	f.Fuzz(func(t *testing.T, subjectID string, data []byte) {
		h, err := decodeHeartbeat(subjectID, data)
		if err != nil {
			return
		}
		if !validToken(h.ID) || (subjectID != "" && h.ID != subjectID) || h.Weight < 0 || h.Weight > MaxWeight ||
			(h.IntervalMs != 0 && (h.IntervalMs < MinInterval.Milliseconds() || h.IntervalMs > MaxInterval.Milliseconds())) {
			t.Fatalf("accepted a bad heartbeat %+v on %q", h, subjectID)
		}
		if _, err := json.Marshal(h); err != nil {
			t.Fatalf("accepted heartbeat does not encode: %v", err)
		}
	})
}
