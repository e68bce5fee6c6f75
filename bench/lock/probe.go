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

	"github.com/meshkit/mesh/bench/internal/machine"
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
	if busy, steal, err := machine.CPUTime(); err == nil {
		s.busy, s.steal, s.ok["machine"] = busy, steal, true
	}
	if n, err := procSyscalls("self"); err == nil {
		s.selfSys, s.ok["selfsys"] = n, true
	}
	if n, err := procSyscalls(fmt.Sprint(p.natsPID)); err == nil && p.natsPID > 0 {
		s.natsSys, s.ok["natssys"] = n, true
	}
	if d, err := machine.ProcCPU(p.natsPID); err == nil {
		s.nats, s.ok["nats"] = d, true
	}
	if d, err := machine.ProcCPU(p.etcdPID); err == nil {
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
