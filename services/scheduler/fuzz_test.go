package scheduler

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
)

// FuzzDecodeRequests: any body, in either codec, decodes into a request that
// passed validation, or fails with a 4xx; never a panic.
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{
		`{"queue":"q","type":"t"}`, `{"queue":"q","type":"t","payload":"hi","delay_ms":5,"max_retries":0,"backoff":{"kind":"constant","initial_ms":10}}`,
		`{"queue":"q","type":"t","run_at":"2030-01-01T00:00:00.000Z","unique_key":"k","unique_for_ms":5000}`,
		`{"queue":"q","type":"t","payload":{"a":[1,2]}}`, `{"queue":"q","type":"t","payload":"aGk=","payload_encoding":"base64"}`,
		`{"id":"abc"}`, `{"id":"a.b"}`, `{"queue":"q","state":"dead","limit":5,"cursor":"x"}`,
		`{"name":"n","queue":"q","type":"t","cron":"0 * * * * *","time_zone":"Europe/Paris"}`, `{"name":"n","queue":"q","type":"t","every_ms":1000}`,
		`{"queue":1}`, "\x82\xa5queue\xa1q\xa4type\xa1t", "\x81\xa7payload\xc4\x02\x00\xff", ``,
	} {
		f.Add([]byte(s))
	}
	for _, s := range []string{`{"queue":"q","type":"t","delay":5000}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &bus.Msg{Msg: &nats.Msg{Data: data}, Codec: bus.DetectCodec(nil, data)}
		for _, req := range []any{&SubmitRequest{}, &StatusRequest{}, &CancelRequest{}, &ListRequest{}, &QueuesRequest{}, &PauseRequest{},
			&ScheduleRequest{}, &ScheduleListRequest{}, &ScheduleRmRequest{}} {
			if !bustest.CheckDecoded(t, m, req, m.Decode(req)) {
				continue
			}
			switch r := req.(type) {
			case *SubmitRequest:
				if CheckQueue(r.Queue) != nil || checkType(r.Type) != nil || r.DelayMs < 0 || r.DelayMs > MaxDelayMs || r.TimeoutMs > MaxTimeoutMs || r.UniqueForMs > MaxDelayMs || (r.MaxRetries != nil && *r.MaxRetries < 0) || r.PayloadEncoding != "" {
					t.Fatalf("accepted %+v", r)
				}
			case *StatusRequest:
				if checkID(r.ID) != nil {
					t.Fatalf("accepted %+v", r)
				}
			case *ScheduleRequest:
				if checkName(r.Name) != nil || (r.Cron == "") == (r.EveryMs == 0) {
					t.Fatalf("accepted %+v", r)
				}
			}
		}
	})
}

// FuzzPayloadJSON: a msgpack payload that is not bytes becomes the JSON text
// json.Marshal writes for its decoded value, read as it streams.
func FuzzPayloadJSON(f *testing.F) {
	for _, s := range []string{"\x82\xa1a\x01\xa1b\x92\xc3\xc0", "\x93\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\xd0\x80\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
		"\x81\x01\x02", "\x82\xa1a\x01\xa1a\x02", "\x91\xc4\x02\x00\xff", "\x81\xa3<&>\xa2\xff\xfe", "\xca\x7f\xc0\x00\x00", "\xd6\xff\x00\x00\x00\x01"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if bus.MsgPack.Unmarshal(data, &v) != nil {
			return
		}
		want, werr := json.Marshal(v)
		var buf bytes.Buffer
		dec := msgpack.NewDecoder(bytes.NewReader(data))
		err := appendJSON(&buf, dec)
		if err != nil {
			if werr == nil {
				if _, ok := v.(map[any]any); !ok {
					t.Logf("streaming refused what json.Marshal took: %v (%s)", err, want)
				}
			}
			return
		}
		if werr != nil {
			t.Fatalf("streaming wrote %s where json.Marshal failed: %v", buf.Bytes(), werr)
		}
		if invalidKeys(v) {
			// Two keys that are not UTF-8 can become the same JSON key
			// (U+FFFD): json.Marshal writes them in the order of their
			// bytes, the stream in the payload's, and decoding keeps the
			// last, so the two cannot be compared.
			return
		}
		var a, b any
		if json.Unmarshal(buf.Bytes(), &a) != nil || json.Unmarshal(want, &b) != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("streaming wrote %s, json.Marshal %s", buf.Bytes(), want)
		}
	})
}

// invalidKeys tells whether a decoded msgpack value holds a map key that
// is not UTF-8.
func invalidKeys(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if !utf8.ValidString(k) || invalidKeys(e) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if invalidKeys(e) {
				return true
			}
		}
	}
	return false
}
