package console

import (
	"context"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/meshkit/mesh/internal/meshstat"
	"github.com/meshkit/mesh/services/scheduler"
)

// overviewView is the overview page: services and their instances, the
// NATS server and JetStream usage, the streams and buckets, and the
// request rates.
type overviewView struct {
	Status    meshstat.Status
	Instances []instanceRow
	Servers   []string
	Account   *jetstream.AccountInfo
	AccErr    error
	Rates     chart
	// Paused and Dead are the queues that need someone: paused (with the
	// tasks that wait), and holding dead tasks. QueuesErr: the scheduler
	// did not say.
	Paused, Dead []scheduler.QueueInfo
	QueuesErr    error
}

// instanceRow is one service instance with its endpoints' figures.
type instanceRow struct {
	Name, ID, Version string
	Started           time.Time
	Endpoints         []*micro.EndpointStats
	Requests, Errors  int
	AvgMs             float64
}

func (c *Console) overview(ctx context.Context, _ *http.Request) (any, error) {
	v := &overviewView{Servers: c.nc.Servers(), Rates: c.sampler.rateChart()}
	st, fresh := c.sampler.status(2 * c.cfg.SampleEvery)
	if !fresh {
		var err error
		if st, err = meshstat.Gather(ctx, c.nc); err != nil {
			return v, err
		}
	}
	v.Status = st
	for _, in := range st.Instances {
		row := instanceRow{Name: in.Info.Name, ID: in.Info.ID, Version: in.Info.Version, Started: in.Stats.Started, Endpoints: in.Stats.Endpoints}
		var total time.Duration
		for _, e := range in.Stats.Endpoints {
			row.Requests += e.NumRequests
			row.Errors += e.NumErrors
			total += e.ProcessingTime
		}
		if row.Requests > 0 {
			row.AvgMs = float64(total.Microseconds()) / 1000 / float64(row.Requests)
		}
		v.Instances = append(v.Instances, row)
	}
	// Only a running scheduler is asked: with none, the request would wait
	// for its timeout at every render.
	for _, svc := range st.Services {
		if svc.Name == "scheduler" {
			v.Paused, v.Dead, v.QueuesErr = c.needsAttention(ctx)
			break
		}
	}
	if js, err := jetstream.New(c.nc); err == nil {
		v.Account, v.AccErr = js.AccountInfo(ctx)
	}
	return v, nil
}

// needsAttention returns the queues that are paused and those that hold
// dead tasks: what the overview puts first, with the way to fix it.
func (c *Console) needsAttention(ctx context.Context) (paused, dead []scheduler.QueueInfo, err error) {
	qs, err := c.tasks.Queues(ctx)
	for _, q := range qs {
		if q.Paused {
			paused = append(paused, q)
		}
		if q.Dead > 0 {
			dead = append(dead, q)
		}
	}
	return paused, dead, err
}
