package cache

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
)

// Every request sent through replies gets one outcome, as bus.RequestMsg
// would give it: the reply, a coded error, no responders, or a timeout.
func TestReplies(t *testing.T) {
	s := bustest.RunServer(t)
	nc := bustest.Connect(t, s.URL())
	if _, err := nc.Subscribe("test.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe("test.refuse", func(m *nats.Msg) {
		_ = m.RespondMsg(&nats.Msg{Data: []byte(`{"code":"value_too_large","message":"no"}`), Header: nats.Header{
			micro.ErrorCodeHeader: []string{"413"}, micro.ErrorHeader: []string{"no"},
		}})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe("test.silent", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	r, err := newReplies(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	type outcome struct {
		m   *nats.Msg
		err error
	}
	ask := func(subject string) outcome {
		got := make(chan outcome, 2) // a second outcome would fail the test below
		r.send(&nats.Msg{Subject: subject, Data: []byte("hi")}, 200*time.Millisecond, func(m *nats.Msg, err error) { got <- outcome{m, err} })
		o := <-got
		select {
		case again := <-got:
			t.Fatalf("%s: two outcomes: %v, then %v", subject, o, again)
		case <-time.After(300 * time.Millisecond): // past the timeout: no second outcome
		}
		return o
	}
	if o := ask("test.echo"); o.err != nil || string(o.m.Data) != "hi" {
		t.Errorf("echo: %v, %v", o.m, o.err)
	}
	if o := ask("test.refuse"); !errors.Is(o.err, ErrValueTooLarge) {
		t.Errorf("refused: %v, want value_too_large", o.err)
	}
	if o := ask("test.nobody"); !errors.Is(o.err, bus.ErrUnavailable) || !errors.Is(o.err, nats.ErrNoResponders) {
		t.Errorf("no responders: %v", o.err)
	}
	if o := ask("test.silent"); !errors.Is(o.err, bus.ErrTimeout) {
		t.Errorf("silent: %v, want a timeout", o.err)
	}
	r.mu.Lock()
	n := len(r.waiting)
	r.mu.Unlock()
	if n != 0 {
		t.Errorf("%d requests still waiting", n)
	}
}
