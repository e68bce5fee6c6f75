package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

// A row is one system in one scenario: every round of it, and the round of
// median ops/s, whose figures the table shows.
type row struct {
	sc     scenario
	system string
	rounds []cell // in the order they ran
	med    *cell
}

// aggregate groups the cells by scenario and system, in the order they ran.
func aggregate(cells []cell) []row {
	var rows []row
	for _, c := range cells {
		i := slices.IndexFunc(rows, func(r row) bool { return r.sc.id == c.sc.id && r.system == c.system })
		if i < 0 {
			rows = append(rows, row{sc: c.sc, system: c.system})
			i = len(rows) - 1
		}
		rows[i].rounds = append(rows[i].rounds, c)
	}
	for i := range rows {
		byOps := make([]*cell, len(rows[i].rounds))
		for k := range rows[i].rounds {
			byOps[k] = &rows[i].rounds[k]
		}
		slices.SortFunc(byOps, func(a, b *cell) int { return cmp.Compare(a.ops, b.ops) })
		rows[i].med = byOps[(len(byOps)-1)/2]
	}
	return rows
}

// find returns the row of system sys in scenario id.
func find(rows []row, id, sys string) *row {
	for i := range rows {
		if rows[i].sc.id == id && rows[i].system == sys {
			return &rows[i]
		}
	}
	return nil
}

func (r *row) opsPerSec() float64 { return r.med.opsPerSec() }

// overtakes adds up the overtakes and grants of every round.
func (r *row) overtakes() (over, grants int, lead time.Duration) {
	for _, c := range r.rounds {
		over += c.overtakes
		grants += c.ops
		lead = max(lead, c.maxLead)
	}
	return over, grants, lead
}

func (r *row) opsRange() string {
	lo, hi := r.rounds[0].opsPerSec(), r.rounds[0].opsPerSec()
	for _, c := range r.rounds {
		lo, hi = min(lo, c.opsPerSec()), max(hi, c.opsPerSec())
	}
	return fmt.Sprintf("%.0f–%.0f", lo, hi)
}

func printTable(w io.Writer, rows []row, rounds int) {
	fmt.Fprintln(w, "| scenario | system | ops/s | ops/s, all rounds | p50 | p99 | FIFO overtakes | vs etcd | vs KV floor |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		vsEtcd, vsKV := "-", "-"
		if e := find(rows, r.sc.id, etcdName); e != nil {
			vsEtcd = ratio(r.opsPerSec(), e.opsPerSec())
		}
		if k := find(rows, r.sc.id, kvName); k != nil {
			vsKV = ratio(r.opsPerSec(), k.opsPerSec())
		}
		over := "-"
		if r.sc.contended {
			n, grants, lead := r.overtakes()
			over = fmt.Sprintf("%d of %d", n, grants)
			if n > 0 {
				over += fmt.Sprintf(" (head start ≤ %s)", micros(lead))
			}
		}
		c := r.med
		fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", r.sc.title, r.system, c.opsPerSec(), r.opsRange(),
			micros(quantile(c.lat, 0.5)), micros(quantile(c.lat, 0.99)), over, vsEtcd, vsKV)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "ops/s: acquire+release cycles per second; contended: grants (handoffs) per second. ops/s, p50, p99 and the ratios are those of the round of median ops/s (of %d); \"all rounds\" is the range. p50/p99: of one acquire+release cycle; contended: handoff latency, from the holder's release call starting to the next holder's acquire call returning. FIFO overtakes (contended, all rounds): grants that went to a contender after another contender, whose acquire call had started later, had been granted; the head start is the largest time by which an overtaken call had started first.\n", rounds)
}

