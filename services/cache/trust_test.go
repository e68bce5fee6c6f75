package cache_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/cache"
)

// A forged member takes no key: the heartbeat (weight 3e38,
// interval 20 s) is out of bounds, and one within bounds ("evil2", weight
// 100) does not answer its identity probe on its node subject with its own
// heartbeat, though a responder answers everything on mesh.cache.node.<id>.>
// with "POISONED". Sets and gets through a node and through the ring-aware
// client all reach the genuine nodes.
func TestForgedMemberTakesNoKey(t *testing.T) {
	s := bustest.RunServer(t)
	// Each watcher logs the identity probes left unanswered: the forged
	// member must have failed one everywhere before the requests below.
	var logs [3]probeFailures
	nodes := []node{
		startNode(t, s.URL(), "n0", cache.Config{Logger: zerolog.New(&logs[0])}),
		startNode(t, s.URL(), "n1", cache.Config{Logger: zerolog.New(&logs[1])}),
	}
	c := startClient(t, s.URL(), cache.ClientConfig{Logger: zerolog.New(&logs[2])})
	waitMembers(t, ids(nodes...), rings(c, nodes...)...)
	attacker := bustest.Connect(t, s.URL())
	var poisoned atomic.Int64
	if _, err := attacker.Subscribe("mesh.cache.node.*.>", func(m *nats.Msg) {
		if !strings.HasPrefix(m.Subject, "mesh.cache.node.evil") {
			return
		}
		if !strings.HasSuffix(m.Subject, "."+cache.OpIdentity) {
			poisoned.Add(1)
		}
		_ = m.Respond([]byte(`{"found":true,"value":"POISONED","stored":true,"copies":2}`))
	}); err != nil {
		t.Fatal(err)
	}
	started := time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")
	beat := func() {
		for _, msg := range []string{
			fmt.Sprintf(`{"id":"evil","weight":3e38,"version":"0.1.0","started":%q,"interval_ms":20000}`, started),
			fmt.Sprintf(`{"id":"evil2","weight":100,"version":"0.1.0","started":%q,"interval_ms":%d}`, started, hb.Milliseconds()),
		} {
			id := msg[7 : strings.IndexByte(msg[7:], '"')+7]
			if err := attacker.Publish("mesh.heartbeat.cache."+id, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Beat until every watcher has found that evil2 does not answer its
	// identity probe.
	deadline := time.Now().Add(patience)
	for i := range logs {
		for logs[i].count("evil2") == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("watcher %d never logged evil2's identity probe as unanswered", i)
			}
			beat()
			time.Sleep(hb) // the forger's heartbeat interval
		}
	}
	nc := bustest.Connect(t, s.URL())
	for i := range 50 {
		key := fmt.Sprintf("k%d", i)
		if i%2 == 0 {
			if err := c.Set(ctx(t), key, []byte("genuine"), 0); err != nil {
				t.Fatal(err)
			}
		} else if _, err := bus.Request[cache.SetRequest, cache.SetReply](ctx(t), nc, cache.SubjectSet, cache.SetRequest{Key: key, Value: []byte("genuine")}); err != nil {
			t.Fatal(err)
		}
		beat()
	}
	for i := range 50 {
		key := fmt.Sprintf("k%d", i)
		v, err := c.Get(ctx(t), key)
		if err != nil || string(v) != "genuine" {
			t.Fatalf("client get %s = %q, %v", key, v, err)
		}
		rep, err := bus.Request[cache.GetRequest, cache.GetReply](ctx(t), nc, cache.SubjectGet, cache.GetRequest{Key: key})
		if err != nil || !rep.Found || string(rep.Value) != "genuine" {
			t.Fatalf("get %s via a node = %+v, %v", key, rep, err)
		}
	}
	if n := poisoned.Load(); n != 0 {
		t.Fatalf("the forged members received %d requests", n)
	}
	for _, r := range rings(c, nodes...) {
		if ms := members(r.Ring()); slices.ContainsFunc(ms, func(id string) bool { return strings.HasPrefix(id, "evil") }) {
			t.Fatalf("a ring has members %v, a forged one among them", ms)
		}
	}
}

// probeFailures counts, per member, the identity probes a watcher logged as
// unanswered (its Logger writes here).
type probeFailures struct {
	mu     sync.Mutex
	failed map[string]int
}

func (p *probeFailures) Write(b []byte) (int, error) {
	var e struct{ Message, Member string }
	if json.Unmarshal(b, &e) == nil && e.Message == "member does not answer its identity probe; not in the ring" {
		p.mu.Lock()
		if p.failed == nil {
			p.failed = map[string]int{}
		}
		p.failed[e.Member]++
		p.mu.Unlock()
	}
	return len(b), nil
}

func (p *probeFailures) count(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed[id]
}
