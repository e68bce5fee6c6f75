// Package embed runs a nats-server with JetStream inside the process: the
// server behind `mesh up` and behind the tests (see bustest).
//
// It is a package of its own so that a program importing a service SDK never
// links nats-server.
//
// # Durability
//
// By default the JetStream file store keeps NATS's own policy: every write
// reaches the operating system at once (it survives a crash of the process),
// and fsync runs every 2 minutes, so an OS crash or power loss can lose the
// writes of the last interval. Sync "always" fsyncs every write, at a large
// cost in write throughput (JetStream does not group commits). A cluster gets
// its durability from R3 replication instead.
//
// # One server per data directory
//
// A server holds an exclusive lock (flock) on the file mesh.lock in its
// data directory for its lifetime, and writes its process id there. A
// second server on the same directory, in this process or another, is
// refused with a *DataDirInUseError naming the directory and that process:
// two servers on one store would each grant the same locks and corrupt the
// store's state files. The operating system drops the lock when the process
// ends, even by kill -9, so a crash leaves no stale lock behind.
package embed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Config configures an embedded server.
type Config struct {
	// Listen is the client address, host:port. Zero: 127.0.0.1:4222. A port
	// of -1 picks a free one.
	Listen string
	// DontListen opens no port: clients connect in-process through
	// ConnectOption.
	DontListen bool
	// DataDir is the JetStream store directory. Required.
	DataDir string
	// Sync is the fsync policy of the store: "" or "default" (NATS's own,
	// every 2 minutes), "always" (every write), or a Go duration (the
	// interval).
	Sync string
	// Name of the server. Zero: one chosen by the server.
	Name string
	// Cluster, when set, makes the server a node of a cluster.
	Cluster *Cluster
	// Logger receives the server's log. Zero: none.
	Logger zerolog.Logger
	// Debug also forwards the server's debug lines.
	Debug bool
}

// Cluster configures the routes between the nodes of a cluster.
type Cluster struct {
	Name   string   // cluster name, the same on every node
	Listen string   // route address, host:port; port -1 picks a free one
	Routes []string // route URLs of the other nodes, nats://host:port
}

// Server is a running embedded server.
type Server struct {
	ns   *server.Server
	opts *server.Options
	lock *dataLock // of the data directory
}

// Options turns cfg into nats-server options.
func (cfg Config) Options() (*server.Options, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embed: a data directory is required")
	}
	o := &server.Options{
		ServerName: cfg.Name,
		DontListen: cfg.DontListen,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:4222"
	}
	var err error
	if o.Host, o.Port, err = hostPort(listen); err != nil {
		return nil, fmt.Errorf("embed: listen address: %w", err)
	}
	switch cfg.Sync {
	case "", "default":
	case "always":
		o.SyncAlways = true
	default:
		d, err := time.ParseDuration(cfg.Sync)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("embed: sync %q: want default, always or a positive duration", cfg.Sync)
		}
		o.SyncInterval = d
	}
	if c := cfg.Cluster; c != nil {
		o.Cluster.Name = c.Name
		if o.Cluster.Host, o.Cluster.Port, err = hostPort(c.Listen); err != nil {
			return nil, fmt.Errorf("embed: cluster address: %w", err)
		}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("embed: route %q: want nats://host:port", r)
			}
			o.Routes = append(o.Routes, u)
		}
	}
	return o, nil
}

func hostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < -1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	return host, port, nil
}

// Start starts a server and returns once it accepts connections with
// JetStream enabled, or fails when ctx ends first.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	opts, err := cfg.Options()
	if err != nil {
		return nil, err
	}
	return StartOptions(ctx, opts, cfg.Logger, cfg.Debug)
}

// StartOptions starts a server from nats-server options, as Start does. With
// JetStream, it locks opts.StoreDir first (see the package doc), or fails
// with a *DataDirInUseError.
func StartOptions(ctx context.Context, opts *server.Options, log zerolog.Logger, debug bool) (_ *Server, err error) {
	var lock *dataLock
	if opts.JetStream && opts.StoreDir != "" {
		if lock, err = lockDataDir(opts.StoreDir); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				lock.release()
			}
		}()
	}
	// The server retries a port in use until its deadline; say so at once.
	if !opts.DontListen && opts.Port > 0 {
		addr := net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("embed: cannot listen on %s: %w", addr, err)
		}
		l.Close()
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embed: %w", err)
	}
	ns.SetLoggerV2(logger{log}, debug, false, false)
	ns.Start()
	wait := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	if !ns.ReadyForConnections(wait) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("embed: server not ready for connections within %v (a port in use, or a long JetStream recovery)", wait.Round(time.Millisecond))
	}
	return &Server{ns: ns, opts: opts, lock: lock}, nil
}

// NATS returns the underlying nats-server.
func (s *Server) NATS() *server.Server { return s.ns }

// ClientURL is the URL clients connect to ("" with DontListen).
func (s *Server) ClientURL() string {
	if s.opts.DontListen {
		return ""
	}
	return s.ns.ClientURL()
}

// ConnectOption makes a nats.Conn connect to this server in-process, with
// no socket, which works with DontListen too.
func (s *Server) ConnectOption() nats.Option { return nats.InProcessServer(s.ns) }

// Shutdown stops the server, closing client connections and flushing and
// closing the JetStream store, and waits until it is done or ctx ends. The
// data directory is unlocked once the store is closed.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		s.lock.release()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embed: shutdown: %w", ctx.Err())
	}
}

// logger forwards the server's log lines to zerolog.
type logger struct{ l zerolog.Logger }

// Noticef lines (the banner, the listen addresses) go to debug: the mesh
// logs what matters of them itself.
func (l logger) Noticef(f string, v ...any) { l.l.Debug().Str("component", "nats").Msgf(f, v...) }
func (l logger) Warnf(f string, v ...any)   { l.l.Warn().Str("component", "nats").Msgf(f, v...) }
func (l logger) Fatalf(f string, v ...any)  { l.l.Error().Str("component", "nats").Msgf(f, v...) }
func (l logger) Errorf(f string, v ...any)  { l.l.Error().Str("component", "nats").Msgf(f, v...) }
func (l logger) Debugf(f string, v ...any)  { l.l.Debug().Str("component", "nats").Msgf(f, v...) }
func (l logger) Tracef(f string, v ...any)  { l.l.Trace().Str("component", "nats").Msgf(f, v...) }