// report prints, per row, the resource use and the contended details of
// its median round, then the goals; it fails when a call failed, a cell did
// nothing or two holders held the lock at once, in any round.
func report(w io.Writer, cfg config, rows []row) error {
	var failed []string
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Per row, its median round (CPU time per operation of each process over the window, and the CPU the rest of the machine used meanwhile; messages are nats-server's totals, so they include the other connections' traffic, which is nil here):")
	fmt.Fprintln(w)
	for _, r := range rows {
		c := r.med
		ops := float64(c.ops)
		var parts []string
		b, a := c.before, c.after
		if ops > 0 {
			cpu := func(label string, ok bool, d time.Duration) {
				if ok {
					parts = append(parts, fmt.Sprintf("%s %s", label, micros(time.Duration(float64(d)/ops))))
				}
			}
			cpu("CPU: bench process", a.ok["self"] && b.ok["self"], a.self-b.self)
			if c.system != etcdName {
				cpu("nats-server", a.ok["nats"] && b.ok["nats"], a.nats-b.nats)
			} else {
				cpu("etcd", a.ok["etcd"] && b.ok["etcd"], a.etcd-b.etcd)
			}
			if a.ok["natsmsgs"] && b.ok["natsmsgs"] && c.system != etcdName {
				parts = append(parts, fmt.Sprintf("nats-server msgs in %.1f, out %.1f per op", (a.natsIn-b.natsIn)/ops, (a.natsOut-b.natsOut)/ops))
			}
			if a.ok["selfsys"] && b.ok["selfsys"] {
				sys := fmt.Sprintf("read+write syscalls per op: bench process %.1f", (a.selfSys-b.selfSys)/ops)
				if a.ok["natssys"] && b.ok["natssys"] && c.system != etcdName {
					sys += fmt.Sprintf(", nats-server %.1f", (a.natsSys-b.natsSys)/ops)
				}
				parts = append(parts, sys)
			}
			if a.ok["etcdmetrics"] && b.ok["etcdmetrics"] && c.system == etcdName {
				fs := a.etcdFsyncs - b.etcdFsyncs
				parts = append(parts, fmt.Sprintf("etcd WAL fsyncs %.2f, raft commits %.2f per op", fs/ops, (a.etcdCommits-b.etcdCommits)/ops))
				if fs > 0 {
					parts = append(parts, fmt.Sprintf("mean WAL fsync %s", micros(time.Duration((a.etcdFsyncSecs-b.etcdFsyncSecs)/fs*float64(time.Second)))))
				}
			}
		}
		if a.ok["machine"] && b.ok["machine"] {
			// What the rest of the machine did meanwhile: the figures of a
			// cell are only as good as this is small.
			secs := c.window.Seconds()
			others := (a.busy - b.busy) - (a.self - b.self) - (a.nats - b.nats) - (a.etcd - b.etcd)
			parts = append(parts, fmt.Sprintf("other processes %.0f%% of a CPU, steal %.0f%%", max(0, others.Seconds())/secs*100, (a.steal-b.steal).Seconds()/secs*100))
		}
		if len(c.acq) > 0 {
			parts = append(parts, fmt.Sprintf("acquire call p50 %s, release call p50 %s", micros(quantile(c.acq, 0.5)), micros(quantile(c.rel, 0.5))))
		}
		if c.sc.contended {
			parts = append(parts, fmt.Sprintf("acquire wait p50 %s p99 %s", micros(quantile(c.wait, 0.5)), micros(quantile(c.wait, 0.99))))
			var inv int
			for _, x := range r.rounds {
				inv += x.inversions
			}
			parts = append(parts, fmt.Sprintf("grants out of the system's own line order (token inversions, all rounds) %d", inv))
			var leads []time.Duration
			sniffed, arrOver, arrLead := 0, 0, 0
			for _, x := range r.rounds {
				leads = append(leads, x.leads...)
				if x.sniffed >= 0 {
					sniffed += x.sniffed
					arrOver += x.arrOver
					arrLead = max(arrLead, x.arrLead)
				}
			}
			if len(leads) > 0 {
				slices.Sort(leads)
				over1ms := len(leads) - sort.Search(len(leads), func(i int) bool { return leads[i] > time.Millisecond })
				parts = append(parts, fmt.Sprintf("head starts of the overtaken (all rounds): p50 %s, max %s, %d over 1 ms", micros(quantile(leads, 0.5)), micros(leads[len(leads)-1]), over1ms))
			}
			if sniffed > 0 {
				parts = append(parts, fmt.Sprintf("overtakes in the order the acquire requests reached nats-server (all rounds): %d of %d grants (largest: by %d requests)", arrOver, sniffed, arrLead))
			}
			if c.attempts > 0 && ops > 0 {
				parts = append(parts, fmt.Sprintf("%.1f Create calls per grant", float64(c.attempts)/ops))
			}
		}
		if len(r.rounds) > 1 {
			var each []string
			for _, x := range r.rounds {
				each = append(each, fmt.Sprintf("%.0f", x.opsPerSec()))
			}
			parts = append(parts, "ops/s by round "+strings.Join(each, ", "))
		}
		for _, x := range r.rounds {
			name := fmt.Sprintf("%s / %s, round %d", x.sc.title, x.system, x.round)
			if x.errs > 0 {
				parts = append(parts, fmt.Sprintf("round %d: %d failed calls, the first: %v", x.round, x.errs, x.firstErr))
				failed = append(failed, fmt.Sprintf("%s: %d failed calls", name, x.errs))
			}
			if x.ops == 0 {
				failed = append(failed, fmt.Sprintf("%s: %v", name, errNoOps))
			}
			if x.violations > 0 {
				parts = append(parts, fmt.Sprintf("round %d: MUTUAL EXCLUSION VIOLATED %d times", x.round, x.violations))
				failed = append(failed, fmt.Sprintf("%s: two holders at once %d times", name, x.violations))
			}
		}
		fmt.Fprintf(w, "- %s, %s: %s\n", r.sc.title, r.system, strings.Join(parts, "; "))
	}

	fmt.Fprintln(w)
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	for _, id := range []string{"serial", "serial-new"} {
		m, e := find(rows, id, meshName), find(rows, id, etcdName)
		if m != nil && e != nil && e.med.ops > 0 {
			q := m.opsPerSec() / e.opsPerSec()
			fmt.Fprintf(w, "- goal, %s: mesh lock ≥ %.1f× etcd ops/s: %.2f×, %s\n", m.sc.title, cfg.serialGoal, q, verdict(q >= cfg.serialGoal))
		}
	}
	if m, e := find(rows, "contended", meshName), find(rows, "contended", etcdName); m != nil && e != nil && e.med.ops > 0 {
		q := m.opsPerSec() / e.opsPerSec()
		n, grants, _ := m.overtakes()
		fmt.Fprintf(w, "- goal, %s: mesh lock ≥ %.1f× etcd handoffs/s with 0 FIFO overtakes: %.2f×, %d overtakes in %d grants, %s\n",
			m.sc.title, cfg.contendedGoal, q, n, grants, verdict(q >= cfg.contendedGoal && n == 0))
	}
	var over []string
	for _, r := range rows {
		if r.system != meshName {
			continue
		}
		if k := find(rows, r.sc.id, kvName); k != nil && r.med.ops > 0 {
			over = append(over, fmt.Sprintf("%s %.2f×", r.sc.title, k.opsPerSec()/r.opsPerSec()))
		}
	}
	if len(over) > 0 {
		fmt.Fprintf(w, "- service overhead (NATS KV floor ops/s ÷ mesh lock ops/s): %s\n", strings.Join(over, ", "))
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s", strings.Join(failed, "; "))
	}
	return nil
}
