package embed_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus/embed"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDataEnv); dir != "" {
		holdDataDir(dir)
		return
	}
	goleak.VerifyTestMain(m)
}

// childDataEnv makes the test binary a child process that starts a server
// on the directory it names, says "ready" and waits to be killed.
const childDataEnv = "EMBED_TEST_HOLD_DATA"

func holdDataDir(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir}); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	time.Sleep(time.Minute) // the test kills this process
	os.Exit(1)
}

// A second server on a data directory in use is refused with an error
// naming the directory and the holder's process; the first keeps serving;
// once it is shut down the directory is free again.
func TestDataDirInUse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "data")
	first, err := embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect("", first.ConnectOption())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := nc.JetStream()
	kv, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: "B"})
	if err != nil {
		t.Fatal(err)
	}

	_, err = embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir})
	var inUse *embed.DataDirInUseError
	if !errors.Is(err, embed.ErrDataDirInUse) || !errors.As(err, &inUse) || inUse.PID != os.Getpid() ||
		!strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second server on %s: err = %v, want it in use by process %d", dir, err, os.Getpid())
	}
	// The refused server touched nothing: the first still serves.
	if _, err := kv.Put("k", []byte("v")); err != nil {
		t.Fatalf("first server after the refusal: %v", err)
	}
	if e, err := kv.Get("k"); err != nil || string(e.Value()) != "v" {
		t.Fatalf("first server after the refusal: %v", err)
	}
	nc.Close()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	again, err := embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir})
	if err != nil {
		t.Fatalf("after shutdown: %v", err)
	}
	if err := again.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// A process killed with SIGKILL leaves no stale lock: the next server on
// its directory starts.
func TestDataDirFreedByKill(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childDataEnv+"="+dir)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Wait()
	defer child.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}

	_, err = embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir})
	var inUse *embed.DataDirInUseError
	if !errors.As(err, &inUse) || inUse.PID != child.Process.Pid {
		t.Fatalf("while the child holds %s: err = %v, want it in use by process %d", dir, err, child.Process.Pid)
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	s, err := embed.Start(ctx, embed.Config{DontListen: true, DataDir: dir})
	if err != nil {
		t.Fatalf("after the holder was killed: %v", err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

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
