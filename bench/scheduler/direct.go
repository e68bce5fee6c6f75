package main

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/services/scheduler"
)

// meshDirectName is the row of the mesh scheduler whose Client publishes
// immediate tasks straight to JetStream (-systems mesh-direct).
const meshDirectName = "mesh scheduler (direct)"

// newClient is the Client of the mesh rows: the service path, or the
// direct submit (scheduler.WithDirect) when direct.
func newClient(nc *nats.Conn, direct bool) *scheduler.Client {
	if direct {
		return scheduler.NewClient(nc, scheduler.WithDirect())
	}
	return scheduler.NewClient(nc)
}

// meshDirectSystem is the mesh scheduler with the direct submit: the
// enqueue scenarios submit through the direct Client. The service path
// and the batches (SubmitMany asks the service) are the mesh row's and
// are not measured again.
type meshDirectSystem struct{ m *meshSystem }

func newMeshDirect(ctx context.Context, url string) (*meshDirectSystem, error) {
	m, err := newMesh(ctx, url, scheduler.Config{}, true)
	if err != nil {
		return nil, err
	}
	return &meshDirectSystem{m}, nil
}

func (d *meshDirectSystem) name() string { return meshDirectName }

func (d *meshDirectSystem) enqueue(ctx context.Context, queue string, payload []byte, runAt time.Time) error {
	return d.m.enqueue(ctx, queue, payload, runAt)
}

func (d *meshDirectSystem) work(ctx context.Context, queue string, n int, handle func([]byte)) (func(), error) {
	return d.m.work(ctx, queue, n, handle)
}

func (d *meshDirectSystem) close() { d.m.close() }
