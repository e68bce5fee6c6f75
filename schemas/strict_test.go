package schemas_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshkit/mesh/internal/node"
	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/schemas"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
	"github.com/meshkit/mesh/services/sys"
)

// requestTypes maps every endpoint that decodes a request to its Go type.
// An endpoint missing here fails TestRequestsRefuseWhatTheyDoNotKnow.
var requestTypes = map[string]any{
	"sys.info":                 sys.InfoRequest{},
	"cache.get":                cache.GetRequest{},
	"cache.set":                cache.SetRequest{},
	"cache.del":                cache.DelRequest{},
	"cache.mget":               cache.MGetRequest{},
	"cache.mset":               cache.MSetRequest{},
	"cache.stats":              cache.StatsRequest{},
	"cache.put":                cache.PutRequest{},
	"cache.digest":             cache.DigestRequest{},
	"lock.acquire":             lock.AcquireRequest{},
	"lock.release":             lock.ReleaseRequest{},
	"lock.renew":               lock.RenewRequest{},
	"lock.inspect":             lock.InspectRequest{},
	"lock.list":                lock.ListRequest{},
	"scheduler.submit":         scheduler.SubmitRequest{},
	"scheduler.status":         scheduler.StatusRequest{},
	"scheduler.cancel":         scheduler.CancelRequest{},
	"scheduler.list":           scheduler.ListRequest{},
	"scheduler.queues":         scheduler.QueuesRequest{},
	"scheduler.pause":          scheduler.PauseRequest{},
	"scheduler.resume":         scheduler.PauseRequest{},
	"scheduler.schedules_add":  scheduler.ScheduleRequest{},
	"scheduler.schedules_list": scheduler.ScheduleListRequest{},
	"scheduler.schedules_rm":   scheduler.ScheduleRmRequest{},
	"scheduler.dead_list":      scheduler.DeadListRequest{},
	"scheduler.dead_requeue":   scheduler.DeadRequest{},
	"scheduler.dead_delete":    scheduler.DeadRequest{},
}

// anyBody lists the endpoints that take any body.
var anyBody = map[string]bool{"sys.echo": true}

// requestType returns the request type of an endpoint (a cache node's
// endpoints take the service's).
func requestType(base string) (reflect.Type, bool) {
	v, ok := requestTypes[strings.Replace(base, "cache.node-", "cache.", 1)]
	return reflect.TypeOf(v), ok
}

// docs holds every schema file as plain JSON, to follow $refs by hand.
type docs map[string]map[string]any

func loadDocs(t *testing.T) docs {
	t.Helper()
	d := docs{}
	names, _ := fs.Glob(schemas.FS, "*.json")
	for _, n := range names {
		b, err := fs.ReadFile(schemas.FS, n)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		d[n] = m
	}
	return d
}

// resolve follows s's $ref (relative to file), as often as it takes.
func (d docs) resolve(t *testing.T, file string, s map[string]any) (string, map[string]any) {
	t.Helper()
	for {
		ref, ok := s["$ref"].(string)
		if !ok {
			return file, s
		}
		f, ptr, _ := strings.Cut(ref, "#")
		if f != "" {
			file = f
		}
		s = d[file]
		if s == nil {
			t.Fatalf("$ref %s: no such file", ref)
		}
		for _, tok := range strings.Split(strings.Trim(ptr, "/"), "/") {
			if tok == "" {
				continue
			}
			next, ok := s[tok].(map[string]any)
			if !ok {
				t.Fatalf("$ref %s: nothing at %s", ref, tok)
			}
			s = next
		}
	}
}

// checkObject checks that the object schema s describes exactly the wire
// fields of the struct type typ: the same names, no additional properties,
// required fields among them, a maximum on every *_ms field; and the same
// of the structs nested in it.
func (d docs) checkObject(t *testing.T, what, file string, s map[string]any, typ reflect.Type) {
	t.Helper()
	file, s = d.resolve(t, file, s)
	if s["additionalProperties"] != false {
		t.Errorf("%s: the schema does not say additionalProperties: false", what)
	}
	props, _ := s["properties"].(map[string]any)
	var names []string
	for n := range props {
		names = append(names, n)
	}
	fields := bus.FieldNames(typ)
	slices.Sort(names)
	sorted := slices.Sorted(slices.Values(fields))
	if !slices.Equal(names, sorted) {
		t.Errorf("%s: the schema's properties %v, the struct's fields %v", what, names, sorted)
	}
	req, _ := s["required"].([]any)
	for _, r := range req {
		if !slices.Contains(fields, r.(string)) {
			t.Errorf("%s: required %s is not a field", what, r)
		}
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		p, ok := props[name].(map[string]any)
		if !ok {
			continue
		}
		pfile, p := d.resolve(t, file, p)
		if strings.HasSuffix(name, "_ms") {
			if _, ok := p["maximum"]; !ok {
				t.Errorf("%s.%s: no maximum", what, name)
			}
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct && !strings.Contains(ft.PkgPath(), "pkg/bus"):
			d.checkObject(t, what+"."+name, pfile, p, ft)
		case ft.Kind() == reflect.Slice && ft.Elem() == typ:
			// A batch of requests of this type (scheduler.submit's tasks):
			// checked at the top.
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			items, _ := p["items"].(map[string]any)
			if items == nil {
				t.Errorf("%s.%s: an array without items", what, name)
				continue
			}
			d.checkObject(t, what+"."+name+"[]", pfile, items, ft.Elem())
		}
	}
}

