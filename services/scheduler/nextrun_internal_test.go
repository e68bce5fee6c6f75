package scheduler

import (
	"testing"
	"time"

	"github.com/meshkit/mesh/pkg/bus"
)

// The next run of a schedule is computed as nats-server computes it: an
// interval from the schedule's record rounded to the second, a cron
// expression in its time zone.
func TestNextRun(t *testing.T) {
	stored := time.Date(2026, 12, 7, 20, 0, 0, 300e6, time.UTC)
	now := time.Date(2026, 12, 7, 20, 2, 30, 0, time.UTC)
	for _, c := range []struct {
		s    ScheduleInfo
		base time.Time
		want time.Time // zero: cannot tell
	}{
		// Rounded to the second: 20:00:00.300 counts from 20:00:00.
		{ScheduleInfo{EveryMs: 60000}, stored, time.Date(2026, 12, 7, 20, 3, 0, 0, time.UTC)},
		// 20:00:00.700 counts from 20:00:01.
		{ScheduleInfo{EveryMs: 60000}, stored.Add(400 * time.Millisecond), time.Date(2026, 12, 7, 20, 3, 1, 0, time.UTC)},
		// Exactly on a tick: the next one.
		{ScheduleInfo{EveryMs: 30000}, stored, time.Date(2026, 12, 7, 20, 3, 0, 0, time.UTC)},
		// Stored after now (clocks apart): the first tick.
		{ScheduleInfo{EveryMs: 5000}, now.Add(time.Second), now.Add(6 * time.Second)},
		{ScheduleInfo{EveryMs: 5000}, time.Time{}, time.Time{}},
		{ScheduleInfo{Cron: "0 0 8 * * *", TimeZone: "Europe/Paris"}, stored, time.Date(2026, 12, 8, 7, 0, 0, 0, time.UTC)},
		{ScheduleInfo{Cron: "@hourly"}, stored, time.Date(2026, 12, 7, 21, 0, 0, 0, time.UTC)},
		{ScheduleInfo{Cron: "0 0 8 * * *", TimeZone: "Nowhere/Atlantis"}, stored, time.Time{}},
		{ScheduleInfo{Cron: "every tuesday"}, stored, time.Time{}},
		{ScheduleInfo{}, stored, time.Time{}},
	} {
		got, ok := nextRun(c.s, c.base, now)
		if ok != !c.want.IsZero() || !got.Equal(c.want) {
			t.Errorf("%+v from %v: next run %v, %v; want %v", c.s, c.base, got, ok, c.want)
		}
		s := c.s
		setNextRun(&s, c.base, now)
		if want := (bus.Time{Time: c.want}); s.NextRunAt.String() != want.String() {
			t.Errorf("%+v: NextRunAt %v, want %v", c.s, s.NextRunAt, want)
		}
	}
}
