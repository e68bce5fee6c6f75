package main

import (
	"sync"
	"time"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/services/lock"
	"github.com/nats-io/nats.go"
)

// sniffer subscribes (outside the service's queue group) to the acquire
// subject and notes the order in which nats-server relays the requests: the
// order in which the lock service receives them too. It tells whether an
// overtake happened before a request reached nats-server (in the client) or
// after (in the service, before its write to the bucket).
type sniffer struct {
	mu    sync.Mutex
	n     int64
	order map[sniffKey][]int64 // name, worker -> arrival indexes, in order
}

type sniffKey struct {
	name  string
	owner string
}

func newSniffer(nc *nats.Conn) (*sniffer, error) {
	s := &sniffer{order: map[sniffKey][]int64{}}
	_, err := nc.Subscribe(lock.SubjectAcquire, func(m *nats.Msg) {
		var req lock.AcquireRequest
		if bus.DetectCodec(m.Header, m.Data).Unmarshal(m.Data, &req) != nil {
			return
		}
		s.mu.Lock()
		k := sniffKey{req.Name, req.Owner}
		s.order[k] = append(s.order[k], s.n)
		s.n++
		s.mu.Unlock()
	})
	if err == nil {
		err = nc.Flush()
	}
	return s, err
}

// match sets the arrival of every grant of name, pairing each worker's
// grants in order with its requests in order (one request per acquire: the
// SDK sends another only after an hour of waiting). It reports whether
// every grant could be matched.
func (s *sniffer) match(name string, all []grant) bool {
	byWorker := map[int][]int{}
	for i, g := range all {
		byWorker[g.worker] = append(byWorker[g.worker], i)
	}
	// The subscription may still be handing over the last requests.
	for try := 0; ; try++ {
		s.mu.Lock()
		ok := true
		for w, idx := range byWorker {
			if len(s.order[sniffKey{name, meshOwner(w)}]) != len(idx) {
				ok = false
			}
		}
		if ok {
			break
		}
		s.mu.Unlock()
		if try == 100 {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer s.mu.Unlock()
	for w, idx := range byWorker {
		arr := s.order[sniffKey{name, meshOwner(w)}]
		// A worker's grants are in the order it made its requests.
		for k, i := range idx {
			all[i].arrival = arr[k]
		}
	}
	return true
}
