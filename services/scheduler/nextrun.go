package scheduler

import (
	"time"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/scheduler/internal/cron"
)

// nextRun is when the stream fires schedule s next after now, computed as
// nats-server computes it: a cron expression with nats-server's own parser,
// in s's time zone; an interval counted from base (the time the schedule was
// stored) rounded to the second, in steps of the interval. False if it
// cannot tell (a pattern or time zone it cannot read).
func nextRun(s ScheduleInfo, base, now time.Time) (time.Time, bool) {
	if s.EveryMs > 0 {
		every := time.Duration(s.EveryMs) * time.Millisecond
		if base.IsZero() {
			return time.Time{}, false
		}
		base = base.UTC().Round(time.Second)
		if now.Before(base) {
			return base.Add(every), true
		}
		return base.Add((now.Sub(base)/every + 1) * every), true
	}
	if s.Cron == "" {
		return time.Time{}, false
	}
	loc := time.UTC
	if s.TimeZone != "" {
		l, err := time.LoadLocation(s.TimeZone)
		if err != nil {
			return time.Time{}, false
		}
		loc = l
	}
	next, err := cron.Next(s.Cron, loc, now)
	if err != nil {
		return time.Time{}, false
	}
	return next.UTC(), true
}

// setNextRun fills s.NextRunAt from base and now (left zero if it cannot
// tell).
func setNextRun(s *ScheduleInfo, base, now time.Time) {
	if next, ok := nextRun(*s, base, now); ok {
		s.NextRunAt = bus.Time{Time: next}
	}
}
