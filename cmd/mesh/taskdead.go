package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/meshkit/mesh/services/scheduler"
)

type taskDeadCmd struct {
	Ls      taskDeadLsCmd      `cmd:"" help:"List dead tasks, oldest first."`
	Requeue taskDeadRequeueCmd `cmd:"" help:"Run dead tasks again (same id, attempts reset): one id, or --queue Q --all."`
	Rm      taskDeadRmCmd      `cmd:"" help:"Remove dead tasks from the dead letters: one id, or --queue Q --all."`
}

type taskDeadLsCmd struct {
	Queue  string `arg:"" optional:"" help:"Only this queue (default: every queue)."`
	Limit  int    `help:"At most this many (0: 100)."`
	Cursor string `help:"Start after this (the previous page's next cursor)."`
	JSON   bool   `help:"Print JSON."`
}

func (c *taskDeadLsCmd) Run(a *app) error {
	var r scheduler.DeadListReply
	err := a.withTasks("mesh task dead ls", func(ctx context.Context, tasks *scheduler.Client) (err error) {
		r, err = tasks.DeadList(ctx, scheduler.DeadListRequest{Queue: c.Queue, Limit: c.Limit, Cursor: c.Cursor})
		return err
	})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r)
	}
	if len(r.Tasks) == 0 {
		fmt.Fprintln(a.out, "no dead tasks")
		return nil
	}
	w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tQUEUE\tTYPE\tDIED\tPAYLOAD\tLAST ERROR")
	for _, t := range r.Tasks {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d B\t%s\n", t.ID, t.Queue, t.Type, t.DiedAt, t.PayloadBytes, t.LastError)
	}
	if r.NextCursor != "" {
		fmt.Fprintf(w, "more: --cursor %s\t\t\t\t\t\n", r.NextCursor)
	}
	return w.Flush()
}

// deadTarget are the arguments naming dead tasks.
type deadTarget struct {
	ID    string `arg:"" optional:"" help:"Task id."`
	Queue string `help:"With --all: every dead task of this queue."`
	All   bool   `help:"Every dead task of --queue."`
}

func (d deadTarget) request() (scheduler.DeadRequest, error) {
	if (d.ID == "") == (d.Queue == "" || !d.All) {
		return scheduler.DeadRequest{}, errors.New("give a task id, or --queue Q --all")
	}
	return scheduler.DeadRequest{ID: d.ID, Queue: d.Queue, All: d.All}, nil
}

type taskDeadRequeueCmd struct{ deadTarget }

func (c *taskDeadRequeueCmd) Run(a *app) error {
	req, err := c.request()
	if err != nil {
		return err
	}
	return a.withTasks("mesh task dead requeue", func(ctx context.Context, tasks *scheduler.Client) error {
		ids, err := tasks.DeadRequeue(ctx, req)
		for _, id := range ids {
			fmt.Fprintf(a.out, "requeued %s\n", id)
		}
		return err
	})
}

type taskDeadRmCmd struct{ deadTarget }

func (c *taskDeadRmCmd) Run(a *app) error {
	req, err := c.request()
	if err != nil {
		return err
	}
	return a.withTasks("mesh task dead rm", func(ctx context.Context, tasks *scheduler.Client) error {
		ids, err := tasks.DeadDelete(ctx, req)
		for _, id := range ids {
			fmt.Fprintf(a.out, "removed %s\n", id)
		}
		return err
	})
}
