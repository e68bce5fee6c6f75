package schemas_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/schemas"
)

type exampleFile struct {
	Subject  string    `json:"subject"`
	Examples []example `json:"examples"`
}

type example struct {
	Title   string          `json:"title"`
	Before  []step          `json:"before"` // requests sent first, e.g. to hold a lock
	Request json.RawMessage `json:"request"`
	Error   string          `json:"error"` // the expected error code; empty: a reply
	// Expect is a subset of the reply (or of the error body) that must
	// match: every field it has, with the same value; arrays element by
	// element. ${run} and ${save.field} expand as in the request. Every
	// example that expects a reply has one.
	Expect json.RawMessage `json:"expect"`
}

// step is a request sent before an example; its JSON reply is saved under
// Save, so that a later request can say "${save.field}".
type step struct {
	Subject string          `json:"subject"`
	Request json.RawMessage `json:"request"`
	Save    string          `json:"save"`
}

var varRE = regexp.MustCompile(`"\$\{([a-z_]+)\.([a-z_]+)\}"`)

// expand replaces ${run} in a request with the run's name (json or msgpack,
// so that the two runs use different names), and a string "${save.field}"
// with the field of a saved reply.
func expand(t *testing.T, req json.RawMessage, run string, saved map[string]map[string]json.RawMessage) json.RawMessage {
	t.Helper()
	out := strings.ReplaceAll(string(req), "${run}", run)
	out = varRE.ReplaceAllStringFunc(out, func(m string) string {
		sub := varRE.FindStringSubmatch(m)
		v, ok := saved[sub[1]][sub[2]]
		if !ok {
			t.Fatalf("%s: nothing saved as %s.%s", req, sub[1], sub[2])
		}
		return string(v)
	})
	return json.RawMessage(out)
}

// setup sends an example's before steps in JSON and saves their replies.
func setup(t *testing.T, ctx context.Context, nc *nats.Conn, e example, run string) map[string]map[string]json.RawMessage {
	t.Helper()
	saved := map[string]map[string]json.RawMessage{}
	for _, st := range e.Before {
		subject := strings.ReplaceAll(st.Subject, "${run}", run)
		reply, err := bus.RequestMsg(ctx, nc, &nats.Msg{Subject: subject, Data: expand(t, st.Request, run, saved)})
		if err != nil {
			t.Fatalf("example %q: before %s: %v", e.Title, st.Subject, err)
		}
		if st.Save != "" && strings.HasPrefix(reply.Reply, "$JS.ACK.") {
			saved[st.Save] = delivery(t, reply)
			continue
		}
		if st.Save != "" {
			fields := map[string]json.RawMessage{}
			if err := json.Unmarshal(reply.Data, &fields); err != nil {
				t.Fatalf("example %q: before %s: %v", e.Title, st.Subject, err)
			}
			saved[st.Save] = fields
		}
	}
	return saved
}

