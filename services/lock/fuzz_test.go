package lock

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
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
	for _, s := range []string{`{"name":"a","ttl":30000}`, "\x82\xa4name\xa1a\xa5token\xff", "\x82\xa4name\xa1a\xa6ttl_ms\xcf\xff\xff\xff\xff\xff\xff\xff\xff", `{"name":"a","ttl_ms":"30s"}`, "{\"name\":\"\xff\",\"ttl_ms\":1000}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &bus.Msg{Msg: &nats.Msg{Data: data}, Codec: bus.DetectCodec(nil, data)}
		for _, req := range []any{&AcquireRequest{}, &ReleaseRequest{}, &RenewRequest{}, &InspectRequest{}, &ListRequest{}} {
			if !bustest.CheckDecoded(t, m, req, m.Decode(req)) {
				continue
			}
			switch r := req.(type) {
			case *AcquireRequest:
				if CheckName(r.Name) != nil || r.WaitMs < 0 || r.WaitMs > maxWaitMs || r.Limit < 0 {
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
