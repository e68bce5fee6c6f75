package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

type statusCmd struct {
	JSON bool `help:"Print JSON instead of tables."`
}

// serviceStatus sums up the instances of one service.
type serviceStatus struct {
	Name      string   `json:"name"`
	Instances int      `json:"instances"`
	Versions  []string `json:"versions"`
	Requests  int      `json:"requests"`
	Errors    int      `json:"errors"`
	AvgMs     float64  `json:"avg_ms"`
}

type streamStatus struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"` // stream or kv
	Subjects []string `json:"subjects"`
	Messages uint64   `json:"messages"`
	Bytes    uint64   `json:"bytes"`
	Replicas int      `json:"replicas"`
}

type status struct {
	Server   string          `json:"server"`
	Services []serviceStatus `json:"services"`
	Streams  []streamStatus  `json:"streams"`
}

func (c *statusCmd) Run(a *app) error {
	ctx, cancel := context.WithTimeout(context.Background(), a.conn.Timeout)
	defer cancel()
	nc, err := a.connect("mesh status")
	if err != nil {
		return err
	}
	defer nc.Close()
	st := status{Server: nc.ConnectedServerName() + " " + nc.ConnectedServerVersion() + " at " + nc.ConnectedUrlRedacted()}

	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	instances, err := bus.Discover(dctx, nc, "", 300*time.Millisecond)
	dcancel()
	if err != nil {
		return err
	}
	byName := map[string]*serviceStatus{}
	total := map[string]time.Duration{}
	for _, in := range instances {
		s := byName[in.Info.Name]
		if s == nil {
			s = &serviceStatus{Name: in.Info.Name}
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
	for _, s := range byName {
		if s.Requests > 0 {
			s.AvgMs = float64(total[s.Name].Microseconds()) / 1000 / float64(s.Requests)
		}
		st.Services = append(st.Services, *s)
	}
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Name < st.Services[j].Name })

	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		kind := "stream"
		switch {
		case strings.HasPrefix(name, "KV_MESH_"):
			kind = "kv"
		case !strings.HasPrefix(name, "MESH_"):
			continue
		}
		s, err := js.Stream(ctx, name)
		if err != nil {
			return err
		}
		info := s.CachedInfo()
		st.Streams = append(st.Streams, streamStatus{
			Name: strings.TrimPrefix(name, "KV_"), Kind: kind, Subjects: info.Config.Subjects,
			Messages: info.State.Msgs, Bytes: info.State.Bytes, Replicas: info.Config.Replicas,
		})
	}
	if err := names.Err(); err != nil && err != jetstream.ErrEndOfData {
		return fmt.Errorf("listing streams: %w", err)
	}
	sort.Slice(st.Streams, func(i, j int) bool { return st.Streams[i].Name < st.Streams[j].Name })

	if c.JSON {
		return a.printJSON(st)
	}
	printStatus(a.out, st)
	return nil
}

func printStatus(out io.Writer, st status) {
	fmt.Fprintf(out, "NATS: %s\n\n", st.Server)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	if len(st.Services) == 0 {
		fmt.Fprintln(w, "No mesh service is running.")
	} else {
		fmt.Fprintln(w, "SERVICE\tINSTANCES\tVERSION\tREQUESTS\tERRORS\tAVG")
		for _, s := range st.Services {
			fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%d\t%.3fms\n", s.Name, s.Instances, strings.Join(s.Versions, ","), s.Requests, s.Errors, s.AvgMs)
		}
	}
	fmt.Fprintln(w)
	if len(st.Streams) == 0 {
		fmt.Fprintln(w, "No mesh stream or bucket.")
	} else {
		fmt.Fprintln(w, "STREAM/BUCKET\tKIND\tSUBJECTS\tMESSAGES\tBYTES\tREPLICAS")
		for _, s := range st.Streams {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\n", s.Name, s.Kind, strings.Join(s.Subjects, " "), s.Messages, s.Bytes, s.Replicas)
		}
	}
	w.Flush()
}
