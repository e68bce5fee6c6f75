package sys_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/sys"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEchoAndInfo(t *testing.T) {
	srv := bustest.RunServer(t)
	svc, err := sys.New(srv.Connect(), sys.Config{Node: "n1", MeshVersion: "9.9.9", Services: []string{"sys"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(ctx)
	nc := srv.Connect()

	packed, _ := bus.MsgPack.Marshal(map[string]string{"a": "b"})
	for _, body := range [][]byte{[]byte(`{"hello":"mesh"}`), packed, {}} {
		reply, err := bus.RequestMsg(ctx, nc, &nats.Msg{Subject: sys.SubjectEcho, Data: body})
		if err != nil {
			t.Fatal(err)
		}
		if string(reply.Data) != string(body) {
			t.Fatalf("echo of %q = %q", body, reply.Data)
		}
	}

	info, err := bus.Request[sys.InfoRequest, sys.InfoReply](ctx, nc, sys.SubjectInfo, sys.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Node != "n1" || info.MeshVersion != "9.9.9" || info.Server.Version == "" || info.Started.IsZero() {
		t.Fatalf("info = %+v", info)
	}
}
