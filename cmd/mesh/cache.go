package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/cache"
)

type cacheCmd struct {
	Get   cacheGetCmd   `cmd:"" help:"Print the value of a key (exit status 1 when it is missing)."`
	Set   cacheSetCmd   `cmd:"" help:"Store a value (- reads it from stdin)."`
	Del   cacheDelCmd   `cmd:"" help:"Delete a key."`
	Stats cacheStatsCmd `cmd:"" help:"Show each node's figures and their sum."`
}

// cacheRequest sends one request to any cache node, which forwards it to
// the key's owner: a command makes one request, so learning the ring first
// would cost more than the hop it saves.
func cacheRequest[Req, Resp any](a *app, op string, req Req) (resp Resp, err error) {
	err = a.once("mesh cache "+op, func(ctx context.Context, nc *nats.Conn) error {
		resp, err = bus.Request[Req, Resp](ctx, nc, "mesh.cache."+op, req)
		return err
	})
	return resp, err
}

type cacheGetCmd struct {
	Key  string `arg:"" help:"The key."`
	JSON bool   `help:"Print the reply as JSON (with the TTL left)."`
}

func (c *cacheGetCmd) Run(a *app) error {
	r, err := cacheRequest[cache.GetRequest, cache.GetReply](a, cache.OpGet, cache.GetRequest{Key: c.Key})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r)
	}
	if !r.Found {
		return cache.ErrNotFound.With("%q not found", c.Key)
	}
	_, err = fmt.Fprintf(a.out, "%s\n", r.Value)
	return err
}

type cacheSetCmd struct {
	TTL   time.Duration `default:"0s" help:"Time to live (0: until evicted or deleted)."`
	Key   string        `arg:"" help:"The key."`
	Value string        `arg:"" help:"The value; - reads it from stdin."`
}

func (c *cacheSetCmd) Run(a *app) error {
	value := []byte(c.Value)
	if c.Value == "-" {
		var err error
		if value, err = io.ReadAll(os.Stdin); err != nil {
			return err
		}
	}
	r, err := cacheRequest[cache.SetRequest, cache.SetReply](a, cache.OpSet, cache.SetRequest{Key: c.Key, Value: value, TTLms: c.TTL.Milliseconds()})
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "stored %s (%s)\n", c.Key, plural(r.Copies, "copy", "copies"))
	return nil
}

type cacheDelCmd struct {
	Key string `arg:"" help:"The key."`
}

func (c *cacheDelCmd) Run(a *app) error {
	r, err := cacheRequest[cache.DelRequest, cache.DelReply](a, cache.OpDel, cache.DelRequest{Key: c.Key})
	if err != nil {
		return err
	}
	if r.Deleted {
		fmt.Fprintf(a.out, "deleted %s\n", c.Key)
	} else {
		fmt.Fprintf(a.out, "%s was not there\n", c.Key)
	}
	return nil
}

type cacheStatsCmd struct {
	JSON bool `help:"Print JSON."`
}

func (c *cacheStatsCmd) Run(a *app) error {
	r, err := cacheRequest[cache.StatsRequest, cache.StatsReply](a, cache.OpStats, cache.StatsRequest{})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r)
	}
	w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "NODE\tITEMS\tBYTES\tMAX BYTES\tHITS\tMISSES\tEVICTIONS\tFORWARDS\tHAND-OFFS\tLOADS\tHANDED OFF\tRECEIVED\tUNDER-REPLICATED\tREBALANCED\t")
	row := func(n cache.NodeStats) {
		// Rebalanced: the node has handed off everything for its ring.
		done := "-"
		if n.Node != "total" {
			done = fmt.Sprint(n.Rebalanced != "" && n.Rebalanced == n.Ring && n.UnderReplicated == 0)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", n.Node, n.Items, n.Bytes, n.MaxBytes, n.Hits, n.Misses, n.Evictions, n.Forwards, n.Handoffs, n.Loads, n.HandedOff, n.Received, n.UnderReplicated, done)
	}
	for _, n := range r.Nodes {
		row(n)
	}
	r.Total.Node = "total"
	row(r.Total)
	return w.Flush()
}
