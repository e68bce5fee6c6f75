package console_test

import (
	"context"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/internal/console"
	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus/embed"
	"github.com/meshkit/mesh/services/scheduler"
)

// A console connected as a NATS user who may look but not act shows the
// pages, and shows an action's refusal: 403 permission_denied naming the
// subject, not a bare timeout.
func TestActionsRefusedByPermissions(t *testing.T) {
	cfg := embed.Config{Listen: "127.0.0.1:-1", DataDir: t.TempDir()}
	opts, err := cfg.Options()
	if err != nil {
		t.Fatal(err)
	}
	opts.Users = []*server.User{
		{Username: "admin", Password: "admin"},
		{Username: "viewer", Password: "viewer", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Deny: []string{"mesh.scheduler.pause", "mesh.scheduler.resume", "mesh.scheduler.cancel", "mesh.scheduler.submit"}},
		}},
	}
	c := ctx(t)
	srv, err := embed.StartOptions(c, opts, zerolog.Nop(), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	admin, err := nats.Connect(srv.ClientURL(), nats.UserInfo("admin", "admin"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	n, err := node.Start(c, admin, []string{"scheduler"}, node.Env{Logger: zerolog.Nop(), Node: "perms"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	if _, err := scheduler.NewClient(admin).Submit(c, scheduler.SubmitRequest{Queue: "emails", Type: "t"}); err != nil {
		t.Fatal(err)
	}

	viewer, err := nats.Connect(srv.ClientURL(), nats.UserInfo("viewer", "viewer"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(viewer.Close)
	con, err := console.New(viewer, console.Config{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := con.Start(c); err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(con.Handler())
	t.Cleanup(func() { _ = con.Stop(context.Background()); web.Close() })
	m := &mesh{t: t, web: web, client: noRedirects()}
	mustContain(t, "the viewer's scheduler page", m.get("/scheduler"), `data-queue="emails"`)
	loc := m.post("/scheduler/queues/emails/pause", url.Values{"back": {"/scheduler"}})
	mustContain(t, "a refused pause", loc, "err=403 permission_denied", "mesh.scheduler.pause")
	mustContain(t, "the refusal shown", m.get("/scheduler?"+url.Values{"err": {strings.TrimPrefix(loc, "/scheduler?err=")}}.Encode()), "Refused:", "403 permission_denied")
	qs, err := scheduler.NewClient(admin).Queues(c)
	if err != nil || qs[0].Paused {
		t.Fatalf("a refused pause paused: %+v, %v", qs, err)
	}
}
