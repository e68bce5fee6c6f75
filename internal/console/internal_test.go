package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"

	"errors"
	"github.com/nats-io/nats.go"
	"strings"
	"testing"
	"time"

	"github.com/meshkit/mesh/internal/meshstat"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/scheduler"
)

func TestEventFilter(t *testing.T) {
	ev := func(subject, data string) event { return event{Subject: subject, Data: []byte(data)} }
	cases := []struct {
		filter string
		ev     event
		want   bool
	}{
		{"", ev("mesh.events.task.queued", `{}`), true},
		{"task.*", ev("mesh.events.task.queued", `{}`), true},
		{"task.*", ev("mesh.events.lock.acquired", `{}`), false},
		{"mesh.events.lock.>", ev("mesh.events.lock.acquired", `{}`), true},
		{"lock.>", ev("mesh.events.lock", `{}`), false},
		{"mesh.events.task.queued", ev("mesh.events.task.queued.x", `{}`), false},
		{"reports ALICE", ev("mesh.events.lock.acquired", `{"name":"reports","owner":"alice"}`), true},
		{"reports bob", ev("mesh.events.lock.acquired", `{"name":"reports","owner":"alice"}`), false},
	}
	for _, c := range cases {
		match, err := eventFilter(c.filter)
		if err != nil {
			t.Fatalf("%q: %v", c.filter, err)
		}
		if got := match(c.ev); got != c.want {
			t.Errorf("filter %q on %s: %v, want %v", c.filter, c.ev.Subject, got, c.want)
		}
	}
	for _, bad := range []string{"task.>.x", "mesh..x", "*."} {
		if _, err := eventFilter(bad); err == nil {
			t.Errorf("filter %q accepted", bad)
		}
	}
}

func TestHubKeepsTheLastEvents(t *testing.T) {
	h := newHub(3)
	ch, cancel := h.follow(10, func(ev event) bool { return ev.Name == "b" })
	defer cancel()
	for _, n := range []string{"a", "b", "c", "d", "b"} {
		h.receive(natsMsg("mesh.events.lock.acquired", `{"type":"lock.acquired","data":{"name":"`+n+`"}}`))
	}
	all := h.recent(10, func(event) bool { return true })
	if len(all) != 3 || all[0].Name != "c" || all[2].Name != "b" || all[2].Seq != 5 {
		t.Fatalf("recent = %+v", all)
	}
	if len(ch) != 2 {
		t.Fatalf("followed %d events, want 2", len(ch))
	}
}

func TestSamplerSeriesAndChart(t *testing.T) {
	s := newSampler(&Console{cfg: Config{SampleEvery: time.Second}}, 3)
	t0 := time.Now().Add(-10 * time.Second)
	for i := range 5 {
		st := meshstat.Status{Services: []meshstat.Service{{Name: "lock", Requests: 10 * i}}}
		q := []scheduler.QueueInfo{{Name: "emails", Depth: uint64(100 - i)}}
		cs := cache.StatsReply{Nodes: []cache.NodeStats{{Node: "n1", Hits: int64(3 * i), Misses: int64(i)}}}
		s.record(t0.Add(time.Duration(i)*time.Second), st, nil, q, nil, cs, nil)
	}
	s.record(t0.Add(5*time.Second), meshstat.Status{}, errors.New("away"), nil, errors.New("away"), cache.StatsReply{}, errors.New("away"))
	rates := s.rateChart().Series
	if len(rates) != 1 || len(rates[0].Points) != 3 || rates[0].Points[2].V != 10 {
		t.Fatalf("rates = %+v", rates)
	}
	depths := s.depthChart().Series
	if len(depths) != 1 || depths[0].Points[2].V != 96 {
		t.Fatalf("depths = %+v", depths)
	}
	hits := s.hitChart().Series
	if len(hits) != 1 || hits[0].Points[2].V != 0.75 {
		t.Fatalf("hits = %+v", hits)
	}
	svg := string(svgChart(chart{Title: "Queue <depth>", Series: depths, Span: time.Minute}))
	for _, want := range []string{"<svg", "<polyline", "Queue &lt;depth&gt;", "emails <b>96</b>"} {
		if !strings.Contains(svg, want) {
			t.Fatalf("chart lacks %q:\n%s", want, svg)
		}
	}
	if empty := string(svgChart(chart{Title: "x", Span: time.Hour})); !strings.Contains(empty, "no samples yet") {
		t.Fatalf("empty chart: %s", empty)
	}
}

func TestBackTo(t *testing.T) {
	for in, want := range map[string]string{
		"/scheduler?queue=a&msg=x": "/scheduler?queue=a",
		"//evil.example/":          "/",
		"https://evil.example/":    "/",
		"/locks?err=1":             "/locks",
		"":                         "/",
	} {
		r := httptestRequest("back=" + urlQueryEscape(in))
		if got := backTo(r); got != want {
			t.Errorf("backTo(%q) = %q, want %q", in, got, want)
		}
	}
}

func natsMsg(subject, data string) *nats.Msg { return &nats.Msg{Subject: subject, Data: []byte(data)} }

func httptestRequest(form string) *http.Request {
	r := httptest.NewRequest("POST", "/x", strings.NewReader(form))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return r
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

func TestTaskListKeptWhileNoTaskEvent(t *testing.T) {
	c := &Console{cfg: Config{TaskListEvery: time.Millisecond}, events: newHub(4)}
	read := time.Now()
	time.Sleep(5 * time.Millisecond)
	if !c.taskListValid(read) {
		t.Fatal("a list older than TaskListEvery was dropped though no task event came")
	}
	c.events.receive(natsMsg("mesh.events.lock.acquired", `{}`))
	if !c.taskListValid(read) {
		t.Fatal("a lock event dropped the task list")
	}
	c.events.receive(natsMsg("mesh.events.task.queued", `{}`))
	if c.taskListValid(read) {
		t.Fatal("a task list older than TaskListEvery was kept after a task event")
	}
	if !c.taskListValid(time.Now()) {
		t.Fatal("a fresh list was dropped")
	}
	if c.taskListValid(time.Now().Add(-2 * taskListStale)) {
		t.Fatal("a list was kept past taskListStale")
	}
}
