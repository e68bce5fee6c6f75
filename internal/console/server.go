package console

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNotLoopback is an address the console will not listen on: it has no
// authentication of its own, so it serves loopback addresses only.
var ErrNotLoopback = errors.New("console: the console has no authentication and listens on a loopback address only (127.0.0.1:PORT, [::1]:PORT, localhost:PORT)")

// Server is a started Console served over HTTP.
type Server struct {
	*Console
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Listen starts a console over nc and serves it on addr, a loopback
// address (port 0 picks a free port), or any address if cfg.AllowRemote.
// Close stops both.
func Listen(ctx context.Context, nc *nats.Conn, addr string, cfg Config) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("console: address %q: %w", addr, err)
	}
	if !loopbackHost(host) && !cfg.AllowRemote {
		return nil, fmt.Errorf("%w, not %s", ErrNotLoopback, addr)
	}
	c, err := New(nc, cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{Console: c, ln: ln, done: make(chan error, 1),
		srv: &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// URL is the console's address, for people.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() + "/" }

// Close stops the console (which ends the live streams) and the HTTP
// server.
func (s *Server) Close(ctx context.Context) error {
	err := s.Console.Stop(ctx)
	err = errors.Join(err, s.srv.Shutdown(ctx))
	return errors.Join(err, <-s.done)
}
