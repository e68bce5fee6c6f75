package console

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/meshkit/mesh/services/scheduler"
)

// deadView is the dead letters page: one page of the tasks that spent
// their attempts, oldest first, with their last error.
type deadView struct {
	Queue  string
	Cursor string
	Tasks  []scheduler.DeadTask
	Next   string
	Err    error
}

func (c *Console) deadView(ctx context.Context, r *http.Request) (any, error) {
	q := r.URL.Query()
	v := &deadView{Queue: q.Get("queue"), Cursor: q.Get("cursor")}
	page, err := c.tasks.DeadList(ctx, scheduler.DeadListRequest{Queue: v.Queue, Cursor: v.Cursor, Limit: tasksPerPage})
	v.Tasks, v.Next, v.Err = page.Tasks, page.NextCursor, err
	return v, nil
}

// deadAction requeues or deletes dead tasks: one (id), or every dead task
// of a queue (queue and all=1).
func (c *Console) deadAction(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
	defer cancel()
	req := scheduler.DeadRequest{ID: strings.TrimSpace(r.FormValue("id")), Queue: strings.TrimSpace(r.FormValue("queue")), All: r.FormValue("all") != ""}
	var ids []string
	var err error
	var subject, did string
	switch r.PathValue("action") {
	case "requeue":
		ids, err = c.tasks.DeadRequeue(ctx, req)
		subject, did = scheduler.SubjectDeadRequeue, "requeued"
	case "delete":
		ids, err = c.tasks.DeadDelete(ctx, req)
		subject, did = scheduler.SubjectDeadDelete, "deleted from the dead letters"
	default:
		http.NotFound(w, r)
		return
	}
	c.taskLists.forget()
	msg := fmt.Sprintf("%s %d task%s", did, len(ids), map[bool]string{true: "", false: "s"}[len(ids) == 1])
	if len(ids) == 1 {
		msg = fmt.Sprintf("%s task %s", did, ids[0])
	}
	done(w, r, msg, c.denied(err, subject))
}
