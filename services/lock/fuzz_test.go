package lock

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
)

// FuzzDecodeRequests: any body, in either codec, decodes into a request that
// passed validation, or fails with a 400; never a panic.
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{
		`{"name":"a","ttl_ms":30000}`, `{"name":"a.b/c=d","ttl_ms":1000,"wait_ms":5,"limit":3}`, `{"name":"","ttl_ms":1}`,
		`{"name":"a..b"}`, `{"name":"a","token":7}`, `{"prefix":"x","limit":-1}`, `{"name":1}`, "\x82\xa4name\xa1a\xa6ttl_ms\xcd\x03\xe8", ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &bus.Msg{Msg: &nats.Msg{Data: data}, Codec: bus.DetectCodec(nil, data)}
		for _, req := range []any{&AcquireRequest{}, &ReleaseRequest{}, &RenewRequest{}, &InspectRequest{}, &ListRequest{}} {
			err := m.Decode(req)
			if err != nil {
				var e *bus.Error
				if !errors.As(err, &e) || e.Status != 400 {
					t.Fatalf("%T: error %v is not a 400", req, err)
				}
				continue
			}
			switch r := req.(type) {
			case *AcquireRequest:
				if CheckName(r.Name) != nil || r.WaitMs < 0 || r.Limit < 0 {
					t.Fatalf("accepted %+v", r)
				}
			case *ReleaseRequest:
				if CheckName(r.Name) != nil || r.Token == 0 {
					t.Fatalf("accepted %+v", r)
				}
			}
		}
	})
}
