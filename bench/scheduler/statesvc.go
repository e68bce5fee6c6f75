package main

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// stateServiceSystem is floor + state with its two state writes made by a
// service in this process, on a connection of its own, which the worker
// asks by request/reply and which answers once the write is acknowledged,
// then emits the event; the worker waits for the running state before
// the task runs, as the mesh worker waits for the start report. The
// service does nothing else (no compare-and-set, no decisions): the
// difference from floor + state is the cost of the two hops a task makes
// through a service, and the difference from the mesh the cost of the
// mesh's own work. A diagnosis row: -systems statesvc.
type stateServiceSystem struct {
	*stateFloorSystem
	svc *nats.Conn
}

const stateServiceSubject = "bench.statesvc"

func newStateService(ctx context.Context, url string) (*stateServiceSystem, error) {
	f, err := newStateFloor(ctx, url)
	if err != nil {
		return nil, err
	}
	s := &stateServiceSystem{stateFloorSystem: f}
	if s.svc, err = nats.Connect(url, nats.Name("bench-scheduler-statesvc")); err != nil {
		s.close()
		return nil, err
	}
	js, err := jetstream.New(s.svc)
	if err == nil {
		_, err = s.svc.Subscribe(stateServiceSubject, func(m *nats.Msg) { s.write(js, m) })
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// write stores the state a request carries and answers after the
// acknowledgement.
func (s *stateServiceSystem) write(js jetstream.JetStream, m *nats.Msg) {
	what := m.Header.Get("what")
	f, err := js.PublishMsgAsync(stateWrite(m.Header.Get("id"), what, m.Data))
	if err != nil {
		return
	}
	go func() {
		if acked(f) {
			_ = s.svc.Publish(eventPrefix+what, m.Data)
			_ = m.Respond(nil)
		}
	}()
}

func (s *stateServiceSystem) name() string { return stateServiceName }

func (s *stateServiceSystem) work(ctx context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	return s.consume(ctx, queue, n, func(msg jetstream.Msg) {
		id := taskID(msg)
		ask := func(what string) bool {
			m := nats.NewMsg(stateServiceSubject)
			m.Header.Set("id", id)
			m.Header.Set("what", what)
			m.Data = state(id, queue, what)
			_, err := s.nc.RequestMsg(m, 10*time.Second)
			return err == nil
		}
		if !ask("running") {
			return
		}
		handle(msg.Data())
		if ask("succeeded") {
			_ = msg.Ack()
		}
	})
}

func (s *stateServiceSystem) close() {
	if s.svc != nil {
		s.svc.Close()
	}
	s.stateFloorSystem.close()
}
