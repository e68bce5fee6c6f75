package cron_test

import (
	"testing"
	"time"

	"github.com/meshkit/mesh/services/scheduler/internal/cron"
)

func TestNext(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 7, 21, 3, 4, 0, time.UTC) // a Monday
	for _, c := range []struct {
		pattern string
		loc     *time.Location
		want    time.Time
	}{
		{"0 */5 * * * *", nil, time.Date(2026, 12, 7, 21, 5, 0, 0, time.UTC)},
		{"30 * * * * *", nil, time.Date(2026, 12, 7, 21, 3, 30, 0, time.UTC)},
		{"@hourly", nil, time.Date(2026, 12, 7, 22, 0, 0, 0, time.UTC)},
		{"@daily", nil, time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)},
		{"0 0 8 * * *", paris, time.Date(2026, 12, 8, 7, 0, 0, 0, time.UTC)}, // 08:00 in Paris is 07:00 UTC in winter
		{"0 0 9 * * sat", nil, time.Date(2026, 12, 12, 9, 0, 0, 0, time.UTC)},
	} {
		got, err := cron.Next(c.pattern, c.loc, at)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("Next(%q) = %v, %v; want %v", c.pattern, got.UTC(), err, c.want)
		}
	}
	if _, err := cron.Next("0 * * *", nil, at); err == nil {
		t.Error("a 4-field pattern was taken")
	}
}
