package console_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/meshkit/mesh/internal/console"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
)

// chromium finds a Chromium or Chrome binary: $MESH_CHROMIUM, else the
// usual names on PATH.
func chromium() string {
	if p := os.Getenv("MESH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser drives one tab of a headless Chromium.
type browser struct {
	t     *testing.T
	ctx   context.Context
	base  string
	shots string // where screenshots go; "" keeps none
}

// js waits until a JavaScript condition holds in the page.
func (b *browser) js(what, cond string) {
	b.t.Helper()
	deadline := time.Now().Add(bustest.Scale(60 * time.Second))
	// A condition that throws (an element it reads is being replaced by a
	// live re-render) does not hold yet.
	safe := "(() => { try { return !!(" + cond + "); } catch (e) { return false; } })()"
	var err error
	for {
		_, err = chromedp.Run(b.ctx, chromedp.Poll[bool](safe, chromedp.WithPollingTimeout(time.Until(deadline)), chromedp.WithPollingInterval(50*time.Millisecond)))
		// A navigation (an action's redirect) ends the poll: poll the new page.
		if err == nil || time.Now().After(deadline) || !navigated(err) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		html, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.querySelector("main") ? document.querySelector("main").innerText : ""`))
		b.t.Fatalf("the page never showed %s (%s): %v\npage:\n%.3000s", what, cond, err, html)
	}
}

// navigated reports an error of a page that went away under a script.
func navigated(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "navigated") || strings.Contains(msg, "context was destroyed") || strings.Contains(msg, "Cannot find context")
}

// eval returns a JavaScript expression's value.
func (b *browser) eval(expr string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		b.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// do runs actions one after the other. The live part of a page is
// re-rendered from its event stream, which replaces its nodes: a node that
// an action (a click, a value set) found by its selector can be gone by the
// time the action uses its id. The browser then refuses the action before
// doing anything (the click is not sent), so do runs that action again,
// from its query, until it goes through or its deadline passes.
func (b *browser) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	for _, a := range actions {
		if err := b.retryStale(a); err != nil {
			b.t.Fatal(err)
		}
	}
}

// click clicks the first element that sel matches, once it is there and
// visible. The live part of a page is re-rendered from its event stream,
// which replaces its nodes: a click sent as mouse events (pressed, then
// released) can straddle a render, pressed on one node and released on its
// successor, and so click nothing. click therefore finds the element and
// clicks it in one script, which no render can interrupt; a form's
// confirmation it opens is accepted by the tab. If the element is gone when
// the script runs, it waits for it again, within a deadline.
func (b *browser) click(sel string) {
	b.t.Helper()
	q, err := json.Marshal(sel)
	if err != nil {
		b.t.Fatal(err)
	}
	visible := fmt.Sprintf(`(() => { const e = document.querySelector(%s); return !!e && e.checkVisibility(); })()`, q)
	click := fmt.Sprintf(`(() => { const e = document.querySelector(%s); if (!e || !e.checkVisibility()) return false; e.click(); return true; })()`, q)
	deadline := time.Now().Add(bustest.Scale(60 * time.Second))
	for {
		b.js("a visible "+sel, visible)
		ctx, cancel := context.WithDeadline(b.ctx, deadline)
		clicked, err := chromedp.Run(ctx, chromedp.Evaluate[bool](click))
		cancel()
		switch {
		case err != nil && navigated(err):
			// Only the click navigates: it ran.
			return
		case err != nil:
			b.t.Fatalf("click %s: %v", sel, err)
		case clicked:
			return
		case time.Now().After(deadline):
			b.t.Fatalf("click %s: it never stayed long enough to be clicked", sel)
		}
	}
}

// retryStale runs a, again while it fails on a stale node, within a
// deadline.
func (b *browser) retryStale(a chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(b.ctx, bustest.Scale(60*time.Second))
	defer cancel()
	for {
		err := chromedp.Do(ctx, a)
		if err == nil || !staleNode(err) || ctx.Err() != nil {
			return err
		}
		b.t.Logf("a node went stale under the action, running it again: %v", err)
	}
}

// staleNode reports the browser's refusal of a node id whose node the page
// has replaced since it was queried.
func staleNode(err error) bool {
	var e *cdproto.Error
	return errors.As(err, &e) && e.Code == -32000 && e.Message == "Could not find node with given id"
}

// open opens a page and waits until its live stream is connected.
func (b *browser) open(path string) {
	b.t.Helper()
	b.do(chromedp.Navigate(b.base + path))
	b.js("a connected live stream", `document.getElementById("conn").className === "conn on"`)
}

// shot saves a screenshot of the window as <name>.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	if b.shots == "" {
		return
	}
	png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// TestBrowser drives the console in a real Chromium: every page opens and
// stays live; a task submitted from the page goes queued → running →
// succeeded on its page without a reload; a queue is paused and resumed
// through its buttons and their confirmations; a dead task is requeued from
// the dead letters; a lock's expiry counts down
// and its waiter then holds it. With MESH_CONSOLE_SCREENSHOTS=DIR it saves
// a screenshot of each page in DIR (docs/console holds the ones of the
// README).
func TestBrowser(t *testing.T) {
	m := startMesh(t, console.Config{Refresh: 500 * time.Millisecond, SampleEvery: time.Second, TaskListEvery: 500 * time.Millisecond})
	c := walkCtx(t)
	b := newBrowser(t, m.web.URL)

	// A worker whose "welcome" tasks wait for the test, and whose "import"
	// tasks fail.
	release := make(chan struct{})
	w, err := scheduler.NewWorker(m.nc, scheduler.WorkerConfig{Queues: map[string]int{"emails": 2}, Name: "worker-1"})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("welcome", func(ctx context.Context, tk *scheduler.Task) error {
		select {
		case <-release:
			tk.SetResult([]byte("sent to " + string(tk.Payload)))
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	w.Handle("import", func(context.Context, *scheduler.Task) error { return fmt.Errorf("file not found: /data/import.csv") })

	// Overview.
	b.open("/")
	b.js("the services", `document.querySelector("#live").innerText.includes("scheduler") && document.querySelector("#live").innerText.includes("MESH_TASKS")`)

	// Submit a task from the scheduler page; its page follows it live.
	b.open("/scheduler")
	b.click("#submit-details summary")
	b.do(
		chromedp.SetValue(chromedp.CSS(`#submit-task input[name="queue"]`), "emails"),
		chromedp.SetValue(chromedp.CSS(`#submit-task input[name="type"]`), "welcome"),
		chromedp.SetValue(chromedp.CSS(`#submit-task input[name="payload"]`), "ann@example.com"),
	)
	b.click("#submit-task button")
	b.js("the new task's page", `location.pathname.startsWith("/scheduler/tasks/") && !!document.getElementById("task-state")`)
	id := strings.TrimPrefix(b.eval(`location.pathname`), "/scheduler/tasks/")
	b.js("the task queued", `document.getElementById("task-state").textContent === "queued"`)
	b.js("the live stream", `document.getElementById("conn").className === "conn on"`)
	b.eval(`window.notReloaded = "yes"`)
	if err := w.Start(c); err != nil {
		t.Fatal(err)
	}
	defer w.Stop(context.Background())
	b.js("the task running", `document.getElementById("task-state").textContent === "running"`)
	b.shot("task")
	close(release)
	b.js("the task succeeded", `document.getElementById("task-state").textContent === "succeeded" && document.querySelector("#live").innerText.includes("sent to ann@example.com")`)
	if b.eval(`window.notReloaded`) != "yes" {
		t.Fatal("the task page reloaded instead of updating live")
	}
	if info, err := m.tasks.Status(c, id); err != nil || info.State != "succeeded" {
		t.Fatalf("task %s: %+v, %v", id, info, err)
	}

	// More work for the scheduler page: a task that dies, queued tasks in a
	// queue that no worker serves, a delayed one.
	zero := 0
	dead, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "import", MaxRetries: &zero})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "reports", Type: "monthly", Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "reports", Type: "yearly", DelayMs: time.Hour.Milliseconds()}); err != nil {
		t.Fatal(err)
	}
	if info, err := m.tasks.Wait(c, dead); err != nil || info.State != "dead" {
		t.Fatalf("the failing task: %+v, %v", info, err)
	}

	// Pause and resume a queue with its buttons.
	b.open("/scheduler")
	b.js("the dead task counted", `document.querySelector('tr[data-queue="emails"] td:nth-child(5)').textContent.trim() === "1"`)
	b.click(`tr[data-queue="reports"] button.pause`)
	b.js("the queue paused", `document.querySelector(".flash.ok") && document.querySelector(".flash.ok").textContent.includes("queue reports: paused") && document.querySelector('tr[data-queue="reports"] .badge').textContent === "paused"`)
	if qs, err := m.tasks.Queues(c); err != nil || !paused(qs, "reports") {
		t.Fatalf("after Pause: %+v, %v", qs, err)
	}
	b.open("/scheduler")
	b.js("every task listed", `document.querySelectorAll("#tasks tr[data-task]").length === 6`)
	b.shot("scheduler")
	b.click(`tr[data-queue="reports"] button.resume`)
	b.js("the queue resumed", `document.querySelector(".flash.ok") && document.querySelector(".flash.ok").textContent.includes("queue reports: resumed")`)
	eventually(t, "the queue resumes", func() bool {
		qs, err := m.tasks.Queues(c)
		return err == nil && !paused(qs, "reports")
	})
	b.js("the queue running", `document.querySelector('tr[data-queue="reports"] .badge').textContent === "running"`)

	// Requeue the dead task from the dead letters.
	requeued, err := m.nc.SubscribeSync("mesh.events.task.requeued")
	if err != nil {
		t.Fatal(err)
	}
	defer requeued.Unsubscribe()
	b.open("/scheduler/dead")
	b.js("the dead task", fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-dead=%q]'); return r && r.innerText.includes("file not found: /data/import.csv"); })()`, dead))
	b.shot("dead")
	b.click(fmt.Sprintf(`tr[data-dead=%q] button.resume`, dead))
	b.js("the requeue done", fmt.Sprintf(`document.querySelector(".flash.ok") && document.querySelector(".flash.ok").textContent.includes("requeued task %s")`, dead))
	msg, err := requeued.NextMsg(bustest.Scale(30 * time.Second))
	if err != nil || !strings.Contains(string(msg.Data), dead) {
		t.Fatalf("no requeued event for %s: %v", dead, err)
	}

	// A refused action shows the service's refusal.
	b.open("/scheduler/tasks/" + id)
	if strings.Contains(b.eval(`document.body.innerHTML`), "cancel-task") {
		t.Fatal("a finished task offers Cancel")
	}

	// Locks: a lease that is not renewed counts down to its expiry, and
	// the waiter in line gets the lock.
	ttl := bustest.Scale(10 * time.Second) // long enough for the page to open on a loaded machine
	grant, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](c, m.nc, lock.SubjectAcquire, lock.AcquireRequest{Name: "reports", Owner: "nightly-report", TTLms: ttl.Milliseconds()})
	if err != nil {
		t.Fatal(err)
	}
	other, err := m.locks.TryAcquire(c, "deploy/prod", lock.Options{TTL: time.Minute, Owner: "ci-job-4711"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release(context.Background())
	got := make(chan *lock.Lease, 1)
	go func() {
		l, err := m.locks.Acquire(c, "reports", lock.Options{TTL: time.Minute, Owner: "backup-job"})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	b.open("/locks")
	b.js("the holder and its waiter", `(() => { const r = document.querySelector('tr[data-lock="reports"]'); return r && r.querySelector(".holder").textContent === "nightly-report" && r.innerText.includes("backup-job"); })()`)
	shown := b.eval(`document.querySelector('tr[data-lock="reports"] .countdown').textContent`)
	first, _ := strconv.ParseFloat(strings.TrimSuffix(shown, "s"), 64)
	if first <= 1 || first > ttl.Seconds() {
		t.Fatalf("the countdown shows %q, want within (1, %v] seconds", shown, ttl.Seconds())
	}
	b.js("the countdown going down", fmt.Sprintf(`parseFloat(document.querySelector('tr[data-lock="reports"] .countdown').textContent) < %g`, first-1))
	b.shot("locks")
	b.js("the waiter holding the lock", `(() => { const r = document.querySelector('tr[data-lock="reports"]'); return r && r.querySelector(".holder").textContent === "backup-job"; })()`)
	bk := <-got
	if bk == nil {
		t.FailNow()
	}
	defer bk.Release(context.Background())
	if bk.Token() <= grant.Token {
		t.Fatalf("the waiter's token %d is not above %d", bk.Token(), grant.Token)
	}

	// Cache: a key's owner and value.
	cc, err := cache.NewClient(m.nc, cache.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Start(c); err != nil {
		t.Fatal(err)
	}
	defer cc.Close(context.Background())
	for i := range 20 {
		if err := cc.Set(c, fmt.Sprintf("user:%d", i), []byte(fmt.Sprintf(`{"name":"user %d"}`, i)), time.Hour); err != nil {
			t.Fatal(err)
		}
		_, _ = cc.Get(c, fmt.Sprintf("user:%d", i))
		_, _ = cc.Get(c, fmt.Sprintf("session:%d", i))
	}
	b.open("/cache?key=user:7")
	owner := cc.Ring().Owner("user:7")
	b.js("the key's owner", fmt.Sprintf(`document.getElementById("lookup").innerText.includes(%q) && document.getElementById("lookup").innerText.includes('{"name":"user 7"}')`, owner))
	b.js("the nodes' figures", `document.querySelector("#nodes") !== null`)
	b.shot("cache")

	// Events: new events appear at the top.
	b.open("/events")
	if _, err := m.tasks.Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "welcome", Payload: []byte("bob@example.com")}); err != nil {
		t.Fatal(err)
	}
	b.js("the submitted event", `!!document.querySelector('#events tbody tr[data-type="task.submitted"]')`)
	b.do(chromedp.Navigate(b.base + "/events?filter=lock.*"))
	b.js("only lock events", `(() => { const rows = [...document.querySelectorAll("#events tbody tr")]; return rows.length > 0 && rows.every(r => r.dataset.type.startsWith("lock.")); })()`)
	b.do(chromedp.Navigate(b.base + "/events"))
	b.js("the events", `document.querySelectorAll("#events tbody tr").length > 5`)
	b.shot("events")

	// The overview with its charts filled.
	b.open("/")
	b.js("a chart", `!!document.querySelector("figure.chart polyline")`)
	b.shot("overview")
}

// newBrowser starts a headless Chromium for the test (skipping it, loudly,
// where there is none) on a tab that accepts every confirmation an action
// asks. With MESH_CONSOLE_SCREENSHOTS=DIR its shots go to DIR.
func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	chrome := chromium()
	if chrome == "" {
		t.Log("**********************************************************************")
		t.Log("NO CHROMIUM FOUND: the console's browser test did NOT run.")
		t.Log("Install it with scripts/install-chromium.sh (Debian's chromium), or")
		t.Log("point MESH_CHROMIUM at a Chromium or Chrome binary.")
		t.Log("**********************************************************************")
		t.Skip("no chromium binary (scripts/install-chromium.sh installs it)")
	}
	shots := os.Getenv("MESH_CONSOLE_SCREENSHOTS")
	if shots != "" {
		if err := os.MkdirAll(shots, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.WindowSize(1280, 860),
		chromedp.Flag("disable-dev-shm-usage", true))...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	tctx, tcancel := context.WithTimeout(bctx, walkTime())
	b := &browser{t: t, ctx: tctx, base: base, shots: shots}
	// The first action starts the browser, which lives as long as the
	// context of that action: tctx, not a shorter one of b.do.
	if err := chromedp.Do(tctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	// The user accepts every confirmation an action asks.
	dialogs := chromedp.Events(tctx, page.JavascriptDialogOpening)
	dialogsDone := make(chan struct{})
	go func() {
		defer close(dialogsDone)
		for _, err := range dialogs {
			if err != nil {
				return
			}
			_, err := chromedp.Call(tctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
			t.Logf("dialog accepted: %v", err)
		}
	}()
	t.Cleanup(func() { tcancel(); <-dialogsDone })
	return b
}

// walkCtx bounds the requests of a whole walk through the pages, which
// takes much longer than one request on a loaded machine: as long as the
// tab's own bound.
func walkCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), walkTime())
	t.Cleanup(cancel)
	return c
}

// walkTime is the bound of a walk through the pages.
func walkTime() time.Duration { return bustest.Scale(4 * time.Minute) }

func paused(qs []scheduler.QueueInfo, name string) bool {
	for _, q := range qs {
		if q.Name == name {
			return q.Paused
		}
	}
	return false
}
