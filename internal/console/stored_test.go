package console_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/internal/console"
	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
)

// A task's page and the locks' history show the events stored before the
// console started (read from MESH_EVENTS), and the events heard since.
func TestStoredHistory(t *testing.T) {
	m, id := startMeshWithHistory(t, true)
	b := m.get("/scheduler/tasks/" + id)
	mustContain(t, "the dead task's page", b, `id="task-events"`, "task.submitted", "task.started", "task.dead", "file not found")
	if strings.Contains(b, "could not be read") || strings.Contains(b, "events-not-stored") {
		t.Fatalf("the stored events were not read:\n%s", b)
	}
	checkLockHistory(t, m)
}

// By default the task events are live only: a task's page shows its state
// and last error (the scheduler's record of it) and says that its events
// are not stored; the locks' history is stored as before.
func TestTaskEventsNotStored(t *testing.T) {
	m, id := startMeshWithHistory(t, false)
	b := m.get("/scheduler/tasks/" + id)
	mustContain(t, "the dead task's page", b, `id="task-state">dead<`, "file not found", `id="events-not-stored"`, "--store-task-events")
	for _, no := range []string{"task.submitted", "could not be read", "None stored or heard"} {
		if strings.Contains(b, no) {
			t.Fatalf("the dead task's page shows %q:\n%s", no, b)
		}
	}
	checkLockHistory(t, m)
}

// startMeshWithHistory starts a mesh (storing the task events or not), runs
// a task to its death and takes and releases a lock before the console
// starts, and returns the mesh and the task's id once the stream holds the
// events it stores.
func startMeshWithHistory(t *testing.T, storeTaskEvents bool) (*mesh, string) {
	var id string
	m := startMeshAfter(t, console.Config{}, node.Env{StoreTaskEvents: storeTaskEvents}, func(nc *nats.Conn) {
		c := ctx(t)
		w, err := scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: map[string]int{"imports": 1}})
		if err != nil {
			t.Fatal(err)
		}
		w.Handle("import", func(context.Context, *scheduler.Task) error { return errors.New("file not found: /data/in.csv") })
		if err := w.Start(c); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := w.Stop(c); err != nil {
				t.Error(err)
			}
		}()
		tasks := scheduler.NewClient(nc)
		zero := 0
		if id, err = tasks.Submit(c, scheduler.SubmitRequest{Queue: "imports", Type: "import", MaxRetries: &zero}); err != nil {
			t.Fatal(err)
		}
		if info, err := tasks.Wait(c, id); err != nil || info.State != "dead" {
			t.Fatalf("task %s: %+v, %v", id, info, err)
		}
		l, err := lock.NewClient(nc).Acquire(c, "stored-lock", lock.Options{TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Release(c); err != nil {
			t.Fatal(err)
		}
		// Events are published without waiting for the stream: wait until
		// it holds the last ones.
		js, _ := jetstream.New(nc)
		eventually(t, "the events stored", func() bool {
			s, err := js.Stream(c, bus.EventStream)
			if err != nil {
				return false
			}
			info, err := s.Info(c, jetstream.WithSubjectFilter(bus.EventSubjects))
			return err == nil && (info.State.Subjects["mesh.events.task.dead"] > 0) == storeTaskEvents && info.State.Subjects["mesh.events.lock.released"] > 0
		})
	})
	return m, id
}

// checkLockHistory checks the locks' history of startMeshWithHistory's
// lock, and that an event after the console started joins the stored ones.
func checkLockHistory(t *testing.T, m *mesh) {
	t.Helper()
	b := m.get("/locks?prefix=stored-")
	mustContain(t, "the locks' history", b, `id="lock-history"`, "lock.acquired", "lock.released", "stored-lock")

	// An event after the console started joins the stored ones (the read
	// is kept a while: the new one comes from the live events).
	c := ctx(t)
	l, err := m.locks.Acquire(c, "stored-lock", lock.Options{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Release(c) }()
	eventually(t, "the new grant shown with the stored ones", func() bool {
		b := m.get("/locks?prefix=stored-")
		return strings.Count(b, "lock.acquired") >= 2 && strings.Contains(b, "lock.released")
	})
	// A held lock's name leads to its history.
	eventually(t, "the held lock's link to its history", func() bool {
		return strings.Contains(m.get("/locks"), `href="/locks?prefix=stored-lock"`)
	})
}
