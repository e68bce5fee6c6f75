package console

import (
	"fmt"
	"html/template"
	"math"
	"strings"
	"time"
)

// palette colours the series of a chart, in order.
var palette = []string{"#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"}

// Chart geometry, in SVG units.
const (
	chartW, chartH         = 480.0, 120.0
	padL, padR, padT, padB = 44.0, 8.0, 8.0, 18.0
)

// svgChart draws a chart as inline SVG: one polyline per series over the
// chart's span, the y axis from zero to the largest value, and a legend.
func svgChart(c chart) template.HTML {
	var b strings.Builder
	end := time.Now()
	start := end.Add(-c.Span)
	top := 0.0
	n := 0
	for _, s := range c.Series {
		for _, p := range s.Points {
			top = math.Max(top, p.V)
			n++
		}
	}
	if top == 0 {
		top = 1
	}
	top = niceCeil(top)
	fmt.Fprintf(&b, `<figure class="chart"><figcaption>%s</figcaption>`, template.HTMLEscapeString(c.Title))
	fmt.Fprintf(&b, `<svg viewBox="0 0 %g %g" role="img" aria-label="%s">`, chartW, chartH, template.HTMLEscapeString(c.Title))
	x0, x1, y0, y1 := padL, chartW-padR, chartH-padB, padT
	for _, f := range []float64{0, 0.5, 1} {
		y := y0 + (y1-y0)*f
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="grid"/>`, x0, y, x1, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="axis" text-anchor="end">%s</text>`, x0-4, y+3, axisLabel(top*f))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="axis">-%s</text>`, x0, chartH-4, roundDur(c.Span))
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="axis" text-anchor="end">now</text>`, x1, chartH-4)
	if n == 0 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="axis" text-anchor="middle">no samples yet</text>`, (x0+x1)/2, (y0+y1)/2)
	}
	span := end.Sub(start).Seconds()
	for i, s := range c.Series {
		var pts []string
		for _, p := range s.Points {
			if p.T.Before(start) {
				continue
			}
			x := x0 + (x1-x0)*p.T.Sub(start).Seconds()/span
			y := y0 + (y1-y0)*p.V/top
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
		}
		color := palette[i%len(palette)]
		if len(pts) == 1 {
			var x, y float64
			fmt.Sscanf(pts[0], "%f,%f", &x, &y)
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>`, x, y, color)
		} else if len(pts) > 1 {
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, color, strings.Join(pts, " "))
		}
	}
	b.WriteString(`</svg><div class="legend">`)
	for i, s := range c.Series {
		last := ""
		if len(s.Points) > 0 {
			last = axisLabel(s.Points[len(s.Points)-1].V)
		}
		fmt.Fprintf(&b, `<span><i style="background:%s"></i>%s <b>%s</b></span>`, palette[i%len(palette)], template.HTMLEscapeString(s.Name), last)
	}
	b.WriteString(`</div></figure>`)
	return template.HTML(b.String())
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func axisLabel(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 10:
		return fmt.Sprintf("%.0f", v)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
