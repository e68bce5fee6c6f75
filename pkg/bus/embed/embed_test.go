package embed_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus/embed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSyncPolicy(t *testing.T) {
	for sync, check := range map[string]func(always bool, interval time.Duration) bool{
		"":        func(a bool, _ time.Duration) bool { return !a },
		"default": func(a bool, _ time.Duration) bool { return !a },
		"always":  func(a bool, _ time.Duration) bool { return a },
		"10s":     func(a bool, i time.Duration) bool { return !a && i == 10*time.Second },
	} {
		o, err := embed.Config{DataDir: t.TempDir(), Sync: sync}.Options()
		if err != nil || !check(o.SyncAlways, o.SyncInterval) {
			t.Errorf("sync %q: always=%v interval=%v err=%v", sync, o.SyncAlways, o.SyncInterval, err)
		}
	}
	for _, bad := range []embed.Config{{DataDir: t.TempDir(), Sync: "sometimes"}, {DataDir: t.TempDir(), Sync: "-1s"}, {Sync: "always"}, {DataDir: t.TempDir(), Listen: "nowhere"}} {
		if _, err := bad.Options(); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

// An in-process server without a port: clients connect in-process, JetStream
// works, and Shutdown returns once the server is down.
func TestDontListen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := embed.Start(ctx, embed.Config{DontListen: true, DataDir: t.TempDir(), Sync: "always"})
	if err != nil {
		t.Fatal(err)
	}
	if s.ClientURL() != "" {
		t.Fatalf("url %q with DontListen", s.ClientURL())
	}
	nc, err := nats.Connect("", s.ConnectOption())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := nc.JetStream()
	if _, err := js.AddStream(&nats.StreamConfig{Name: "S", Subjects: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish("s", []byte("x")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if s.NATS().Running() {
		t.Fatal("still running after Shutdown")
	}
}

func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = embed.Start(ctx, embed.Config{Listen: l.Addr().String(), DataDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %v to report a port in use", time.Since(start))
	}
}
