package sys

import (
	"context"
	"os"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
)

// Version is the version of the sys service.
const Version = "0.1.0"

// Subjects of the service.
const (
	SubjectInfo = "mesh.sys.info"
	SubjectEcho = "mesh.sys.echo"
)

// Config configures a Server.
type Config struct {
	// MeshVersion is the version of the mesh binary. Zero: "dev".
	MeshVersion string
	// Node names this process. Zero: the host name.
	Node string
	// Services lists the services this process runs.
	Services []string
	// Logger, zero: none. Observer, zero: none.
	Logger   zerolog.Logger
	Observer bus.Observer
}

// InfoRequest asks for a process's information. It has no fields.
type InfoRequest struct{}

// InfoReply describes the process that answered.
type InfoReply struct {
	Node        string     `json:"node"`
	MeshVersion string     `json:"mesh_version"`
	GoVersion   string     `json:"go_version"`
	Started     bus.Time   `json:"started"`
	UptimeMs    int64      `json:"uptime_ms"`
	Services    []string   `json:"services"`
	Server      NATSServer `json:"server"`
}

// NATSServer describes the NATS server the process is connected to.
type NATSServer struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Cluster string `json:"cluster,omitempty"`
}

// Server is the sys service of one process: it answers on the sys
// subjects.
type Server struct {
	svc     *bus.Service
	nc      *nats.Conn
	cfg     Config
	started time.Time
}

// New returns the service of this process, ready to Start.
func New(nc *nats.Conn, cfg Config) (*Server, error) {
	if cfg.MeshVersion == "" {
		cfg.MeshVersion = "dev"
	}
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
	}
	s := &Server{nc: nc, cfg: cfg, started: time.Now()}
	svc, err := bus.NewService(nc, bus.Config{
		Name:        "sys",
		Version:     Version,
		Description: "Mesh process information and echo",
		Metadata:    map[string]string{"node": cfg.Node},
		Logger:      cfg.Logger,
		Observer:    cfg.Observer,
		Endpoints: []bus.Endpoint{
			{Name: "info", Subject: SubjectInfo, Handler: bus.Typed(s.info)},
			{Name: "echo", Subject: SubjectEcho, Handler: echo},
		},
	})
	if err != nil {
		return nil, err
	}
	s.svc = svc
	return s, nil
}

// Start starts serving.
func (s *Server) Start(ctx context.Context) error { return s.svc.Start(ctx) }

// Stop stops serving, once the requests in flight are answered (see
// bus.Service.Stop).
func (s *Server) Stop(ctx context.Context) error { return s.svc.Stop(ctx) }

// Done is closed once the service has stopped.
func (s *Server) Done() <-chan struct{} { return s.svc.Done() }

func (s *Server) info(context.Context, *InfoRequest) (*InfoReply, error) {
	services := s.cfg.Services
	if services == nil {
		services = []string{}
	}
	return &InfoReply{
		Node:        s.cfg.Node,
		MeshVersion: s.cfg.MeshVersion,
		GoVersion:   runtime.Version(),
		Started:     bus.Time{Time: s.started},
		UptimeMs:    time.Since(s.started).Milliseconds(),
		Services:    services,
		Server: NATSServer{
			Name:    s.nc.ConnectedServerName(),
			Version: s.nc.ConnectedServerVersion(),
			Cluster: s.nc.ConnectedClusterName(),
		},
	}, nil
}

func echo(_ context.Context, r *bus.Call) { r.ReplyRaw(r.Data()) }
