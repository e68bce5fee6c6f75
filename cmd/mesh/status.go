package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/meshkit/mesh/internal/meshstat"
)

type statusCmd struct {
	JSON bool `help:"Print JSON instead of tables."`
}

// The figures come from meshstat, which the console's overview shares.
type (
	status        = meshstat.Status
	serviceStatus = meshstat.Service
)

func (c *statusCmd) Run(a *app) error {
	ctx, cancel := context.WithTimeout(context.Background(), a.conn.Timeout)
	defer cancel()
	nc, err := a.connect("mesh status")
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := meshstat.Gather(ctx, nc)
	if err != nil {
		return err
	}
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
