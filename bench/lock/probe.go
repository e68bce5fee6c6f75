package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// probe reads, at the edges of each window, what the processes involved
// spent: CPU time of this process (client and lock service), of
// nats-server and of etcd; the messages nats-server handled; etcd's WAL
// fsyncs and committed proposals. Every source is optional.
type probe struct {
	natsMon  string // nats-server monitoring URL (http://host:port), or ""
	etcdURL  string // etcd client URL, whose /metrics is read, or ""
	natsPID  int
	etcdPID  int
	http     *http.Client
	warnings []string
}

type sample struct {
	self, nats, etcd time.Duration // CPU time, user + system
	busy             time.Duration // CPU time of the whole machine, every CPU, not idle
	steal            time.Duration // CPU time the hypervisor gave to other guests
	selfSys, natsSys float64       // read and write system calls (syscr + syscw of /proc/PID/io)
	natsIn, natsOut  float64       // messages nats-server received and sent
	etcdFsyncs       float64       // etcd_disk_wal_fsync_duration_seconds_count
	etcdFsyncSecs    float64       // etcd_disk_wal_fsync_duration_seconds_sum
	etcdCommits      float64       // etcd_server_proposals_committed_total
	ok               map[string]bool
}

func newProbe(natsMon, etcdURL string, natsPID, etcdPID int) *probe {
	return &probe{natsMon: natsMon, etcdURL: etcdURL, natsPID: natsPID, etcdPID: etcdPID,
		http: &http.Client{Timeout: 2 * time.Second}}
}

func (p *probe) sample() sample {
	s := sample{ok: map[string]bool{}}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		s.ok["self"] = true
	}
	if busy, steal, err := machineCPU(); err == nil {
		s.busy, s.steal, s.ok["machine"] = busy, steal, true
	}
	if n, err := procSyscalls("self"); err == nil {
		s.selfSys, s.ok["selfsys"] = n, true
	}
	if n, err := procSyscalls(fmt.Sprint(p.natsPID)); err == nil && p.natsPID > 0 {
		s.natsSys, s.ok["natssys"] = n, true
	}
	if d, err := procCPU(p.natsPID); err == nil {
		s.nats, s.ok["nats"] = d, true
	}
	if d, err := procCPU(p.etcdPID); err == nil {
		s.etcd, s.ok["etcd"] = d, true
	}
	if p.natsMon != "" {
		var v struct {
			InMsgs  float64 `json:"in_msgs"`
			OutMsgs float64 `json:"out_msgs"`
		}
		if err := p.getJSON(p.natsMon+"/varz", &v); err == nil {
			s.natsIn, s.natsOut, s.ok["natsmsgs"] = v.InMsgs, v.OutMsgs, true
		}
	}
	if p.etcdURL != "" {
		if m, err := p.metrics(p.etcdURL + "/metrics"); err == nil {
			s.etcdFsyncs, s.etcdCommits, s.ok["etcdmetrics"] = m["etcd_disk_wal_fsync_duration_seconds_count"], m["etcd_server_proposals_committed_total"], true
			s.etcdFsyncSecs = m["etcd_disk_wal_fsync_duration_seconds_sum"]
		}
	}
	return s
}

func (p *probe) getJSON(url string, v any) error {
	resp, err := p.http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// metrics reads the unlabelled samples of a Prometheus text page.
func (p *probe) metrics(url string) (map[string]float64, error) {
	resp, err := p.http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = f
		}
	}
	return out, sc.Err()
}

// procCPU is the user + system CPU time of process pid so far.
func procCPU(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// procSyscalls is the number of read and write system calls process pid
// ("self" for this one) made so far.
func procSyscalls(pid string) (float64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/io")
	if err != nil {
		return 0, err
	}
	var n float64
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "syscr" || k == "syscw") {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, err
			}
			n += f
		}
	}
	return n, nil
}

// machineCPU reads the first line of /proc/stat: the busy CPU time of the
// machine (all but idle, iowait and steal) and the steal time.
func machineCPU() (busy, steal time.Duration, err error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, fmt.Errorf("/proc/stat: empty")
	}
	fs := strings.Fields(sc.Text())
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected format")
	}
	var v [8]int64 // user nice system idle iowait irq softirq steal
	for i := range v {
		if v[i], err = strconv.ParseInt(fs[i+1], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
	}
	const clkTck = 100
	b := v[0] + v[1] + v[2] + v[5] + v[6]
	return time.Duration(b) * time.Second / clkTck, time.Duration(v[7]) * time.Second / clkTck, nil
}

// natsInfo is what nats-server's /varz says of its version and JetStream.
type natsInfo struct {
	Version   string `json:"version"`
	JetStream struct {
		Config struct {
			StoreDir     string        `json:"store_dir"`
			SyncInterval time.Duration `json:"sync_interval"`
			SyncAlways   bool          `json:"sync_always"`
		} `json:"config"`
	} `json:"jetstream"`
}

func (p *probe) natsVarz(ctx context.Context) (natsInfo, error) {
	var v natsInfo
	if p.natsMon == "" {
		return v, fmt.Errorf("no -nats-monitor")
	}
	err := p.getJSON(p.natsMon+"/varz", &v)
	return v, err
}
