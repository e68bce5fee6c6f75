package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/lock"
)

type lockCmd struct {
	Acquire lockAcquireCmd `cmd:"" help:"Take a lock (or a semaphore slot) and print its token. The lease ends after --ttl unless renewed."`
	Release lockReleaseCmd `cmd:"" help:"Release a lock held with TOKEN."`
	Renew   lockRenewCmd   `cmd:"" help:"Extend the lease held with TOKEN."`
	Inspect lockInspectCmd `cmd:"" help:"Show who holds a lock and who waits."`
	List    lockListCmd    `cmd:"" help:"List the locks (held or waited for)."`
	Run     lockRunCmd     `cmd:"" help:"Hold a lock while a command runs: mesh lock run NAME -- CMD [ARGS...]."`
}

type lockFlags struct {
	TTL   time.Duration `default:"30s" help:"Lease time to live on the server."`
	Owner string        `help:"Who holds it, shown by inspect (default: user@host)."`
	Limit int           `help:"Make the name a semaphore of this many holders."`
}

func (f lockFlags) owner() string {
	if f.Owner != "" {
		return f.Owner
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s@%s pid %d", os.Getenv("USER"), host, os.Getpid())
}

// withLocks runs one request of a command with a lock client, bounded by
// the command timeout.
func (a *app) withLocks(name string, fn func(context.Context, *lock.Client) error) error {
	return a.once(name, func(ctx context.Context, nc *nats.Conn) error { return fn(ctx, lock.NewClient(nc)) })
}

type lockAcquireCmd struct {
	lockFlags
	Wait time.Duration `default:"0s" help:"How long to wait in line for the lock (0: do not wait)."`
	Name string        `arg:"" help:"Lock name."`
	JSON bool          `help:"Print JSON."`
}

func (c *lockAcquireCmd) Run(a *app) error {
	nc, err := a.connect("mesh lock acquire")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.Wait+a.conn.Timeout)
	defer cancel()
	req := lock.AcquireRequest{Name: c.Name, Owner: c.owner(), TTLms: c.TTL.Milliseconds(), WaitMs: c.Wait.Milliseconds(), Limit: c.Limit}
	if dl, ok := ctx.Deadline(); ok {
		req.Deadline = &bus.Time{Time: dl} // a waiter whose command gave up leaves the line
	}
	r, err := bus.Request[lock.AcquireRequest, lock.AcquireReply](ctx, nc, lock.SubjectAcquire, req)
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r)
	}
	fmt.Fprintf(a.out, "acquired %s: token %d, expires %s\n", c.Name, r.Token, r.ExpiresAt)
	fmt.Fprintf(a.out, "renew:   mesh lock renew %s %d --ttl %s\nrelease: mesh lock release %s %d\n", c.Name, r.Token, c.TTL, c.Name, r.Token)
	return nil
}

type lockReleaseCmd struct {
	Name  string `arg:"" help:"Lock name."`
	Token uint64 `arg:"" help:"The token acquire printed."`
}

func (c *lockReleaseCmd) Run(a *app) error {
	return a.withLocks("mesh lock release", func(ctx context.Context, locks *lock.Client) error {
		if err := locks.Release(ctx, c.Name, c.Token); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "released %s (token %d)\n", c.Name, c.Token)
		return nil
	})
}

type lockRenewCmd struct {
	Name  string        `arg:"" help:"Lock name."`
	Token uint64        `arg:"" help:"The token acquire printed."`
	TTL   time.Duration `default:"30s" help:"New time to live, from now."`
}

func (c *lockRenewCmd) Run(a *app) error {
	return a.withLocks("mesh lock renew", func(ctx context.Context, locks *lock.Client) error {
		exp, err := locks.Renew(ctx, c.Name, c.Token, c.TTL)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.out, "renewed %s (token %d): expires %s\n", c.Name, c.Token, bus.Time{Time: exp})
		return nil
	})
}

type lockInspectCmd struct {
	Name string `arg:"" help:"Lock name."`
	JSON bool   `help:"Print JSON."`
}

func (c *lockInspectCmd) Run(a *app) error {
	var r lock.InspectReply
	err := a.withLocks("mesh lock inspect", func(ctx context.Context, locks *lock.Client) (err error) {
		r, err = locks.Inspect(ctx, c.Name)
		return err
	})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r)
	}
	if !r.Held {
		fmt.Fprintf(a.out, "%s is free\n", c.Name)
		return nil
	}
	fmt.Fprintf(a.out, "%s: %d of %d held, %d waiting\n\n", c.Name, len(r.Holders), r.Limit, len(r.Waiters))
	w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "STATE\tTOKEN\tOWNER\tSINCE\tEXPIRES")
	for _, h := range r.Holders {
		fmt.Fprintf(w, "holds\t%d\t%s\t%s\t%s\n", h.Token, h.Owner, h.Since, h.ExpiresAt)
	}
	for _, h := range r.Waiters {
		fmt.Fprintf(w, "waits\t%d\t%s\t%s\t%s\n", h.Token, h.Owner, h.Since, h.ExpiresAt)
	}
	return w.Flush()
}

