package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/meshkit/mesh/pkg/ring/membership"
	"github.com/meshkit/mesh/services/cache"
	"github.com/meshkit/mesh/services/lock"
	"github.com/meshkit/mesh/services/scheduler"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config configures a Console.
type Config struct {
	// ReadOnly hides the actions and refuses them (403): a console to look
	// at a mesh, not to change it.
	ReadOnly bool
	// Timeout bounds the requests a page makes to the mesh. Zero: 5s.
	Timeout time.Duration
	// Refresh is how often a live page is rendered again when no event
	// asks for it sooner. Zero: 2s.
	Refresh time.Duration
	// SampleEvery is the period of the charts' samples. Zero: 10s. The
	// charts keep the last hour (History).
	SampleEvery time.Duration
	// History is how far back the charts go. Zero: 1h.
	History time.Duration
	// TaskListEvery bounds how often the scheduler page lists tasks,
	// whatever the number of pages open: a list scans the stored tasks.
	// Zero: 5s.
	TaskListEvery time.Duration
	// CacheReplicas is the copies of each cache key (the cache nodes'
	// setting), for the key lookup's replicas. Zero: 2.
	CacheReplicas int
	// AllowRemote lets Listen serve a non-loopback address: for a console
	// in a container, whose port the host publishes on its own loopback
	// address only (compose.yaml). The pages still answer only requests
	// whose Host is a loopback name or address, and actions from their own
	// origin. Zero: loopback addresses only.
	AllowRemote bool
	// Logger, zero: none.
	Logger zerolog.Logger
}

// Console is the web console of one mesh, over one NATS connection. Its
// Handler serves the pages; Start begins following the mesh (events, ring,
// samples for the charts) and Stop ends it.
type Console struct {
	nc    *nats.Conn
	cfg   Config
	log   zerolog.Logger
	tmpl  map[string]*template.Template
	mux   *http.ServeMux
	tasks *scheduler.Client
	locks *lock.Client
	cache *cache.Client
	ring  *membership.Watcher

	events    *hub
	sampler   *sampler
	viewFns   map[string]viewFunc
	taskLists *memo[scheduler.ListReply]
	lockViews *memo[*locksView]
	// storedReads keeps the reads of the stored events (stored.go).
	storedReads *memo[storedRead]

	mu      sync.Mutex
	started bool
	stop    context.CancelFunc
	done    chan struct{}
}

// New returns a console over nc, ready to Start.
func New(nc *nats.Conn, cfg Config) (*Console, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 2 * time.Second
	}
	if cfg.SampleEvery <= 0 {
		cfg.SampleEvery = 10 * time.Second
	}
	if cfg.History <= 0 {
		cfg.History = time.Hour
	}
	if cfg.TaskListEvery <= 0 {
		cfg.TaskListEvery = 5 * time.Second
	}
	if cfg.CacheReplicas <= 0 {
		cfg.CacheReplicas = 2
	}
	quiet := cfg.Logger.Level(zerolog.WarnLevel)
	cc, err := cache.NewClient(nc, cache.ClientConfig{Replicas: cfg.CacheReplicas, Logger: quiet})
	if err != nil {
		return nil, err
	}
	w, err := membership.NewWatcher(nc, membership.WatcherConfig{Service: cache.Service, Logger: quiet})
	if err != nil {
		return nil, err
	}
	c := &Console{
		nc: nc, cfg: cfg, log: cfg.Logger,
		tasks: scheduler.NewClient(nc), locks: lock.NewClient(nc), cache: cc, ring: w,
		events:      newHub(eventBuffer),
		taskLists:   newMemo[scheduler.ListReply](cfg.TaskListEvery),
		lockViews:   newMemo[*locksView](time.Second),
		storedReads: newMemo[storedRead](storedKeep),
	}
	c.sampler = newSampler(c, int(cfg.History/cfg.SampleEvery))
	if c.tmpl, err = parseTemplates(); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

