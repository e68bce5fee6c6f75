package cache_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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
	s, nodes, c := cluster(t, 2, cache.Config{})
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
		for _, hb := range []string{
			fmt.Sprintf(`{"id":"evil","weight":3e38,"version":"0.1.0","started":%q,"interval_ms":20000}`, started),
			fmt.Sprintf(`{"id":"evil2","weight":100,"version":"0.1.0","started":%q,"interval_ms":100}`, started),
		} {
			id := hb[7 : strings.IndexByte(hb[7:], '"')+7]
			if err := attacker.Publish("mesh.heartbeat.cache."+id, []byte(hb)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Beat for longer than an identity probe waits (at most 500 ms here).
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(hb) {
		beat()
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
	for _, r := range []interface{ Len() int }{nodeRing{nodes[0]}, nodeRing{nodes[1]}, clientRing{c}} {
		if r.Len() != 2 {
			t.Fatalf("a ring has %d members, want the 2 genuine nodes", r.Len())
		}
	}

}
