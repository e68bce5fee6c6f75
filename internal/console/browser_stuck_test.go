package console_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/internal/console"
	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/services/scheduler"
)

// TestBrowserStuckTask walks the path of someone who opens the console
// for the first time on a mesh in trouble, in a real Chromium, with
// nothing but the pages: a queue paused with a backlog, and a task that
// failed every attempt before the console started. From the overview
// they resume the queue (its backlog runs), follow the dead task's notice
// to its error (the task's record; its events, from before the console
// started, were live only: the page says so), requeue it once the cause is
// fixed, and watch it succeed; the overview is then clear.
func TestBrowserStuckTask(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	var dead string
	var emails []string
	var w *scheduler.Worker
	m := startMeshAfter(t, console.Config{Refresh: 500 * time.Millisecond, SampleEvery: time.Second, TaskListEvery: 500 * time.Millisecond}, node.Env{}, func(nc *nats.Conn) {
		c := ctx(t)
		tasks := scheduler.NewClient(nc)
		// A backlog in a queue that someone paused.
		for i := range 4 {
			id, err := tasks.Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "welcome", Payload: []byte(fmt.Sprintf("user%d@example.com", i))})
			if err != nil {
				t.Fatal(err)
			}
			emails = append(emails, id)
		}
		if err := tasks.Pause(c, "emails"); err != nil {
			t.Fatal(err)
		}
		var err error
		w, err = scheduler.NewWorker(nc, scheduler.WorkerConfig{Queues: map[string]int{"emails": 2, "imports": 1}, Name: "worker-1"})
		if err != nil {
			t.Fatal(err)
		}
		w.Handle("welcome", func(context.Context, *scheduler.Task) error { return nil })
		w.Handle("import", func(context.Context, *scheduler.Task) error {
			if broken.Load() {
				return errors.New("dial tcp 10.0.0.7:5432: connection refused")
			}
			return nil
		})
		if err := w.Start(c); err != nil {
			t.Fatal(err)
		}
		// A task that keeps failing, until it is dead.
		one := 1
		if dead, err = tasks.Submit(c, scheduler.SubmitRequest{Queue: "imports", Type: "import", MaxRetries: &one, Payload: []byte("customers.csv")}); err != nil {
			t.Fatal(err)
		}
		if info, err := tasks.Wait(c, dead); err != nil || info.State != "dead" {
			t.Fatalf("the failing task: %+v, %v", info, err)
		}
	})
	defer func() { _ = w.Stop(context.Background()) }()
	c := walkCtx(t)
	b := newBrowser(t, m.web.URL)

	// The overview says what is wrong.
	b.open("/")
	b.js("the paused queue's notice", `(() => { const li = document.querySelector('#attention li[data-paused="emails"]'); return li && li.innerText.includes("4 tasks wait"); })()`)
	b.js("the dead task's notice", `(() => { const li = document.querySelector('#attention li[data-dead-queue="imports"]'); return li && li.innerText.includes("1 task of queue imports failed every attempt"); })()`)
	b.shot("attention")

	// Resume the queue from the notice: its backlog runs.
	b.click(`#attention li[data-paused="emails"] button.resume`)
	b.js("the queue resumed", `document.querySelector(".flash.ok") && document.querySelector(".flash.ok").textContent.includes("queue emails: resumed")`)
	for _, id := range emails {
		if info, err := m.tasks.Wait(c, id); err != nil || info.State != "succeeded" {
			t.Fatalf("task %s of the resumed queue: %+v, %v", id, info, err)
		}
	}
	b.js("the paused queue's notice gone", `!document.querySelector('#attention li[data-paused]')`)

	// Follow the dead task's notice to its error and its history.
	b.click(`#attention li[data-dead-queue="imports"] a.button`)
	b.js("the dead letters of imports", fmt.Sprintf(`location.pathname === "/scheduler/dead" && (() => { const r = document.querySelector('tr[data-dead=%q]'); return r && r.innerText.includes("connection refused"); })()`, dead))
	b.click(fmt.Sprintf(`tr[data-dead=%q] a`, dead))
	b.js("the dead task's page", `!!document.getElementById("task-state") && document.getElementById("task-state").textContent === "dead"`)
	b.js("its last error, and why its events from before the console started are not shown", `(() => { const t = document.querySelector("#live").innerText; return t.includes("connection refused") && !!document.getElementById("events-not-stored") && t.includes("--store-task-events") && !t.includes("task.submitted"); })()`)

	// The cause fixed, requeue it from its page and watch it succeed.
	broken.Store(false)
	b.click("#requeue-task")
	b.js("the requeue done", fmt.Sprintf(`document.querySelector(".flash.ok") && document.querySelector(".flash.ok").textContent.includes("requeued task %s")`, dead))
	b.js("the task succeeded", `document.getElementById("task-state").textContent === "succeeded"`)
	if info, err := m.tasks.Status(c, dead); err != nil || info.State != "succeeded" {
		t.Fatalf("the requeued task: %+v, %v", info, err)
	}

	// Nothing needs attention any more.
	b.open("/")
	b.js("the overview clear", `!!document.querySelector("#live") && document.querySelector("#live").innerText.includes("MESH_TASKS") && !document.getElementById("attention")`)
}