// Start subscribes to the mesh's events, follows the cache ring and starts
// the sampler of the charts. It returns once the subscriptions are in
// place.
func (c *Console) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return errors.New("console: already started")
	}
	if err := c.events.start(c.nc); err != nil {
		return err
	}
	if err := c.ring.Start(ctx); err != nil {
		c.events.stop()
		return err
	}
	if err := c.cache.Start(ctx); err != nil {
		c.events.stop()
		_ = c.ring.Stop(ctx)
		return err
	}
	sctx, cancel := context.WithCancel(context.Background())
	c.stop, c.done, c.started = cancel, make(chan struct{}), true
	go func() {
		defer close(c.done)
		c.sampler.run(sctx, c.cfg.SampleEvery)
	}()
	return nil
}

// Stop stops the sampler and the subscriptions, and ends the live pages'
// streams.
func (c *Console) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started {
		return nil
	}
	c.started = false
	c.stop()
	select {
	case <-c.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	c.events.stop()
	return errors.Join(c.cache.Close(ctx), c.ring.Stop(ctx))
}

// Handler serves the console.
func (c *Console) Handler() http.Handler { return guard(c.mux, c.cfg.ReadOnly) }

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /{$}", c.page("overview", c.overview))
	m.HandleFunc("GET /scheduler", c.page("scheduler", c.schedulerView))
	m.HandleFunc("GET /scheduler/tasks/{id}", c.page("task", c.taskView))
	m.HandleFunc("GET /scheduler/tasks/{$}", findTask)
	m.HandleFunc("POST /scheduler/submit", c.submit)
	m.HandleFunc("POST /scheduler/tasks/{id}/cancel", c.cancel)
	m.HandleFunc("POST /scheduler/queues/{queue}/{action}", c.pauseResume)
	m.HandleFunc("GET /scheduler/dead", c.page("dead", c.deadView))
	m.HandleFunc("POST /scheduler/dead/{action}", c.deadAction)
	m.HandleFunc("POST /scheduler/schedules", c.addSchedule)
	m.HandleFunc("POST /scheduler/schedules/{name}/remove", c.removeSchedule)
	m.HandleFunc("GET /locks", c.page("locks", c.locksView))
	m.HandleFunc("GET /cache", c.page("cache", c.cacheView))
	m.HandleFunc("GET /events", c.page("events", c.eventsView))
	m.HandleFunc("GET /events/stream", c.eventStream)
	m.HandleFunc("GET /live", c.live)
	c.mux = m
}

// guard refuses what a page on another site could make a browser send to
// the console: requests whose Host is not the console's own (DNS
// rebinding), and actions from another origin (cross-site request
// forgery). In read-only mode it refuses every action.
func guard(next http.Handler, readOnly bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			http.Error(w, "console: this console answers on a loopback address only (Host "+r.Host+")", http.StatusForbidden)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if readOnly {
				refuse(w, r, http.StatusForbidden, "read_only", "the console is read-only")
				return
			}
			if !sameOrigin(r) {
				http.Error(w, "console: an action must come from the console's own pages", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// loopbackHost reports whether a Host header names a loopback address.
func loopbackHost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// sameOrigin reports whether a browser says a request comes from the
// console's own pages (or from no page: curl, a bookmark).
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	return true
}

// refuse answers an action refused by the console itself.
func refuse(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	back := backTo(r)
	q := url.Values{"err": {fmt.Sprintf("%d %s: %s", status, code, msg)}}
	http.Redirect(w, r, back+sep(back)+q.Encode(), http.StatusSeeOther)
}

// backTo is where an action returns: the form's "back" path, else the
// overview.
func backTo(r *http.Request) string {
	b := r.FormValue("back")
	if !strings.HasPrefix(b, "/") || strings.HasPrefix(b, "//") || strings.ContainsAny(b, "\\\r\n") {
		return "/"
	}
	if i := strings.IndexAny(b, "?#"); i >= 0 {
		b = b[:i] + stripFlash(b[i:])
	}
	return b
}

// stripFlash removes the msg and err parameters of a previous action from
// a query string.
func stripFlash(q string) string {
	if !strings.HasPrefix(q, "?") {
		return ""
	}
	v, err := url.ParseQuery(q[1:])
	if err != nil {
		return ""
	}
	v.Del("msg")
	v.Del("err")
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}
