package console

import (
	"context"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/meshkit/mesh/internal/meshstat"
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
	if js, err := jetstream.New(c.nc); err == nil {
		v.Account, v.AccErr = js.AccountInfo(ctx)
	}
	return v, nil
}