// Every request schema describes exactly its Go type's fields, refuses
// additional properties, and bounds every duration.
func TestRequestSchemasMatchStructs(t *testing.T) {
	d := loadDocs(t)
	for n := range d {
		base, ok := strings.CutSuffix(n, ".request.json")
		if !ok || anyBody[base] {
			continue
		}
		typ, ok := requestType(base)
		if !ok {
			t.Errorf("%s: no Go type in requestTypes", n)
			continue
		}
		d.checkObject(t, base, n, d[n], typ)
	}
}

// mutation is a change to a valid example request and the error it must
// get: a 400 with this code (any code when empty) whose message starts
// with prefix.
type mutation struct {
	what   string
	req    map[string]any
	code   string
	prefix string
}

// mutations returns the bad requests made from a valid one: an unknown
// field, at the top and in nested objects; each duration field misspelt
// without its _ms, as a string, above its maximum and at the values that
// overflow nanoseconds; each required field left out.
func (d docs) mutations(t *testing.T, file string, req map[string]any) []mutation {
	_, s := d.resolve(t, file, d[file])
	props, _ := s["properties"].(map[string]any)
	clone := func() map[string]any {
		b, _ := json.Marshal(req)
		var c map[string]any
		_ = json.Unmarshal(b, &c)
		return c
	}
	var out []mutation
	r := clone()
	r["zzz_unknown"] = 1
	out = append(out, mutation{"an unknown field", r, "unknown_field", "zzz_unknown: unknown field"})
	for k, v := range req {
		if arr, ok := v.([]any); ok && len(arr) > 0 {
			if _, ok := arr[0].(map[string]any); ok {
				r := clone()
				r[k].([]any)[0].(map[string]any)["zzz_unknown"] = 1
				out = append(out, mutation{"an unknown field in " + k, r, "unknown_field", k + "[0].zzz_unknown: unknown field"})
			}
		}
	}
	for name := range props {
		if !strings.HasSuffix(name, "_ms") {
			continue
		}
		_, p := d.resolve(t, file, props[name].(map[string]any))
		short := strings.TrimSuffix(name, "_ms")
		r := clone()
		delete(r, name)
		r[short] = 1000
		out = append(out, mutation{"misspelt " + short, r, "unknown_field", short + ": unknown field; did you mean " + name + "?"})
		r = clone()
		r[name] = "1000"
		out = append(out, mutation{name + " as a string", r, "invalid", name + ": expected an integer (milliseconds), got a string"})
		for _, v := range []float64{p["maximum"].(float64) + 1, 9223372036855, 18446744073710} {
			r = clone()
			r[name] = int64(v)
			out = append(out, mutation{fmt.Sprintf("%s %d", name, int64(v)), r, "", ""})
		}
	}
	req2, _ := s["required"].([]any)
	for _, f := range req2 {
		r := clone()
		delete(r, f.(string))
		out = append(out, mutation{"without " + f.(string), r, "", ""})
	}
	return out
}

// Every endpoint refuses, in JSON and in msgpack, a field it does not know
// (naming the field meant), a duration of the wrong type or above its
// maximum, and a request without a required field; each of its valid
// examples, so changed, gets a 400 and changes nothing.
func TestRequestsRefuseWhatTheyDoNotKnow(t *testing.T) {
	d := loadDocs(t)
	srv := bustest.RunServer(t)
	nc := srv.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := node.Start(ctx, srv.Connect(), nil, node.Env{Node: "schema-test"}) // the examples name its node subjects
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop(ctx)
	instances, err := bus.Discover(ctx, nc, "", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for _, in := range instances {
		for _, ep := range in.Info.Endpoints {
			base := in.Info.Name + "." + ep.Name
			if anyBody[base] {
				continue
			}
			if _, ok := requestType(base); !ok {
				t.Errorf("endpoint %s: no Go type in requestTypes", base)
				continue
			}
			raw, err := os.ReadFile(filepath.Join("examples", base+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var ex exampleFile
			if err := json.Unmarshal(raw, &ex); err != nil {
				t.Fatal(err)
			}
			for _, e := range ex.Examples {
				if e.Error != "" {
					continue
				}
				for _, run := range []string{"json", "msgpack"} {
					var req map[string]any
					if err := json.Unmarshal(expand(t, e.Request, run+"-strict", setup(t, ctx, nc, e, run+"-strict")), &req); err != nil {
						t.Fatalf("%s %q: %v", base, e.Title, err)
					}
					for _, m := range d.mutations(t, base+".request.json", req) {
						body, _ := json.Marshal(m.req)
						if run == "msgpack" {
							body = bustest.MsgpackFromJSON(t, string(body))
						}
						reply, err := nc.RequestWithContext(ctx, ex.Subject, body)
						if err != nil {
							t.Fatalf("%s %q, %s (%s): %v", base, e.Title, m.what, run, err)
						}
						var rerr *bus.Error
						errors.As(bus.ReplyError(reply), &rerr)
						tried++
						switch {
						case rerr == nil:
							t.Errorf("%s %q, %s (%s): accepted: %s", base, e.Title, m.what, run, reply.Data)
						case rerr.Status != 400 || (m.code != "" && rerr.Code != m.code) || !strings.HasPrefix(rerr.Message, m.prefix):
							t.Errorf("%s %q, %s (%s): %d %v; want 400 %s %q...", base, e.Title, m.what, run, rerr.Status, rerr, m.code, m.prefix)
						}
					}
				}
			}
		}
	}
	if tried == 0 {
		t.Fatal("nothing tried")
	}
	t.Logf("%d bad requests refused", tried)
}
