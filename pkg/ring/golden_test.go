package ring

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.txt")

// goldenRings are fixed rings whose placements are checked in, so that any
// change to hashing or ranking (which would make processes of different
// versions disagree) fails a test.
func goldenRings(t *testing.T) map[string]*Ring {
	members := []Member{
		{ID: "cache-1"}, {ID: "cache-2"}, {ID: "cache-3", Weight: 2},
		{ID: "cache-4", Weight: 0.5}, {ID: "cache-5"}, {ID: "κ-6"},
	}
	return map[string]*Ring{
		"hrw":     mustNew(t, members, Config{}),
		"bounded": mustNew(t, members, Config{LoadFactor: 1}),
		"p1000":   mustNew(t, members, Config{Partitions: 1000}),
	}
}

func goldenKeys() []string {
	keys := []string{"", "a", "user:42", "κλειδί", strings.Repeat("x", 600)}
	for i := range 60 {
		keys = append(keys, fmt.Sprintf("key-%d", i))
	}
	return keys
}

// goldenLines renders one line per ring version and per (ring, key):
// ring, quoted key, partition and the first 4 owners.
func goldenLines(rings map[string]*Ring) []string {
	var lines []string
	for _, name := range []string{"hrw", "bounded", "p1000"} {
		r := rings[name]
		lines = append(lines, fmt.Sprintf("%s version %016x", name, r.Version()))
		for _, k := range goldenKeys() {
			lines = append(lines, fmt.Sprintf("%s %s %d %s", name, strconv.Quote(k), r.Partition(k), strings.Join(r.Owners(k, 4), ",")))
		}
	}
	return lines
}

func TestGolden(t *testing.T) {
	path := filepath.Join("testdata", "golden.txt")
	got := goldenLines(goldenRings(t))
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		want = append(want, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d golden lines, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("got  %s\nwant %s", got[i], want[i])
		}
	}
}
