// Command mesh runs the mesh (embedded NATS and every service, or one service
// against a NATS you run) and talks to it from a terminal.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// cli is the command line: global flags, then one command.
type cli struct {
	Conn     connFlags `embed:""`
	LogLevel string    `name:"log-level" env:"MESH_LOG_LEVEL" default:"info" enum:"trace,debug,info,warn,error" help:"Log level (${enum})."`

	Up     upCmd     `cmd:"" help:"Run the mesh: an embedded NATS server with JetStream and every service."`
	Serve  serveCmd  `cmd:"" help:"Run one service against a NATS server."`
	Status statusCmd `cmd:"" help:"Show the running services and the mesh's JetStream streams and buckets."`
	Ring   ringCmd   `cmd:"" help:"Show the ring of a service: members, weights, partition shares, version."`
	Cache  cacheCmd  `cmd:"" help:"Get, set and delete cache keys; show the cache's figures."`
	Lock   lockCmd   `cmd:"" help:"Take, release, renew, inspect and list locks; hold one while a command runs."`

	Task     taskCmd     `cmd:"" help:"Submit tasks, show their state, cancel them; list, pause and resume queues."`
	Schedule scheduleCmd `cmd:"" help:"Add, list and remove periodic schedules of tasks."`
	Worker   workerCmd   `cmd:"" help:"Run a command for each task of a queue (payload on stdin)."`
	Console  consoleCmd  `cmd:"" help:"Serve the web console of a running mesh (--nats URL)."`

	Version versionCmd `cmd:"" help:"Print the version."` // last in the help
}

// connFlags are the connection options of every command.
type connFlags struct {
	NATS     string        `name:"nats" env:"MESH_NATS" placeholder:"URL" help:"NATS server URL(s), comma-separated (default ${default_url}; for up: none, run an embedded server)."`
	Creds    string        `env:"MESH_CREDS" type:"existingfile" help:"NATS credentials file."`
	NKey     string        `name:"nkey" env:"MESH_NKEY" type:"existingfile" help:"NATS nkey seed file."`
	User     string        `env:"MESH_USER" help:"NATS user."`
	Password string        `env:"MESH_PASSWORD" help:"NATS password."`
	Token    string        `name:"nats-token" env:"MESH_NATS_TOKEN" help:"NATS authentication token (not a lock's token)."`
	TLSCA    string        `name:"tls-ca" env:"MESH_TLS_CA" type:"existingfile" help:"CA certificate to verify the NATS server."`
	TLSCert  string        `name:"tls-cert" env:"MESH_TLS_CERT" type:"existingfile" help:"Client certificate."`
	TLSKey   string        `name:"tls-key" env:"MESH_TLS_KEY" type:"existingfile" help:"Client certificate key."`
	Inbox    string        `name:"inbox-prefix" env:"MESH_INBOX_PREFIX" placeholder:"PREFIX" help:"Prefix of reply subjects instead of _INBOX, where the server lets this user subscribe to its own replies only (the compose stack: _INBOX_<user>)."`
	Timeout  time.Duration `env:"MESH_TIMEOUT" default:"5s" help:"Timeout of a command's requests."`
}

func (c connFlags) options(name string, log zerolog.Logger) bus.Options {
	return bus.Options{
		URL: c.NATS, Name: name, Creds: c.Creds, NKey: c.NKey,
		User: c.User, Password: c.Password, Token: c.Token,
		TLSCA: c.TLSCA, TLSCert: c.TLSCert, TLSKey: c.TLSKey,
		InboxPrefix: c.Inbox, Logger: log,
	}
}

// app is what every command gets: the parsed flags and a logger.
type app struct {
	conn connFlags
	log  zerolog.Logger
	out  io.Writer // where results go: stdout
	// serviceConn, when set, connects each service with its own user
	// (mesh up --auth).
	serviceConn func(service string) (*nats.Conn, error)
}

// kongUsageError is the exit code kong gives a command line it cannot
// parse.
const kongUsageError = 80

func main() {
	var c cli
	k := newParser(&c, os.Stdout, os.Stderr, os.Exit)
	ctx := parse(k, os.Args[1:])
	a := &app{conn: c.Conn, log: newLogger(c.LogLevel), out: os.Stdout}
	os.Exit(exitStatus(ctx.Run(a), os.Stderr))
}

// exitStatus is mesh's exit status after a command returned err: 0 for
// nil; the status of the command mesh ran for an exitCode (lock run);
// otherwise 1, with the error on stderr as "mesh: <code>: <message>".
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var code exitCode
	if errors.As(err, &code) {
		return int(code)
	}
	fmt.Fprintln(stderr, "mesh:", err)
	return 1
}

// newParser returns the command line's parser: help goes to stdout, errors
// to stderr, and a command line it cannot parse exits 2.
func newParser(c *cli, stdout, stderr io.Writer, exit func(int)) *kong.Kong {
	return kong.Must(c,
		kong.Name("mesh"),
		kong.Description("Mesh: a sharded cache, a lock service and a task scheduler on NATS."),
		kong.ShortUsageOnError(),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Vars{"default_url": bus.DefaultURL},
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) {
			if code == kongUsageError {
				code = 2 // as Go's flag package and most tools say "usage"
			}
			exit(code)
		}),
	)
}

// parse parses args, or exits with the error. The short usage printed with
// an error is part of the error, so it goes to stderr with it (kong prints
// it on stdout).
func parse(k *kong.Kong, args []string) *kong.Context {
	ctx, err := k.Parse(args)
	if err != nil {
		k.Stdout = k.Stderr
		k.FatalIfErrorf(err)
	}
	return ctx
}

// newLogger logs JSON to stderr, or readable lines when stderr is a terminal.
func newLogger(level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	var l zerolog.Logger
	if isatty.IsTerminal(os.Stderr.Fd()) {
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"})
	} else {
		l = zerolog.New(os.Stderr)
	}
	zerolog.TimeFieldFormat = bus.TimeLayout
	return l.Level(lvl).With().Timestamp().Logger()
}

// connect connects for one command, bounded by the command timeout.
func (a *app) connect(name string) (*nats.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), a.conn.Timeout)
	defer cancel()
	nc, err := bus.Connect(ctx, a.conn.options(name, a.log))
	if errors.Is(err, nats.ErrNoServers) {
		err = fmt.Errorf("%w; is a mesh running? Start one with `mesh up`, or point --nats (MESH_NATS) at its NATS", err)
	}
	return nc, err
}

// once runs the one exchange of a command: it connects, calls fn bounded by
// the command timeout, and closes the connection.
func (a *app) once(name string, fn func(ctx context.Context, nc *nats.Conn) error) error {
	nc, err := a.connect(name)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), a.conn.Timeout)
	defer cancel()
	return fn(ctx, nc)
}

// printJSON prints v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// plural is "1 copy", "2 copies".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

type versionCmd struct{}

func (versionCmd) Run(a *app) error {
	fmt.Fprintln(a.out, "mesh", version)
	return nil
}