// delivery saves what a worker reports of a message pulled from a
// consumer ($JS.API.CONSUMER.MSG.NEXT...): the task id, the stream
// sequence and the delivery count, from the headers and the ack subject
// ($JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>..., with a domain
// and an account hash after $JS.ACK in the newer form).
func delivery(t *testing.T, m *nats.Msg) map[string]json.RawMessage {
	t.Helper()
	tok := strings.Split(m.Reply, ".")
	i := 4
	if len(tok) > 9 {
		i = 6
	}
	if len(tok) < i+2 {
		t.Fatalf("ack subject %q", m.Reply)
	}
	id, _ := json.Marshal(m.Header.Get("Mesh-Task-Id"))
	return map[string]json.RawMessage{"id": id, "attempt": json.RawMessage(tok[i]), "stream_seq": json.RawMessage(tok[i+1])}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func compile(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	names, err := fs.Glob(schemas.FS, "*.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		f, err := schemas.FS.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := c.AddResource(url(name), doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	out := map[string]*jsonschema.Schema{}
	for _, name := range names {
		s, err := c.Compile(url(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = s
	}
	return out
}

func url(name string) string { return "file:///mesh/schemas/" + name }

func validate(t *testing.T, s *jsonschema.Schema, what string, data []byte) {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Errorf("%s: not JSON: %v: %s", what, err, data)
		return
	}
	if err := s.Validate(v); err != nil {
		t.Errorf("%s does not match its schema: %v\n%s", what, err, data)
	}
}

// Every endpoint of every running service has a request schema, a reply
// schema and examples; every example request, sent in JSON and in msgpack to
// the real service, gets a reply (or the expected coded error) that matches
// its schema; and every event matches event.json.
func TestRepliesMatchSchemas(t *testing.T) {
	sch := compile(t)
	d := loadDocs(t)
	srv := bustest.RunServer(t)
	nc := srv.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	events, err := nc.SubscribeSync("mesh.events.>")
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.Start(ctx, srv.Connect(), nil, node.Env{Node: "schema-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop(ctx)

	instances, err := bus.Discover(ctx, nc, "", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{"error.json": true, "event.json": true, "defs.json": true}
	tested := 0
	for _, in := range instances {
		for _, ep := range in.Info.Endpoints {
			base := in.Info.Name + "." + ep.Name
			reqName, repName := base+".request.json", base+".reply.json"
			used[reqName], used[repName] = true, true
			if sch[reqName] == nil || sch[repName] == nil {
				t.Errorf("endpoint %s (%s): missing %s or %s", base, ep.Subject, reqName, repName)
				continue
			}
			raw, err := os.ReadFile(filepath.Join("examples", base+".json"))
			if err != nil {
				t.Errorf("endpoint %s: no examples: %v", base, err)
				continue
			}
			var ex exampleFile
			if err := json.Unmarshal(raw, &ex); err != nil || len(ex.Examples) == 0 {
				t.Errorf("examples/%s.json: %v (or no examples)", base, err)
				continue
			}
			if ex.Subject != ep.Subject && !strings.ContainsAny(ep.Subject, "*>") {
				t.Errorf("examples/%s.json: subject %s, the endpoint listens on %s", base, ex.Subject, ep.Subject)
			}
			for _, e := range ex.Examples {
				what := fmt.Sprintf("%s example %q", base, e.Title)
				if e.Error == "" && len(e.Expect) == 0 {
					t.Errorf("%s: no expect: a reply that matches the schema could still say anything", what)
				}
				saved := setup(t, ctx, nc, e, "json")
				req := expand(t, e.Request, "json", saved)
				if e.Error == "" {
					validate(t, sch[reqName], what+" request", req)
				}
				checkReply(t, sch, d, ctx, nc, ex.Subject, e, what, repName, req, expectOf(t, e, "json", saved))
				saved = setup(t, ctx, nc, e, "msgpack")
				packed := bustest.MsgpackFromJSON(t, string(expand(t, e.Request, "msgpack", saved)))
				checkReply(t, sch, d, ctx, nc, ex.Subject, e, what+" (msgpack)", repName, packed, expectOf(t, e, "msgpack", saved))
				tested++
			}
		}
	}
	if tested == 0 {
		t.Fatal("no endpoint was tested")
	}
	names, _ := fs.Glob(schemas.FS, "*.json")
	for _, name := range names {
		if !used[name] && !strings.HasPrefix(name, "event.") {
			t.Errorf("%s belongs to no running endpoint", name)
		}
	}

	if err := bus.NewEvents(nc, "test", "schema-test").Emit("checked", map[string]int{"examples": tested}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := events.NextMsg(2 * time.Second)
		if err != nil {
			t.Fatalf("waiting for the test event: %v", err)
		}
		validate(t, sch["event.json"], "event on "+m.Subject, m.Data)
		if m.Subject == "mesh.events.test.checked" {
			break
		}
		checkEventData(t, sch, m.Data)
	}
}

// expectOf is an example's expect for a run, expanded; nil when it has none.
func expectOf(t *testing.T, e example, run string, saved map[string]map[string]json.RawMessage) json.RawMessage {
	t.Helper()
	if len(e.Expect) == 0 {
		return nil
	}
	return expand(t, e.Expect, run, saved)
}

// checkReply sends an example's request and checks the reply: the expected
// error code or a reply, its schema, its expect, and in msgpack the wire
// types of its values.
// checkEventData validates an event's data against the schema of its type,
// event.<type>.json.
func checkEventData(t *testing.T, sch map[string]*jsonschema.Schema, event []byte) {
	t.Helper()
	var ev struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(event, &ev); err != nil {
		t.Errorf("event: %v: %s", err, event)
		return
	}
	name := "event." + ev.Type + ".json"
	if sch[name] == nil {
		t.Errorf("event %s: no schema %s for its data: %s", ev.Type, name, event)
		return
	}
	if len(ev.Data) == 0 {
		ev.Data = json.RawMessage("null")
	}
	validate(t, sch[name], "data of event "+ev.Type, ev.Data)
}

func checkReply(t *testing.T, sch map[string]*jsonschema.Schema, d docs, ctx context.Context, nc *nats.Conn, subject string, e example, what, repName string, body []byte, expect json.RawMessage) {
	t.Helper()
	reply, err := nc.RequestWithContext(ctx, subject, body)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	data := reply.Data
	var p packed
	packedReply := bus.DetectCodec(nil, body) == bus.MsgPack
	if packedReply {
		if data, p, err = fromMsgpack(data); err != nil {
			t.Errorf("%s: reply is not msgpack: %v", what, err)
			return
		}
	}
	var rerr *bus.Error
	errors.As(bus.ReplyError(reply), &rerr)
	if rerr == nil && packedReply {
		for _, bad := range d.checkTypes(t, repName, d[repName], p, "reply") {
			t.Errorf("%s: %s", what, bad)
		}
	}
	if expect != nil && (rerr == nil) == (e.Error == "") {
		checkExpect(t, what, expect, data)
	}
	switch {
	case rerr != nil && e.Error == "":
		t.Errorf("%s: unexpected error %v", what, rerr)
	case rerr == nil && e.Error != "":
		t.Errorf("%s: got a reply, want error %s", what, e.Error)
	case rerr != nil:
		if rerr.Code != e.Error {
			t.Errorf("%s: error %v, want code %s", what, rerr, e.Error)
		}
		validate(t, sch["error.json"], what+" error", data)
	default:
		validate(t, sch[repName], what+" reply", data)
	}
}
