package cache

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
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
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &bus.Msg{Msg: &nats.Msg{Data: data}, Codec: bus.DetectCodec(nil, data)}
		for _, req := range []any{&GetRequest{}, &SetRequest{}, &DelRequest{}, &MGetRequest{}, &MSetRequest{}} {
			err := m.Decode(req)
			if err != nil {
				var e *bus.Error
				if !errors.As(err, &e) || e.Status != 400 {
					t.Fatalf("%T: error %v is not a 400", req, err)
				}
				continue
			}
			switch r := req.(type) {
			case *GetRequest:
				if CheckKey(r.Key) != nil {
					t.Fatalf("accepted %+v", r)
				}
			case *SetRequest:
				if CheckKey(r.Key) != nil || r.TTLms < 0 {
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
