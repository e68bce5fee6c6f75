package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/bus"
)

// metricsServer serves Prometheus metrics: the Go runtime, the process, and
// the requests of every service of this process (it is their bus.Observer);
// with pprof, Go's profiles too.
type metricsServer struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	srv      *http.Server
	// series caches each endpoint's series: looking them up by their label
	// values hashes the labels on every request.
	series sync.Map // seriesKey -> *endpointSeries
}

type seriesKey struct{ service, endpoint string }

type endpointSeries struct {
	succeeded prometheus.Counter
	latency   prometheus.Observer
}

func startMetrics(addr string, withPprof bool, log zerolog.Logger) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	m := &metricsServer{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_requests_total",
			Help: "Requests served, by service, endpoint and reply status (200 for success).",
		}, []string{"service", "endpoint", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mesh_request_duration_seconds",
			Help:    "Time from receiving a request to sending its reply.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18), // 50µs .. 6.5s
		}, []string{"service", "endpoint"}),
	}
	reg.MustRegister(m.requests, m.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server failed")
		}
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("serving metrics at /metrics")
	return m, nil
}

// ObserveRequest implements bus.Observer.
func (m *metricsServer) ObserveRequest(service, endpoint string, d time.Duration, err *bus.Error) {
	k := seriesKey{service, endpoint}
	v, ok := m.series.Load(k)
	if !ok {
		v, _ = m.series.LoadOrStore(k, &endpointSeries{
			succeeded: m.requests.WithLabelValues(service, endpoint, "200"),
			latency:   m.latency.WithLabelValues(service, endpoint),
		})
	}
	s := v.(*endpointSeries)
	if err == nil {
		s.succeeded.Inc()
	} else {
		m.requests.WithLabelValues(service, endpoint, strconv.Itoa(err.Status)).Inc()
	}
	s.latency.Observe(d.Seconds())
}

func (m *metricsServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return m.srv.Shutdown(ctx)
}
