// Command chaos drives the compose stack from the host (scripts/chaos.sh and
// scripts/compose-smoke.sh run it):
//
//	chaos perms -nats URLS -password P [-cache-seed FILE] [-worker-seed FILE]
//	    checks what the client (and a cache node's, a worker's) user may and
//	    may not do
//	chaos req -nats URLS -password P SUBJECT JSON
//	    one JSON request as the client user: prints the reply, fails on a
//	    service error (Nats-Service-Error headers) or no reply
//	chaos load -nats URLS -password P -duration D -faults FILE
//	    a steady load of cache sets and gets, lock acquisitions with fencing
//	    checks and task submissions for D; then waits for every submitted
//	    task to finish, reads back every cache key and prints a report, with
//	    the error rate and recovery time of each fault window listed in FILE
//	    (lines "UNIX_MS start|end NAME", written by the script meanwhile).
//
// It connects as the client user: what it does is what an application may.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// clientInbox is the prefix of the client user's reply subjects: the stack
// lets it subscribe to those only (deploy/nats/nats.conf).
const clientInbox = "_INBOX_client"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: chaos perms|load [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	urls := fs.String("nats", "nats://127.0.0.1:4222", "NATS URLs, comma-separated")
	pass := fs.String("password", "", "the client user's password (or @FILE)")
	seed := fs.String("cache-seed", "", "perms: a cache node's nkey seed file, to check its limits too")
	workerSeed := fs.String("worker-seed", "", "perms: a worker's nkey seed file, to check its limits too")
	dur := fs.Duration("duration", 2*time.Minute, "load: how long to load")
	faults := fs.String("faults", "", "load: the fault log the script writes")
	settle := fs.Duration("settle", 90*time.Second, "load: how long to wait for the tasks to finish after the load")
	ttl := fs.Duration("lock-ttl", 3*time.Second, "load: lease TTL")
	_ = fs.Parse(os.Args[2:])
	if p, ok := strings.CutPrefix(*pass, "@"); ok {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			os.Exit(1)
		}
		*pass = strings.TrimSpace(string(b))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch mode {
	case "perms":
		err = runPerms(ctx, *urls, *pass, *seed, *workerSeed)
	case "req":
		if fs.NArg() != 2 {
			err = fmt.Errorf("req needs a subject and a JSON body")
			break
		}
		err = runReq(*urls, *pass, fs.Arg(0), fs.Arg(1))
	case "load":
		err = runLoad(ctx, loadConfig{URLs: *urls, Password: *pass, Duration: *dur, Faults: *faults, Settle: *settle, LockTTL: *ttl})
	default:
		err = fmt.Errorf("unknown mode %q (perms, req or load)", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
}

// runReq makes one JSON request as the client user.
func runReq(urls, pass, subject, body string) error {
	nc, err := nats.Connect(urls, nats.UserInfo("client", pass), nats.CustomInboxPrefix(clientInbox), nats.Name("chaos req"))
	if err != nil {
		return err
	}
	defer nc.Close()
	m := nats.NewMsg(subject)
	m.Header.Set("Content-Type", "application/json")
	m.Data = []byte(body)
	reply, err := nc.RequestMsg(m, 5*time.Second)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	fmt.Println(string(reply.Data))
	if e := reply.Header.Get("Nats-Service-Error"); e != "" {
		return fmt.Errorf("%s: %s %s", subject, reply.Header.Get("Nats-Service-Error-Code"), e)
	}
	return nil
}
