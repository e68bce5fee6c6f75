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

// Dead letters: listed with their last error, requeued (attempts reset)
// and deleted from the page; a requeue of what is not dead is refused.
func TestDeadLetters(t *testing.T) {
	m := startMesh(t, console.Config{})
	c := ctx(t)
	w, err := scheduler.NewWorker(m.nc, scheduler.WorkerConfig{Queues: map[string]int{"imports": 1}})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("import", func(context.Context, *scheduler.Task) error { return errors.New("file not found: /data/in.csv") })
	if err := w.Start(c); err != nil {
		t.Fatal(err)
	}
	zero := 0
	var ids []string
	for range 2 {
		id, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "imports", Type: "import", MaxRetries: &zero})
		if err != nil {
			t.Fatal(err)
		}
		if info, err := m.tasks.Wait(c, id); err != nil || info.State != "dead" {
			t.Fatalf("task %s: %+v, %v", id, info, err)
		}
		ids = append(ids, id)
	}
	if err := w.Stop(c); err != nil { // nothing runs the requeued task
		t.Fatal(err)
	}
	eventually(t, "both dead letters listed", func() bool {
		b := m.get("/scheduler/dead?queue=imports")
		return strings.Contains(b, `data-dead="`+ids[0]+`"`) && strings.Contains(b, `data-dead="`+ids[1]+`"`)
	})
	mustContain(t, "dead letters", m.get("/scheduler/dead"), "file not found: /data/in.csv", "Requeue", "Delete")
	mustContain(t, "the scheduler page's link", m.get("/scheduler"), `href="/scheduler/dead?queue=imports"`)
	mustContain(t, "a dead task's page", m.get("/scheduler/tasks/"+ids[0]), `id="requeue-task"`, "/scheduler/dead/delete")

	loc := m.post("/scheduler/dead/requeue", url.Values{"id": {ids[0]}, "back": {"/scheduler/tasks/" + ids[0]}})
	mustContain(t, "requeue", loc, "msg=requeued task "+ids[0])
	if info, err := m.tasks.Status(c, ids[0]); err != nil || info.State != "queued" || info.Attempts != 0 {
		t.Fatalf("after requeue: %+v, %v", info, err)
	}
	loc = m.post("/scheduler/dead/delete", url.Values{"queue": {"imports"}, "all": {"1"}, "back": {"/scheduler/dead?queue=imports"}})
	mustContain(t, "delete all", loc, "msg=deleted from the dead letters task "+ids[1])
	left, err := m.tasks.DeadList(c, scheduler.DeadListRequest{Queue: "imports"})
	if err != nil || len(left.Tasks) != 0 {
		t.Fatalf("dead letters left: %+v, %v", left, err)
	}
	mustContain(t, "no dead letters", m.get("/scheduler/dead?queue=imports"), "No dead task in imports")
	loc = m.post("/scheduler/dead/requeue", url.Values{"id": {ids[1]}, "back": {"/scheduler/dead"}})
	mustContain(t, "requeue of a deleted dead letter", loc, "err=404")
}
