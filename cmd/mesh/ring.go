package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
	"github.com/meshkit/mesh/pkg/ring/membership"
	"github.com/meshkit/mesh/services/cache"
)

type ringCmd struct {
	Service string `arg:"" help:"The service whose ring to show, e.g. cache."`
	JSON    bool   `help:"Print JSON instead of a table."`
}

type ringMember struct {
	ID          string   `json:"id"`
	Weight      float64  `json:"weight"`
	Version     string   `json:"version"`
	Started     bus.Time `json:"started"`
	Partitions  int      `json:"partitions"`
	Share       float64  `json:"share"`
	RingVersion string   `json:"ring_version"` // the ring the member routes by
}

type ringStatus struct {
	Service     string       `json:"service"`
	RingVersion string       `json:"ring_version"`
	Partitions  int          `json:"partitions"`
	Members     []ringMember `json:"members"`
}

func (c *ringCmd) Run(a *app) error {
	ctx, cancel := context.WithTimeout(context.Background(), a.conn.Timeout)
	defer cancel()
	nc, err := a.connect("mesh ring")
	if err != nil {
		return err
	}
	defer nc.Close()
	// A one-shot command: the watcher's notes on ring changes are noise here.
	wc := membership.WatcherConfig{Service: c.Service, Logger: a.log.Level(zerolog.WarnLevel)}
	if c.Service == cache.Service {
		// The members the cache routes to: those that answer for their id.
		wc.IdentitySubject = func(id string) string { return cache.NodeSubject(id, cache.OpIdentity) }
	}
	w, err := membership.NewWatcher(nc, wc)
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	defer w.Stop(ctx)
	r := w.Ring()
	owned := primaries(r)
	st := ringStatus{Service: c.Service, RingVersion: membership.FormatVersion(r.Version()), Partitions: r.Partitions(), Members: []ringMember{}}
	for _, m := range w.Members() {
		rm := ringMember{ID: m.ID, Weight: m.Weight, Version: m.Version, Started: m.Started, Partitions: owned[m.ID], RingVersion: m.RingVersion}
		if rm.Weight == 0 {
			rm.Weight = 1
		}
		if st.Partitions > 0 {
			rm.Share = float64(rm.Partitions) / float64(st.Partitions)
		}
		st.Members = append(st.Members, rm)
	}
	if c.JSON {
		return a.printJSON(st)
	}
	if len(st.Members) == 0 {
		fmt.Fprintf(a.out, "No member of %s is sending heartbeats.\n", c.Service)
		return nil
	}
	fmt.Fprintf(a.out, "Ring of %s: version %s, %d members, %d partitions\n\n", c.Service, st.RingVersion, len(st.Members), st.Partitions)
	tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tWEIGHT\tPARTITIONS\tSHARE\tVERSION\tSTARTED\tROUTES BY")
	for _, m := range st.Members {
		routes := m.RingVersion
		if routes == "" {
			routes = "-"
		} else if routes != st.RingVersion {
			routes += " (differs)"
		}
		fmt.Fprintf(tw, "%s\t%g\t%d\t%.1f%%\t%s\t%s\t%s\n", m.ID, m.Weight, m.Partitions, 100*m.Share, m.Version, m.Started, routes)
	}
	return tw.Flush()
}

// primaries counts the partitions each member is the first owner of.
func primaries(r *ring.Ring) map[string]int {
	owned := map[string]int{}
	for p := range r.Partitions() {
		if o := r.PartitionOwners(p, 1); len(o) == 1 {
			owned[o[0]]++
		}
	}
	return owned
}
