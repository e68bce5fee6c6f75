package console_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/meshkit/mesh/internal/console"
	"github.com/meshkit/mesh/services/scheduler"
)

// The overview puts first what needs someone: a paused queue with the
// tasks that wait (and its Resume button), a queue's dead tasks (and the
// link to them); once fixed, the notice goes.
func TestOverviewNeedsAttention(t *testing.T) {
	m := startMesh(t, console.Config{})
	c := ctx(t)
	if !strings.Contains(m.get("/"), "<b>scheduler</b>") || strings.Contains(m.get("/"), `id="attention"`) {
		t.Fatalf("a mesh with nothing wrong:\n%s", m.get("/"))
	}
	w, err := scheduler.NewWorker(m.nc, scheduler.WorkerConfig{Queues: map[string]int{"imports": 1}})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("import", func(context.Context, *scheduler.Task) error { return errors.New("file not found: /data/in.csv") })
	if err := w.Start(c); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop(context.Background()) }()
	zero := 0
	id, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "imports", Type: "import", MaxRetries: &zero})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := m.tasks.Wait(c, id); err != nil || info.State != "dead" {
		t.Fatalf("task %s: %+v, %v", id, info, err)
	}
	// A queue no worker serves yet, paused with a backlog.
	for range 3 {
		if _, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "welcome"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.tasks.Pause(c, "emails"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the overview's notices", func() bool {
		b := m.get("/")
		return strings.Contains(b, `data-paused="emails"`) && strings.Contains(b, "3 tasks wait") && strings.Contains(b, `data-dead-queue="imports"`)
	})
	b := m.get("/")
	mustContain(t, "the notices", b, `action="/scheduler/queues/emails/resume"`, `href="/scheduler/dead?queue=imports"`, "1 task</b> of queue <b>imports</b>")

	loc := m.post("/scheduler/queues/emails/resume", url.Values{"back": {"/"}})
	mustContain(t, "resume from the overview", loc, "/?msg=queue emails: resumed")
	if _, err := m.tasks.DeadDelete(c, scheduler.DeadRequest{Queue: "imports", All: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the notices gone", func() bool { return !strings.Contains(m.get("/"), `id="attention"`) })

	ro := startMesh(t, console.Config{ReadOnly: true})
	if _, err := ro.tasks.Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "welcome"}); err != nil {
		t.Fatal(err)
	}
	if err := ro.tasks.Pause(c, "emails"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a read-only notice", func() bool { return strings.Contains(ro.get("/"), `data-paused="emails"`) })
	if strings.Contains(ro.get("/"), "/resume") {
		t.Fatal("a read-only console offers Resume")
	}
}
