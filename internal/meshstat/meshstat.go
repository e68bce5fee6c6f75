// Package meshstat gathers what `mesh status` prints and the console's
// overview shows: the running service instances found through the micro
// protocol ($SRV.INFO and $SRV.STATS), summed per service, and the mesh's
// JetStream streams and buckets. It uses only public subjects and the
// caller's connection.
package meshstat

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// Service sums up the instances of one service.
type Service struct {
	Name      string   `json:"name"`
	Instances int      `json:"instances"`
	Versions  []string `json:"versions"`
	Requests  int      `json:"requests"`
	Errors    int      `json:"errors"`
	AvgMs     float64  `json:"avg_ms"`
}

// Stream is one of the mesh's streams or KV buckets.
type Stream struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"` // stream or kv
	Subjects []string `json:"subjects"`
	Messages uint64   `json:"messages"`
	Bytes    uint64   `json:"bytes"`
	Replicas int      `json:"replicas"`
}

// Status is the state of a mesh as seen from one connection.
type Status struct {
	Server   string    `json:"server"`
	Services []Service `json:"services"`
	Streams  []Stream  `json:"streams"`
	// Instances are the answers of every instance, for callers that show
	// them one by one (sorted by service name, then id).
	Instances []bus.Instance `json:"-"`
}

// Discovery bounds: the whole discovery, and the quiet time after the last
// answer that ends it.
const (
	DiscoverTimeout = 2 * time.Second
	DiscoverQuiet   = 300 * time.Millisecond
)

// Gather asks every service instance for its info and stats and lists the
// mesh's streams (MESH_*) and buckets (KV_MESH_*).
func Gather(ctx context.Context, nc *nats.Conn) (Status, error) {
	st := Status{Server: nc.ConnectedServerName() + " " + nc.ConnectedServerVersion() + " at " + nc.ConnectedUrlRedacted()}
	dctx, dcancel := context.WithTimeout(ctx, DiscoverTimeout)
	instances, err := bus.Discover(dctx, nc, "", DiscoverQuiet)
	dcancel()
	if err != nil {
		return st, err
	}
	st.Instances = instances
	st.Services = Summarize(instances)
	st.Streams, err = Streams(ctx, nc)
	return st, err
}

// Summarize sums the instances' figures per service, sorted by name.
func Summarize(instances []bus.Instance) []Service {
	byName := map[string]*Service{}
	total := map[string]time.Duration{}
	for _, in := range instances {
		s := byName[in.Info.Name]
		if s == nil {
			s = &Service{Name: in.Info.Name}
			byName[in.Info.Name] = s
		}
		s.Instances++
		if !slices.Contains(s.Versions, in.Info.Version) {
			s.Versions = append(s.Versions, in.Info.Version)
		}
		for _, e := range in.Stats.Endpoints {
			s.Requests += e.NumRequests
			s.Errors += e.NumErrors
			total[s.Name] += e.ProcessingTime
		}
	}
	out := []Service{}
	for _, s := range byName {
		if s.Requests > 0 {
			s.AvgMs = float64(total[s.Name].Microseconds()) / 1000 / float64(s.Requests)
		}
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Streams lists the mesh's streams and KV buckets, sorted by name (a
// bucket without its KV_ prefix).
func Streams(ctx context.Context, nc *nats.Conn) ([]Stream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	var out []Stream
	lister := js.ListStreams(ctx)
	for info := range lister.Info() {
		kind := "stream"
		switch {
		case strings.HasPrefix(info.Config.Name, "KV_MESH_"):
			kind = "kv"
		case !strings.HasPrefix(info.Config.Name, "MESH_"):
			continue
		}
		out = append(out, Stream{
			Name: strings.TrimPrefix(info.Config.Name, "KV_"), Kind: kind, Subjects: info.Config.Subjects,
			Messages: info.State.Msgs, Bytes: info.State.Bytes, Replicas: info.Config.Replicas,
		})
	}
	if err := lister.Err(); err != nil && err != jetstream.ErrEndOfData {
		return out, fmt.Errorf("listing streams: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