type lockListCmd struct {
	Prefix string `arg:"" optional:"" help:"Only names starting with this."`
	JSON   bool   `help:"Print JSON."`
}

func (c *lockListCmd) Run(a *app) error {
	var r lock.ListReply
	err := a.withLocks("mesh lock list", func(ctx context.Context, locks *lock.Client) (err error) {
		r, err = locks.List(ctx, c.Prefix)
		return err
	})
	if err != nil {
		return err
	}
	if c.JSON {
		return a.printJSON(r)
	}
	if len(r.Locks) == 0 {
		fmt.Fprintln(a.out, "no locks")
		return nil
	}
	w := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tHOLDERS\tLIMIT\tWAITING")
	for _, l := range r.Locks {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\n", l.Name, l.Holders, l.Limit, l.Waiters)
	}
	if r.Truncated {
		fmt.Fprintln(w, "...\t\t\t")
	}
	return w.Flush()
}

type lockRunCmd struct {
	lockFlags
	Wait    time.Duration `default:"1h" help:"How long to wait in line for the lock."`
	Name    string        `arg:"" help:"Lock name."`
	Command []string      `arg:"" passthrough:"" help:"The command and its arguments, after --."`

	stderr io.Writer `kong:"-"` // where the wait is told; nil: os.Stderr
}

// Run holds the lock while the command runs, renewing the lease. The command
// gets MESH_LOCK_NAME and MESH_LOCK_TOKEN (its fencing token) in its
// environment. If the lease is lost, the command is sent SIGTERM and run
// fails. Otherwise run releases the lock and exits as the command did.
func (c *lockRunCmd) Run(a *app) error {
	if len(c.Command) > 0 && c.Command[0] == "--" {
		c.Command = c.Command[1:]
	}
	if len(c.Command) == 0 {
		return errors.New("no command: mesh lock run NAME -- CMD [ARGS...]")
	}
	// A command that cannot start is found out before the lock is taken.
	if _, err := exec.LookPath(c.Command[0]); err != nil {
		return fmt.Errorf("cannot run %s: %w", c.Command[0], err)
	}
	nc, err := a.connect("mesh lock run")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	actx, cancel := context.WithTimeout(ctx, c.Wait)
	locks, o := lock.NewClient(nc), lock.Options{TTL: c.TTL, Owner: c.owner(), Limit: c.Limit}
	lease, err := locks.TryAcquire(actx, c.Name, o)
	if errors.Is(err, lock.ErrLocked) {
		c.tellWait(actx, locks)
		lease, err = locks.Acquire(actx, c.Name, o)
	}
	cancel()
	if err != nil {
		return err
	}
	a.log.Info().Str("lock", c.Name).Uint64("token", lease.Token()).Msg("lock held")
	cmd := exec.Command(c.Command[0], c.Command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, a.out, os.Stderr
	cmd.Env = append(os.Environ(), "MESH_LOCK_NAME="+c.Name, "MESH_LOCK_TOKEN="+strconv.FormatUint(lease.Token(), 10))
	if err := cmd.Start(); err != nil {
		_ = lease.Release(context.Background())
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var runErr error
	select {
	case runErr = <-exited:
	case <-lease.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		return fmt.Errorf("the lock was lost while the command ran, so it was stopped: %w", lease.Err())
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		runErr = <-exited
	}
	rctx, rcancel := context.WithTimeout(context.Background(), a.conn.Timeout)
	defer rcancel()
	if err := lease.Release(rctx); err != nil {
		return errors.Join(runErr, err)
	}
	var exit *exec.ExitError
	if errors.As(runErr, &exit) {
		return exitCode(exit.ExitCode())
	}
	return runErr
}

// tellWait says on stderr who holds the lock run waits for.
func (c *lockRunCmd) tellWait(ctx context.Context, locks *lock.Client) {
	w := c.stderr
	if w == nil {
		w = os.Stderr
	}
	info, err := locks.Inspect(ctx, c.Name)
	if err != nil || len(info.Holders) == 0 {
		fmt.Fprintf(w, "waiting for %s\n", c.Name)
		return
	}
	h := info.Holders[0]
	if h.Owner == "" {
		h.Owner = "an owner with no name"
	}
	more := ""
	if n := len(info.Holders) - 1; n > 0 {
		more = fmt.Sprintf(" and %d more", n)
	}
	fmt.Fprintf(w, "waiting for %s (held by %s%s, token %d, expires in %s)\n",
		c.Name, h.Owner, more, h.Token, time.Until(h.ExpiresAt.Time).Round(100*time.Millisecond))
}

// exitCode makes mesh exit with a command's status.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("the command exited with status %d", int(e)) }
