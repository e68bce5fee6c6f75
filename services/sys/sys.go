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
	Node        string   `json:"node"`
	MeshVersion string   `json:"mesh_version"`
	GoVersion   string   `json:"go_version"`
	Started     bus.Time `json:"started"`
	UptimeMs    int64    `json:"uptime_ms"`
	Services    []string `json:"services"`
	Server      Server   `json:"server"`
}

// Server describes the NATS server the process is connected to.
type Server struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Cluster string `json:"cluster,omitempty"`
}

// Service answers on the sys subjects.
type Service struct {
	*bus.Service
	nc      *nats.Conn
	cfg     Config
	started time.Time
}

// New returns the service of this process, ready to Start.
func New(nc *nats.Conn, cfg Config) (*Service, error) {
	if cfg.MeshVersion == "" {
		cfg.MeshVersion = "dev"
	}
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
	}
	s := &Service{nc: nc, cfg: cfg, started: time.Now()}
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
	s.Service = svc
	return s, nil
}

func (s *Service) info(context.Context, *InfoRequest) (*InfoReply, error) {
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
		Server: Server{
			Name:    s.nc.ConnectedServerName(),
			Version: s.nc.ConnectedServerVersion(),
			Cluster: s.nc.ConnectedClusterName(),
		},
	}, nil
}

func echo(_ context.Context, m *bus.Msg) (any, error) { return bus.Raw(m.Data), nil }
