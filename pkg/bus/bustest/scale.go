package bustest

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ScaleEnv is the environment variable that scales the time bounds of the
// tests: a positive number, 1 when unset. A loaded or slow machine (CI on
// two shared cores, -race) raises it, e.g. MESH_TEST_TIME_SCALE=3.
const ScaleEnv = "MESH_TEST_TIME_SCALE"

// Scale returns d multiplied by the factor in MESH_TEST_TIME_SCALE (ScaleEnv;
// default 1). A test whose point is a time bound ("the next holder gets the
// lock within 1.5 s of the expiry") asserts Scale(bound) rather than bound,
// so that one factor loosens every such bound at once on a slow machine;
// a test that merely waits for something uses an event or a generous
// deadline instead. A factor that is not a positive number panics, naming
// the variable: a misspelt setting must not pass unnoticed.
func Scale(d time.Duration) time.Duration {
	f := timeScale()
	if f == 1 {
		return d
	}
	return time.Duration(math.Round(float64(d) * f))
}

var timeScale = sync.OnceValue(func() float64 {
	f, err := parseScale(os.Getenv(ScaleEnv))
	if err != nil {
		panic(err)
	}
	return f
})

// parseScale reads the factor: empty is 1.
func parseScale(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("bustest: %s=%q: want a positive number, such as 1 or 2.5", ScaleEnv, s)
	}
	return f, nil
}
