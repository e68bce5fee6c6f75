package console

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/meshkit/mesh/internal/meshstat"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/scheduler"
)

// point is one sample of a series.
type point struct {
	T time.Time
	V float64
}

// series is a named time series, bounded to its last n points.
type series struct {
	Name   string
	Unit   string
	Points []point
}

// sampler is the one goroutine that reads the mesh's figures for the
// charts, every SampleEvery, and keeps the last hour of them in memory:
// requests per second of each service (from the micro stats), the depth of
// each queue, and the hit ratio and items of each cache node. It also keeps the last
// mesh status it read, which the overview shows.
type sampler struct {
	c   *Console
	max int

	mu       sync.Mutex
	rates    map[string]*series // service -> requests/s
	depths   map[string]*series // queue -> depth
	hits     map[string]*series // cache node -> hit ratio
	items    map[string]*series // cache node -> items
	last     *meshstat.Status
	lastAt   time.Time
	prevReqs map[string]int      // service -> requests at the last sample
	prevNode map[string][2]int64 // cache node -> hits, misses at the last sample
	prevAt   time.Time
}

func newSampler(c *Console, n int) *sampler {
	return &sampler{
		c: c, max: max(n, 2),
		rates: map[string]*series{}, depths: map[string]*series{}, hits: map[string]*series{}, items: map[string]*series{},
		prevReqs: map[string]int{}, prevNode: map[string][2]int64{},
	}
}

func (s *sampler) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sample reads the figures once. A part that does not answer leaves its
// series without a point.
func (s *sampler) sample(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, s.c.cfg.Timeout)
	defer cancel()
	now := time.Now()
	st, stErr := meshstat.Gather(ctx, s.c.nc)
	queues, qErr := s.c.tasks.Queues(ctx)
	stats, cErr := s.c.cache.Stats(ctx)
	s.record(now, st, stErr, queues, qErr, stats, cErr)
}

func (s *sampler) record(now time.Time, st meshstat.Status, stErr error, queues []scheduler.QueueInfo, qErr error, stats cache.StatsReply, cErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dt := now.Sub(s.prevAt).Seconds()
	first := s.prevAt.IsZero()
	s.prevAt = now
	if stErr == nil {
		s.last, s.lastAt = &st, now
		for _, svc := range st.Services {
			prev, seen := s.prevReqs[svc.Name]
			s.prevReqs[svc.Name] = svc.Requests
			if !first && seen && dt > 0 && svc.Requests >= prev {
				s.add(s.rates, svc.Name, "req/s", now, float64(svc.Requests-prev)/dt)
			}
		}
	}
	if qErr == nil {
		for _, q := range queues {
			s.add(s.depths, q.Name, "tasks", now, float64(q.Depth))
		}
	}
	if cErr == nil {
		for _, n := range stats.Nodes {
			s.add(s.items, n.Node, "items", now, float64(n.Items))
			prev, seen := s.prevNode[n.Node]
			s.prevNode[n.Node] = [2]int64{n.Hits, n.Misses}
			if !seen {
				continue
			}
			dh, dm := n.Hits-prev[0], n.Misses-prev[1]
			if dh < 0 || dm < 0 {
				continue // the node restarted
			}
			if dh+dm == 0 {
				continue // no read since the last sample: no ratio
			}
			s.add(s.hits, n.Node, "hit ratio", now, float64(dh)/float64(dh+dm))
		}
	}
}

func (s *sampler) add(m map[string]*series, name, unit string, t time.Time, v float64) {
	sr := m[name]
	if sr == nil {
		sr = &series{Name: name, Unit: unit}
		m[name] = sr
	}
	sr.Points = append(sr.Points, point{t, v})
	if len(sr.Points) > s.max {
		sr.Points = append(sr.Points[:0], sr.Points[len(sr.Points)-s.max:]...)
	}
}

// status returns the last mesh status read, if it is younger than maxAge.
func (s *sampler) status(maxAge time.Duration) (meshstat.Status, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil || time.Since(s.lastAt) > maxAge {
		return meshstat.Status{}, false
	}
	return *s.last, true
}

// copies returns a copy of the series of m, sorted by name.
func (s *sampler) copies(m map[string]*series) []series {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]series, 0, len(m))
	for _, sr := range m {
		out = append(out, series{Name: sr.Name, Unit: sr.Unit, Points: append([]point(nil), sr.Points...)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// chart is the data of one chart: its title and its series.
type chart struct {
	Title  string
	Series []series
	Span   time.Duration
}

func (s *sampler) rateChart() chart  { return s.chart("Requests per second", s.rates) }
func (s *sampler) depthChart() chart { return s.chart("Queue depth", s.depths) }
func (s *sampler) hitChart() chart   { return s.chart("Hit ratio", s.hits) }
func (s *sampler) itemChart() chart  { return s.chart("Items", s.items) }

// chart returns the chart of the series of m, over the time they cover:
// from a minute to the whole history.
func (s *sampler) chart(title string, m map[string]*series) chart {
	c := chart{Title: title, Series: s.copies(m), Span: time.Minute}
	for _, sr := range c.Series {
		if len(sr.Points) > 0 {
			c.Span = max(c.Span, time.Since(sr.Points[0].T).Round(time.Minute))
		}
	}
	c.Span = min(c.Span, time.Duration(s.max)*s.c.cfg.SampleEvery)
	return c
}
