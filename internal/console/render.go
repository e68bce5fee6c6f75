package console

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler"
)

// pages are the console's pages, in the order of the navigation bar.
var pages = []struct{ Name, Path, Title string }{
	{"overview", "/", "Overview"},
	{"scheduler", "/scheduler", "Scheduler"},
	{"locks", "/locks", "Locks"},
	{"cache", "/cache", "Cache"},
	{"events", "/events", "Events"},
}

// viewFunc gathers the data of a page from the mesh.
type viewFunc func(ctx context.Context, r *http.Request) (any, error)

// pageData is what the layout gets.
type pageData struct {
	Name     string
	Title    string
	Nav      []navItem
	Msg, Err string // the outcome of the previous action
	ReadOnly bool
	Live     string // the URL of the page's live stream, if it has one
	Back     string // this page's path and query, where its actions return
	Query    url.Values
	View     any
	ViewErr  error // the mesh did not answer the page's requests
	Now      time.Time
}

type navItem struct {
	Path, Title string
	Current     bool
}

func parseTemplates() (map[string]*template.Template, error) {
	out := map[string]*template.Template{}
	for _, name := range []string{"overview", "scheduler", "task", "dead", "locks", "cache", "events"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/charts.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

// page serves a page: the layout around the page's content, with its live
// part rendered once; the page's script then follows the live stream.
func (c *Console) page(name string, view viewFunc) http.HandlerFunc {
	c.views()[name] = view
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
		defer cancel()
		d := c.pageData(name, r)
		d.View, d.ViewErr = view(ctx, r)
		var b bytes.Buffer
		if err := c.tmpl[name].Execute(&b, d); err != nil {
			c.log.Error().Err(err).Str("page", name).Msg("console: rendering")
			http.Error(w, "console: rendering "+name+": "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(b.Bytes())
	}
}

func (c *Console) pageData(name string, r *http.Request) pageData {
	d := pageData{
		Name: name, ReadOnly: c.cfg.ReadOnly, Query: r.URL.Query(), Now: time.Now(),
		Msg: r.URL.Query().Get("msg"), Err: r.URL.Query().Get("err"),
	}
	section := name
	if name == "task" || name == "dead" {
		section = "scheduler"
	}
	for _, p := range pages {
		d.Nav = append(d.Nav, navItem{p.Path, p.Title, p.Name == section})
		if p.Name == section {
			d.Title = p.Title
		}
	}
	q := r.URL.Query()
	q.Del("msg")
	q.Del("err")
	d.Back = r.URL.Path
	if d.Back == "/live" { // the live part of a page: its actions return to the page
		d.Back = pagePath(name, q.Get("id"))
		q.Del("page")
		q.Del("id")
		d.Query = q
	}
	if len(q) > 0 {
		d.Back += "?" + q.Encode()
	}
	if name != "events" {
		q.Set("page", name)
		if id := r.PathValue("id"); id != "" {
			q.Set("id", id)
		}
		d.Live = "/live?" + q.Encode()
	}
	return d
}

// pagePath is the path of a page.
func pagePath(name, id string) string {
	if name == "task" {
		return "/scheduler/tasks/" + url.PathEscape(id)
	}
	if name == "dead" {
		return "/scheduler/dead"
	}
	for _, p := range pages {
		if p.Name == name {
			return p.Path
		}
	}
	return "/"
}

// renderLive renders the live part of a page.
func (c *Console) renderLive(ctx context.Context, name string, r *http.Request) ([]byte, error) {
	view := c.views()[name]
	if view == nil {
		return nil, fmt.Errorf("no page %q", name)
	}
	vctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	d := c.pageData(name, r)
	d.View, d.ViewErr = view(vctx, r)
	var b bytes.Buffer
	err := c.tmpl[name].ExecuteTemplate(&b, "live", d)
	return b.Bytes(), err
}

// refusal is how a page shows an error of the mesh: the code and status the
// service sent, and its message.
func refusal(err error) string {
	if err == nil {
		return ""
	}
	e := bus.AsError(err)
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

var funcs = template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return roundDur(time.Since(t)) + " ago"
	},
	"since": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return roundDur(time.Since(t))
	},
	// until is how long until t, as "in 3m10s" ("due" once it has passed).
	"until": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		if d := time.Until(t); d > 0 {
			return "in " + roundDur(d)
		}
		return "due"
	},
	"ms":  func(ms int64) string { return roundDur(time.Duration(ms) * time.Millisecond) },
	"dur": roundDur,
	"instant": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05.000")
	},
	"iso":   func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"bytes": func(v any) string { return humanBytes(toInt64(v)) },
	"pct": func(part, whole float64) string {
		if whole == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f%%", 100*part/whole)
	},
	"refusal":    refusal,
	"storedScan": func() int { return storedScan },
	"join":       strings.Join,
	"chart":      svgChart,
	"terminal":   scheduler.Finished,
	"query": func(base string, kv ...string) string {
		q := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] != "" {
				q.Set(kv[i], kv[i+1])
			}
		}
		if len(q) == 0 {
			return base
		}
		return base + "?" + q.Encode()
	},
	"states": func() []string { return taskStates },
	"float":  func(v any) float64 { return float64(toInt64(v)) },
	"addf":   func(a, b float64) float64 { return a + b },
	"mulf":   func(a, b float64) float64 { return a * b },
	"sub":    func(a, b int) int { return a - b },
}

// roundDur prints a duration as people read it: 3.2s, 4m10s, 2h5m.
func roundDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + roundDur(-d)
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return d.Truncate(time.Second).String()
	default:
		h, m := d/time.Hour, (d%time.Hour)/time.Minute
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func toInt64(v any) int64 {
	switch n := v.(type) {
	case int:
		return int64(n)
	case int64:
		return n
	case uint64:
		return int64(n)
	case int32:
		return int64(n)
	case uint32:
		return int64(n)
	case float64:
		return int64(n)
	}
	return 0
}

// views are the pages' view functions by name, for their live streams.
func (c *Console) views() map[string]viewFunc {
	if c.viewFns == nil {
		c.viewFns = map[string]viewFunc{}
	}
	return c.viewFns
}
