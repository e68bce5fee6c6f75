package bustest

import (
	"strings"
	"testing"
	"time"
)

func TestParseScale(t *testing.T) {
	for in, want := range map[string]float64{"": 1, " ": 1, "1": 1, "2.5": 2.5, " 3 ": 3, "0.5": 0.5} {
		if got, err := parseScale(in); err != nil || got != want {
			t.Errorf("parseScale(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "-1", "x", "NaN", "Inf", "2s"} {
		if _, err := parseScale(in); err == nil || !strings.Contains(err.Error(), ScaleEnv) {
			t.Errorf("parseScale(%q): err = %v, want one naming %s", in, err, ScaleEnv)
		}
	}
}

// Scale multiplies by the factor of the environment, read once.
func TestScale(t *testing.T) {
	f := timeScale()
	if got, want := Scale(time.Second), time.Duration(float64(time.Second)*f); got != want {
		t.Fatalf("Scale(1s) = %v with factor %v, want %v", got, f, want)
	}
}
