package bus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/goleak"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type greetReq struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func (r *greetReq) Validate() error {
	if r.Name == "" {
		return errors.New("name is required")
	}
	return nil
}

type greetResp struct {
	Greeting string   `json:"greeting"`
	Stamp    bus.Time `json:"stamp"`
}

var errShy = bus.NewError(409, "shy", "too shy to greet")

func greet(_ context.Context, r *greetReq) (*greetResp, error) {
	switch r.Name {
	case "shy":
		return nil, errShy.With("%s will not say hello", r.Name)
	case "panic":
		panic("boom")
	}
	return &greetResp{Greeting: strings.Repeat("hello "+r.Name+" ", max(r.Count, 1)), Stamp: bus.Time{Time: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)}}, nil
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// startService starts a service on its own connection and stops it at cleanup.
func startService(t *testing.T, s *bustest.Server, cfg bus.Config) *bus.Service {
	t.Helper()
	svc, err := bus.NewService(s.Connect(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := svc.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return svc
}

func greeter(t *testing.T) (*bustest.Server, *bus.Service, *nats.Conn) {
	s := bustest.RunServer(t)
	svc := startService(t, s, bus.Config{
		Name: "greeter", Version: "1.0.0", Description: "says hello",
		MaxRequestBytes: 1024,
		Endpoints:       []bus.Endpoint{{Name: "greet", Subject: "test.greet", Handler: bus.Typed(greet)}},
	})
	return s, svc, s.Connect()
}

func TestMsgPackRoundTrip(t *testing.T) {
	_, _, nc := greeter(t)
	resp, err := bus.Request[greetReq, greetResp](ctx(t), nc, "test.greet", greetReq{Name: "ann"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Greeting != "hello ann " || resp.Stamp.String() != "2026-01-02T03:04:05.006Z" {
		t.Fatalf("reply = %+v", resp)
	}
}

// A JSON request (by its first byte or by its header) gets a JSON reply with
// snake_case fields and an RFC 3339 instant with milliseconds.
func TestJSONRequestGetsJSONReply(t *testing.T) {
	_, _, nc := greeter(t)
	for _, m := range []*nats.Msg{
		{Subject: "test.greet", Data: []byte(` {"name":"bob"}`)},
		{Subject: "test.greet", Data: []byte(`{"name":"bob"}`), Header: nats.Header{"Content-Type": []string{"application/json"}}},
	} {
		reply, err := bus.RequestMsg(ctx(t), nc, m)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"greeting":"hello bob ","stamp":"2026-01-02T03:04:05.006Z"}`
		if string(reply.Data) != want {
			t.Fatalf("reply = %s, want %s", reply.Data, want)
		}
	}
}

// A body that is not a msgpack map or nil (text a person typed, a JSON
// array, a bare string) is read as JSON, so its error comes back in JSON;
// a msgpack nil is an empty request.
func TestTypedTextGetsJSONError(t *testing.T) {
	_, _, nc := greeter(t)
	for _, body := range []string{"hello", `["bob"]`, `"bob"`, "42"} {
		reply, err := nc.Request("test.greet", []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Code, Message string }
		if err := json.Unmarshal(reply.Data, &got); err != nil {
			t.Fatalf("%q: reply %q is not JSON: %v", body, reply.Data, err)
		}
		if got.Code != "invalid" || !(strings.HasPrefix(got.Message, "malformed json request") || strings.HasPrefix(got.Message, "request: expected an object, got ")) ||
			!errors.Is(bus.ReplyError(reply), bus.ErrInvalid) {
			t.Fatalf("%q: reply %q, want a malformed json request", body, reply.Data)
		}
	}
	_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.greet", Data: []byte{0xc0}})
	var e *bus.Error
	if !errors.As(err, &e) || e.Message != "name is required" {
		t.Fatalf("a msgpack nil: %v, want the empty request's validation error", err)
	}
}

func TestCodedErrors(t *testing.T) {
	_, svc, nc := greeter(t)
	cases := []struct {
		name   string
		data   []byte
		status int
		code   string
		is     error
	}{
		{"service sentinel", []byte(`{"name":"shy"}`), 409, "shy", errShy},
		{"malformed json", []byte(`{"name":`), 400, "invalid", bus.ErrInvalid},
		{"malformed msgpack", []byte{0x81, 0xa4, 'n'}, 400, "invalid", bus.ErrInvalid},
		{"wrong type", []byte(`{"name":42}`), 400, "invalid", bus.ErrInvalid},
		{"validation", []byte(`{"count":2}`), 400, "invalid", bus.ErrInvalid},
		{"too large", []byte(`{"name":"` + strings.Repeat("x", 2000) + `"}`), 413, "too_large", bus.ErrTooLarge},
		{"panic", []byte(`{"name":"panic"}`), 500, "internal", bus.ErrInternal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.greet", Data: c.data})
			var e *bus.Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want a coded error", err)
			}
			if e.Status != c.status || e.Code != c.code || e.Message == "" {
				t.Fatalf("err = %+v, want %d %s", e, c.status, c.code)
			}
			if !errors.Is(err, c.is) {
				t.Fatalf("errors.Is(%v, %v) = false", err, c.is)
			}
		})
	}
	// The service survived all of it and counted each error.
	if _, err := bus.Request[greetReq, greetResp](ctx(t), nc, "test.greet", greetReq{Name: "ann"}); err != nil {
		t.Fatal(err)
	}
	st := svc.Stats().Endpoints[0]
	if st.NumRequests != len(cases)+1 || st.NumErrors != len(cases) || !strings.HasPrefix(st.LastError, "internal") {
		t.Fatalf("stats = %+v", st)
	}
}

// The error reply carries micro's headers and a JSON body for a JSON request.
func TestErrorWireFormat(t *testing.T) {
	_, _, nc := greeter(t)
	reply, err := nc.RequestWithContext(ctx(t), "test.greet", []byte(`{"name":"shy"}`))
	if err != nil {
		t.Fatal(err)
	}
	if reply.Header.Get(micro.ErrorCodeHeader) != "409" || reply.Header.Get(micro.ErrorHeader) != "shy will not say hello" {
		t.Fatalf("headers = %v", reply.Header)
	}
	if string(reply.Data) != `{"code":"shy","message":"shy will not say hello"}` {
		t.Fatalf("body = %s", reply.Data)
	}
}

func TestErrorIs(t *testing.T) {
	remote := &bus.Error{Status: 409, Code: "shy", Message: "other text"}
	if !errors.Is(remote, errShy) || !errors.Is(remote, bus.ErrConflict) {
		t.Fatal("a remote error must match its sentinel and its status")
	}
	if errors.Is(remote, bus.ErrNotFound) || errors.Is(remote, bus.NewError(409, "other", "x")) {
		t.Fatal("matched the wrong error")
	}
	if errors.Is(bus.ErrConflict, errShy) {
		t.Fatal("a generic error must not match a specific one")
	}
}

func TestNoResponders(t *testing.T) {
	s := bustest.RunServer(t)
	_, err := bus.Request[greetReq, greetResp](ctx(t), s.Connect(), "test.nobody", greetReq{Name: "x"})
	if !errors.Is(err, bus.ErrUnavailable) || !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("err = %v", err)
	}
}

func TestRequestTimeout(t *testing.T) {
	s := bustest.RunServer(t)
	block := make(chan struct{})
	defer close(block)
	startService(t, s, bus.Config{Name: "slow", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "wait", Subject: "test.wait",
		Handler: func(ctx context.Context, r *bus.Call) { <-block; r.Reply(nil, nil) },
	}}})
	c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := bus.Request[greetReq, greetResp](c, s.Connect(), "test.wait", greetReq{})
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

// Handlers of one endpoint run at once, up to MaxConcurrent and no more.
func TestHandlersRunConcurrently(t *testing.T) {
	s := bustest.RunServer(t)
	const limit = 4
	var running, peak atomic.Int32
	arrived := make(chan struct{}, 2*limit)
	release := make(chan struct{})
	startService(t, s, bus.Config{Name: "conc", Version: "1.0.0", MaxConcurrent: limit, Endpoints: []bus.Endpoint{{
		Name: "work", Subject: "test.work",
		Handler: func(ctx context.Context, r *bus.Call) {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			arrived <- struct{}{}
			<-release
			running.Add(-1)
			r.Reply(map[string]int{"ok": 1}, nil)
		},
	}}})
	nc := s.Connect()
	var wg sync.WaitGroup
	errs := make(chan error, 2*limit)
	for range 2 * limit {
		wg.Go(func() {
			_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.work", Data: []byte("{}")})
			errs <- err
		})
	}
	for range limit { // limit handlers are in flight at the same time
		<-arrived
	}
	select {
	case <-arrived:
		t.Fatal("more handlers than MaxConcurrent ran at once")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if peak.Load() != limit {
		t.Fatalf("peak concurrency = %d, want %d", peak.Load(), limit)
	}
}

// `nats micro` discovery: ping, info and stats answer on $SRV subjects with
// micro's own types.
func TestDiscovery(t *testing.T) {
	_, svc, nc := greeter(t)
	if _, err := bus.Request[greetReq, greetResp](ctx(t), nc, "test.greet", greetReq{Name: "ann"}); err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	get(t, nc, "$SRV.INFO.greeter", &info)
	if info.Type != micro.InfoResponseType || info.ID != svc.ID() || info.Version != "1.0.0" ||
		len(info.Endpoints) != 1 || info.Endpoints[0].Subject != "test.greet" || info.Endpoints[0].QueueGroup != "greeter" {
		t.Fatalf("info = %+v", info)
	}
	var stats micro.Stats
	get(t, nc, "$SRV.STATS.greeter."+svc.ID(), &stats)
	if stats.Type != micro.StatsResponseType || stats.Endpoints[0].NumRequests != 1 || stats.Endpoints[0].ProcessingTime <= 0 {
		t.Fatalf("stats = %+v", stats)
	}
	var ping micro.Ping
	get(t, nc, "$SRV.PING", &ping)
	if ping.Type != micro.PingResponseType || ping.Name != "greeter" {
		t.Fatalf("ping = %+v", ping)
	}
}

func get(t *testing.T, nc *nats.Conn, subject string, v any) {
	t.Helper()
	m, err := nc.RequestWithContext(ctx(t), subject, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(m.Data, v); err != nil {
		t.Fatal(err)
	}
}

// Stop finishes the requests in flight before it returns, and then the
// service no longer answers.
func TestStopFinishesInFlight(t *testing.T) {
	s := bustest.RunServer(t)
	started := make(chan struct{})
	release := make(chan struct{})
	svc, err := bus.NewService(s.Connect(), bus.Config{Name: "drain", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "slow", Subject: "test.slow",
		Handler: func(ctx context.Context, r *bus.Call) {
			close(started)
			<-release
			r.Reply(map[string]bool{"done": true}, nil)
		},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	nc := s.Connect()
	reply := make(chan error, 1)
	go func() {
		_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.slow", Data: []byte("{}")})
		reply <- err
	}()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- svc.Stop(ctx(t)) }()
	select {
	case <-svc.Done():
		t.Fatal("stopped with a request in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if err := <-reply; err != nil {
		t.Fatalf("in-flight request: %v", err)
	}
	<-svc.Done()
	if _, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.slow", Data: []byte("{}")}); !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("after stop: %v", err)
	}
}

// Stop with an expired context cancels the handlers' context.
func TestStopCancelsHandlers(t *testing.T) {
	s := bustest.RunServer(t)
	started := make(chan struct{})
	svc, err := bus.NewService(s.Connect(), bus.Config{Name: "stuck", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "stuck", Subject: "test.stuck",
		Handler: func(ctx context.Context, r *bus.Call) {
			close(started)
			<-ctx.Done()
			r.Reply(nil, ctx.Err())
		},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	nc := s.Connect()
	go func() { _, _ = nc.Request("test.stuck", []byte("{}"), 5*time.Second) }()
	<-started
	c, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := svc.Stop(c); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop = %v", err)
	}
	<-svc.Done()
}

func TestConfigValidation(t *testing.T) {
	s := bustest.RunServer(t)
	nc := s.Connect()
	h := bus.Typed(greet)
	for _, cfg := range []bus.Config{
		{Name: "bad name", Version: "1.0.0"},
		{Name: "ok", Version: "v1"},
		{Name: "ok", Version: "1.0.0", Endpoints: []bus.Endpoint{{Name: "a", Subject: "x", Handler: h}, {Name: "a", Subject: "y", Handler: h}}},
		{Name: "ok", Version: "1.0.0", Endpoints: []bus.Endpoint{{Name: "a", Subject: "x..y", Handler: h}}},
		{Name: "ok", Version: "1.0.0", Endpoints: []bus.Endpoint{{Name: "a", Subject: "x.>.y", Handler: h}}},
		{Name: "ok", Version: "1.0.0", Endpoints: []bus.Endpoint{{Name: "a", Subject: "x"}}},
		{Name: "ok", Version: "1.0.0", Endpoints: []bus.Endpoint{{Name: "a", Subject: "x", Handler: func(*bus.Call) {}}}},
	} {
		if _, err := bus.NewService(nc, cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

func TestEvents(t *testing.T) {
	s := bustest.RunServer(t)
	nc := s.Connect()
	js := s.JetStream()
	st, err := bus.EnsureEventStream(ctx(t), js, bus.EventStreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := st.Info(ctx(t)); info.Config.MaxAge != 24*time.Hour {
		t.Fatalf("max age = %v", info.Config.MaxAge)
	}
	sub, err := nc.SubscribeSync("mesh.events.>")
	if err != nil {
		t.Fatal(err)
	}
	ev := bus.NewEvents(nc, "lock", "inst1")
	if err := ev.Emit("acquired", map[string]any{"name": "a", "token": 7}); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Type, Time, Source string
		Data               map[string]any
	}
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	if m.Subject != "mesh.events.lock.acquired" || got.Type != "lock.acquired" || got.Source != "inst1" || got.Data["token"] != 7.0 {
		t.Fatalf("event %s = %+v", m.Subject, got)
	}
	if _, err := time.Parse(time.RFC3339, got.Time); err != nil {
		t.Fatal(err)
	}
	// The stream keeps it (stored after the subscriber may have it: the
	// publish is not acknowledged, so wait for the stream to deliver it).
	cons, err := st.OrderedConsumer(ctx(t), jetstream.OrderedConsumerConfig{FilterSubjects: []string{"mesh.events.lock.acquired"}})
	if err != nil {
		t.Fatal(err)
	}
	if sm, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil || !bytes.Equal(sm.Data(), m.Data) {
		t.Fatalf("event not in %s: %v", bus.EventStream, err)
	}
}

func TestConnect(t *testing.T) {
	s := bustest.RunServer(t)
	nc, err := bus.Connect(ctx(t), bus.Options{URL: s.URL(), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.IsConnected() {
		t.Fatal("not connected")
	}
	// No server there: fails at once without Retry, at ctx's end with it.
	if _, err := bus.Connect(ctx(t), bus.Options{URL: "nats://127.0.0.1:1"}); err == nil {
		t.Fatal("connected to nothing")
	}
	c, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := bus.Connect(c, bus.Options{URL: "nats://127.0.0.1:1", Retry: true}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if _, err := bus.Connect(ctx(t), bus.Options{URL: s.URL(), TLSCert: "x"}); err == nil {
		t.Fatal("cert without key accepted")
	}
}

// With InboxPrefix, a user allowed to subscribe to its own inboxes only
// gets its replies; without it, the same user gets none.
func TestInboxPrefix(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, Users: []*server.User{
		{Username: "svc", Password: "p"},
		{Username: "app", Password: "p", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"test.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_app.>"}},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("server not ready")
	}
	svc, err := bus.Connect(ctx(t), bus.Options{URL: ns.ClientURL(), User: "svc", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := svc.Subscribe("test.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := svc.Flush(); err != nil {
		t.Fatal(err)
	}
	app, err := bus.Connect(ctx(t), bus.Options{URL: ns.ClientURL(), User: "app", Password: "p", InboxPrefix: "_INBOX_app"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if in := app.NewInbox(); !strings.HasPrefix(in, "_INBOX_app.") {
		t.Fatalf("inbox %s", in)
	}
	if m, err := app.Request("test.echo", []byte("hi"), 5*time.Second); err != nil || string(m.Data) != "hi" {
		t.Fatalf("request with the prefix: %v", err)
	}
	plain, err := bus.Connect(ctx(t), bus.Options{URL: ns.ClientURL(), User: "app", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Request("test.echo", []byte("hi"), 300*time.Millisecond); err == nil {
		t.Fatal("a reply on _INBOX, which the user may not subscribe to")
	}
	if _, err := bus.Connect(ctx(t), bus.Options{URL: ns.ClientURL(), InboxPrefix: "bad prefix.>"}); err == nil {
		t.Fatal("an invalid prefix was accepted")
	}
}

// A msgpack reply that is a bare number, even one whose byte is also JSON
// whitespace or '{', decodes as the number.
// scribbler stands for a pool whose buffers are reused at once.
type scribbler chan *[]byte

func (p scribbler) Put(b any) {
	buf := b.(*[]byte)
	copy(*buf, "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
	p <- buf
}

// A pooled reply goes out as it is, and its buffer goes back to the pool
// once, after the reply has left: reusing it at once changes nothing sent.
func TestPooledReply(t *testing.T) {
	s := bustest.RunServer(t)
	pool := make(scribbler, 4)
	made := make(chan *[]byte, 4)
	startService(t, s, bus.Config{Name: "pooled", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "p", Subject: "test.pooled", Inline: true,
		Handler: func(_ context.Context, r *bus.Call) {
			b := []byte("reply to " + string(r.Data()))
			made <- &b
			r.ReplyPooled(&b, pool)
		},
	}}})
	nc := s.Connect()
	for _, body := range []string{"a", "bb"} {
		m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.pooled", Data: []byte(body)})
		if err != nil || string(m.Data) != "reply to "+body {
			t.Fatalf("reply = %q, %v", m.Data, err)
		}
		select {
		case b := <-pool:
			if b != <-made {
				t.Fatal("another buffer put back")
			}
		case <-ctx(t).Done():
			t.Fatal("the buffer was not put back")
		}
	}
	if len(pool) != 0 {
		t.Fatalf("%d more buffers put back", len(pool))
	}
}

func TestScalarReplies(t *testing.T) {
	s := bustest.RunServer(t)
	startService(t, s, bus.Config{Name: "num", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "num", Subject: "test.num",
		Handler: bus.Typed(func(_ context.Context, n *int) (int, error) { return *n, nil }),
	}}})
	nc := s.Connect()
	for _, n := range []int{0, 9, 10, 13, 32, 123, -1, 1 << 40} {
		got, err := bus.Request[int, int](ctx(t), nc, "test.num", n)
		if err != nil || got != n {
			t.Fatalf("echo of %d = %d, %v", n, got, err)
		}
	}
}

// A body whose header claims a huge string makes msgpack grow its buffer by
// up to 1 MB a call; such decoders must not be pooled, or a stream of small
// malformed requests holds memory without bound.
func TestMalformedBodiesRetainNoMemory(t *testing.T) {
	body := []byte("\x81\xa4name\xdb\xff\xff\xff\xff") // {"name": <a 4 GiB string>}, cut short
	for range 300 {
		var r fuzzReq
		if err := bus.MsgPack.Unmarshal(body, &r); err == nil {
			t.Fatal("decoded a truncated body")
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc > 64<<20 {
		t.Fatalf("%d MB of heap in use after 300 malformed bodies", ms.HeapAlloc>>20)
	}
}

// An Inline endpoint answers in the subscription's callback; a request that
// goes on on a worker (Call.Go) does not hold up the next one, and both are
// counted.
func TestInlineGo(t *testing.T) {
	s := bustest.RunServer(t)
	release := make(chan struct{})
	svc := startService(t, s, bus.Config{Name: "inline", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "op", Subject: "test.inline", Inline: true,
		Handler: func(ctx context.Context, r *bus.Call) {
			switch string(r.Data()) {
			case `{"slow":true}`:
				r.Go(func(ctx context.Context) {
					<-release
					r.Reply(map[string]string{"from": "worker"}, nil)
				})
			case `{"panic":true}`:
				r.Go(func(ctx context.Context) { panic("boom") })
			default:
				r.Reply(map[string]string{"from": "callback"}, nil)
			}
		},
	}}})
	nc := s.Connect()
	slow := make(chan *nats.Msg, 1)
	go func() {
		m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.inline", Data: []byte(`{"slow":true}`)})
		if err != nil {
			t.Error(err)
		}
		slow <- m
	}()
	// The slow request is parked on a worker: a fast one is answered while
	// it waits.
	var fast map[string]string
	get(t, nc, "test.inline", &fast)
	if fast["from"] != "callback" {
		t.Fatalf("fast reply = %v", fast)
	}
	close(release)
	if m := <-slow; m == nil || string(m.Data) != `{"from":"worker"}` {
		t.Fatalf("slow reply = %v", m)
	}
	_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.inline", Data: []byte(`{"panic":true}`)})
	if !errors.Is(err, bus.ErrInternal) {
		t.Fatalf("a panicking continuation: err = %v, want a 500", err)
	}
	st := svc.Stats().Endpoints[0]
	if st.NumRequests != 3 || st.NumErrors != 1 {
		t.Fatalf("stats = %d requests, %d errors; want 3 and 1", st.NumRequests, st.NumErrors)
	}
}

// A LegacyHandler's Deferred reply comes from another goroutine, may
// continue on a worker, and is counted; Stop waits for it; a Deferred that
// panics before replying is a 500.
func TestLegacyDeferred(t *testing.T) {
	s := bustest.RunServer(t)
	later := make(chan func(any, error), 1)
	svc := startService(t, s, bus.Config{Name: "deferred", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "op", Subject: "test.deferred", Inline: true,
		Handler: func(ctx context.Context, m *bus.Msg) (any, error) {
			switch string(m.Data) {
			case `{"panic":true}`:
				return bus.Deferred(func(func(any, error)) { panic("boom") }), nil
			case `{"continue":true}`:
				return bus.Deferred(func(reply func(any, error)) {
					go reply(bus.Continue(func(ctx context.Context) (any, error) {
						return map[string]string{"from": "worker"}, nil
					}), nil)
				}), nil
			}
			return bus.Deferred(func(reply func(any, error)) { later <- reply }), nil
		},
	}}})
	nc := s.Connect()
	got := make(chan *nats.Msg, 1)
	go func() {
		m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.deferred", Data: []byte(`{}`)})
		if err != nil {
			t.Error(err)
		}
		got <- m
	}()
	reply := <-later
	m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.deferred", Data: []byte(`{"continue":true}`)})
	if err != nil || string(m.Data) != `{"from":"worker"}` {
		t.Fatalf("continued reply = %v, %v", m, err)
	}
	_, err = bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.deferred", Data: []byte(`{"panic":true}`)})
	if !errors.Is(err, bus.ErrInternal) {
		t.Fatalf("a panicking Deferred: err = %v, want a 500", err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- svc.Stop(ctx(t)) }()
	served := 3
	for ; ; served++ { // until Stop has unsubscribed and waits for the deferred reply
		_, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.deferred", Data: []byte(`{"continue":true}`)})
		if errors.Is(err, bus.ErrUnavailable) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) before the deferred reply", err)
	default:
	}
	go reply(map[string]string{"from": "callback"}, nil)
	if m := <-got; m == nil || string(m.Data) != `{"from":"callback"}` {
		t.Fatalf("deferred reply = %v", m)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	st := svc.Stats().Endpoints[0]
	if st.NumRequests != served || st.NumErrors != 1 {
		t.Fatalf("stats = %d requests, %d errors; want %d and 1", st.NumRequests, st.NumErrors, served)
	}
}

// A handler that failed because JetStream did not answer replies 503, so
// that a client knows it may retry; any other error is a 500.
func TestStoreAwayIsUnavailable(t *testing.T) {
	if e := bus.AsError(fmt.Errorf("enqueueing: %w", jetstream.ErrNoStreamResponse)); e.Status != 503 {
		t.Fatalf("no response from stream: %d %s, want 503", e.Status, e.Code)
	}
	refused := &jetstream.APIError{Code: 400, ErrorCode: 10054, Description: "message size exceeds maximum allowed"}
	if bus.Unanswered(fmt.Errorf("enqueueing: %w", refused)) || !bus.Unanswered(jetstream.ErrNoStreamResponse) {
		t.Fatal("Unanswered: a refusal is an answer; no response from the stream is not")
	}
	if e := bus.AsError(refused); e.Status != 500 {
		t.Fatalf("a refusal: %d, want 500", e.Status)
	}
	busy := &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}
	if e := bus.AsError(fmt.Errorf("writing: %w", busy)); e.Status != 503 {
		t.Fatalf("JetStream temporarily unavailable: %d, want 503", e.Status)
	}
	if e := bus.AsError(errors.New("boom")); e.Status != 500 {
		t.Fatalf("another error: %d, want 500", e.Status)
	}
	// A handler's own call that ran out of time: its outcome is unknown.
	if e := bus.AsError(fmt.Errorf("writing: %w", context.DeadlineExceeded)); e.Status != 503 {
		t.Fatalf("a deadline: %d, want 503", e.Status)
	}
	// Given explicitly, a timeout stays a timeout.
	if e := bus.AsError(bus.ErrTimeout.With("waited too long")); e.Status != 408 {
		t.Fatalf("ErrTimeout: %d, want 408", e.Status)
	}
}

// RetryNoStream sends a write again while no stream takes it, and not
// past its deadline; any other outcome ends it at once.
func TestRetryNoStream(t *testing.T) {
	ctx := context.Background()
	calls := 0
	err := bus.RetryNoStream(ctx, time.Now().Add(time.Minute), func() error {
		if calls++; calls < 3 {
			return jetstream.ErrNoStreamResponse
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("err %v after %d calls; want nil after 3", err, calls)
	}
	calls = 0
	refused := errors.New("refused")
	if err := bus.RetryNoStream(ctx, time.Now().Add(time.Minute), func() error { calls++; return refused }); err != refused || calls != 1 {
		t.Fatalf("err %v after %d calls; want refused after 1", err, calls)
	}
	calls = 0
	err = bus.RetryNoStream(ctx, time.Now().Add(250*time.Millisecond), func() error { calls++; return nats.ErrNoResponders })
	if !bus.NoStream(err) || calls < 2 || calls > 4 {
		t.Fatalf("err %v after %d calls; want no responders after 2 to 4 (100, 200 ms pauses within 250 ms)", err, calls)
	}
}

// Writes hands each publication's outcome to its callback once: the
// acknowledgement, a refused compare-and-set, or no stream taking it.
func TestWrites(t *testing.T) {
	s := bustest.RunServer(t)
	if _, err := s.JetStream().CreateStream(ctx(t), jetstream.StreamConfig{Name: "W", Subjects: []string{"w.>"}}); err != nil {
		t.Fatal(err)
	}
	w, err := bus.NewWrites(s.Connect(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		ack *jetstream.PubAck
		err error
	}
	write := func(subject string, opts ...jetstream.PublishOpt) outcome {
		got := make(chan outcome, 2)
		w.Publish(nats.NewMsg(subject), func(ack *jetstream.PubAck, err error) { got <- outcome{ack, err} }, opts...)
		o := <-got
		if len(got) > 0 {
			t.Fatalf("%s: a second outcome", subject)
		}
		return o
	}
	if o := write("w.a"); o.err != nil || o.ack.Stream != "W" || o.ack.Sequence != 1 {
		t.Fatalf("first write: %+v, %v", o.ack, o.err)
	}
	var apiErr *jetstream.APIError
	if o := write("w.a", jetstream.WithExpectLastSequencePerSubject(7)); !errors.As(o.err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("a stale compare-and-set: %v, want wrong last sequence", o.err)
	}
	if o := write("elsewhere", jetstream.WithRetryAttempts(0)); !bus.NoStream(o.err) {
		t.Fatalf("no stream: %v", o.err)
	}
}

// A call is answered once: from another goroutine after its handler
// returned, the first answer counts and is sent, the others do nothing, and
// Stop waits for the answer.
func TestCallAnsweredOnce(t *testing.T) {
	s := bustest.RunServer(t)
	calls := make(chan *bus.Call, 1)
	svc := startService(t, s, bus.Config{Name: "once", Version: "1.0.0", Endpoints: []bus.Endpoint{{
		Name: "op", Subject: "test.once", Inline: true,
		Handler: func(_ context.Context, r *bus.Call) { calls <- r },
	}}})
	nc := s.Connect()
	got := make(chan *nats.Msg, 1)
	go func() {
		m, err := bus.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.once", Data: []byte(`{}`)})
		if err != nil {
			t.Error(err)
		}
		got <- m
	}()
	r := <-calls
	stopped := make(chan error, 1)
	go func() { stopped <- svc.Stop(ctx(t)) }()
	pool := make(scribbler, 1)
	var wg sync.WaitGroup
	wg.Go(func() { r.ReplyRaw([]byte(`"first"`)) })
	wg.Wait()
	wg.Go(func() { r.Reply(nil, bus.ErrInternal) })
	wg.Go(func() { b := []byte("x"); r.ReplyPooled(&b, pool) })
	wg.Wait()
	if m := <-got; m == nil || string(m.Data) != `"first"` {
		t.Fatalf("reply = %v", m)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if len(pool) != 1 {
		t.Fatal("the buffer of a second answer was not put back")
	}
	st := svc.Stats().Endpoints[0]
	if st.NumRequests != 1 || st.NumErrors != 0 {
		t.Fatalf("stats = %d requests, %d errors; want 1 and 0", st.NumRequests, st.NumErrors)
	}
}

// A compare-and-set refused for a stale sequence or, on a cluster, for a
// write in flight is a conflict; only the latter is in flight; other
// JetStream errors are neither.
func TestConflict(t *testing.T) {
	stale := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}
	inFlight := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant}
	other := &jetstream.APIError{Code: 400, ErrorCode: 10054}
	for _, tc := range []struct {
		err                error
		conflict, inFlight bool
	}{
		{fmt.Errorf("release: %w", stale), true, false},
		{fmt.Errorf("release: %w", inFlight), true, true},
		{other, false, false},
		{errors.New("10071"), false, false},
		{nil, false, false},
	} {
		if bus.Conflict(tc.err) != tc.conflict || bus.InFlight(tc.err) != tc.inFlight {
			t.Errorf("%v: Conflict %v, InFlight %v; want %v, %v", tc.err, bus.Conflict(tc.err), bus.InFlight(tc.err), tc.conflict, tc.inFlight)
		}
	}
}
