package main

import (
	"context"
	"fmt"
	"github.com/meshkit/mesh/bench/internal/load"
	"github.com/meshkit/mesh/bench/internal/redisbench"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

const (
	subjectBus       = "bench.transport.bus"
	subjectBusInline = "bench.transport.bus-inline"
	subjectRaw       = "bench.transport.raw"
	redisKey         = "bench:transport:value"
	timeout          = bus.DefaultTimeout // per request, the same for every system
)

// Echo is the body of the bus echo request and reply.
type Echo struct {
	Data []byte `json:"data"`
}

// connect opens one NATS connection the way every mesh process does.
func connect(ctx context.Context, url, name string) (*nats.Conn, error) {
	return bus.Connect(ctx, bus.Options{URL: url, Name: name})
}

// serveRaw answers subjectRaw on srv with plain nats.go: the request's data
// is the reply.
func serveRaw(srv *nats.Conn) error {
	_, err := srv.QueueSubscribe(subjectRaw, "q", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err == nil {
		err = srv.Flush()
	}
	if err != nil {
		return fmt.Errorf("raw echo: %w", err)
	}
	return nil
}

func echo(_ context.Context, req *Echo) (*Echo, error) { return req, nil }

// serveBus answers subjectBus and subjectBusInline on srv with a bus.Service
// whose endpoints return the decoded request: the first on the service's
// workers (how every handler that may block runs), the second Inline, in the
// subscription's callback (for handlers that answer from memory).
func serveBus(ctx context.Context, srv *nats.Conn) (*bus.Service, error) {
	svc, err := bus.NewService(srv, bus.Config{
		Name:    "bench_echo",
		Version: "1.0.0",
		Endpoints: []bus.Endpoint{{
			Name:    "echo",
			Subject: subjectBus,
			Handler: bus.Typed(echo),
		}, {
			Name:    "echo-inline",
			Subject: subjectBusInline,
			Handler: bus.Typed(echo),
			Inline:  true,
		}},
	})
	if err == nil {
		err = svc.Start(ctx)
	}
	if err == nil {
		err = srv.Flush()
	}
	if err != nil {
		return nil, fmt.Errorf("bus echo: %w", err)
	}
	return svc, nil
}

// rawClient calls subject with nc.Request; worker i uses connection i mod
// len(conns).
func rawClient(name string, conns []*nats.Conn, subject string, body []byte) load.Target {
	return load.Target{Name: name, Call: func(_ context.Context, i int) error {
		m, err := conns[i%len(conns)].Request(subject, body, timeout)
		if err != nil {
			return err
		}
		return checkLen(len(m.Data), len(body))
	}}
}

// busClient calls subject with bus.Request in msgpack. Like rawClient, it
// bounds each request by timeout alone: bus.Request applies DefaultTimeout
// to a context without a deadline.
func busClient(name string, conns []*nats.Conn, subject string, payload []byte) load.Target {
	req := Echo{Data: payload}
	return load.Target{Name: name, Call: func(_ context.Context, i int) error {
		resp, err := bus.Request[Echo, Echo](context.Background(), conns[i%len(conns)], subject, req)
		if err != nil {
			return err
		}
		return checkLen(len(resp.Data), len(payload))
	}}
}

// redisGet stores the payload under one key and returns GETs of it, over a
// pool of poolSize connections.
func redisGet(ctx context.Context, addr string, poolSize int, payload []byte) (load.Target, *redis.Client, error) {
	rdb := redisbench.Client(addr, poolSize, timeout)
	if err := rdb.Set(ctx, redisKey, payload, 0).Err(); err != nil {
		rdb.Close()
		return load.Target{}, nil, fmt.Errorf("redis %s: %w", addr, err)
	}
	return load.Target{Name: "redis GET", Call: func(ctx context.Context, _ int) error {
		b, err := rdb.Get(ctx, redisKey).Bytes()
		if err != nil {
			return err
		}
		return checkLen(len(b), len(payload))
	}}, rdb, nil
}

func checkLen(got, want int) error {
	if got != want {
		return fmt.Errorf("reply of %d bytes, want %d", got, want)
	}
	return nil
}
