package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Instance is one running instance of a service, as found by Discover.
type Instance struct {
	Info  micro.Info
	Stats micro.Stats
}

// Discover asks every running service instance (or those of the named
// service) for its info and stats over the micro protocol, and returns what
// answered, sorted by name then id. It waits until ctx ends or until quiet
// has passed without a new answer after the first one.
func Discover(ctx context.Context, nc *nats.Conn, name string, quiet time.Duration) ([]Instance, error) {
	// One reply subject per request: a server that lets services answer
	// only the requests they got (allow_responses) lets each answer a reply
	// subject once.
	inbox := nc.NewInbox()
	replies := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox+".*", replies)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	for _, v := range []micro.Verb{micro.InfoVerb, micro.StatsVerb} {
		subj, err := micro.ControlSubject(v, name, "")
		if err != nil {
			return nil, err
		}
		if err := nc.PublishRequest(subj, inbox+"."+v.String(), nil); err != nil {
			return nil, fmt.Errorf("bus: discover: %w", err)
		}
	}
	byID := map[string]*Instance{}
	var timer <-chan time.Time
	for {
		select {
		case m := <-replies:
			var probe struct {
				Type string `json:"type"`
				ID   string `json:"id"`
			}
			if json.Unmarshal(m.Data, &probe) != nil || probe.ID == "" {
				continue
			}
			in := byID[probe.ID]
			if in == nil {
				in = &Instance{}
				byID[probe.ID] = in
			}
			switch probe.Type {
			case micro.InfoResponseType:
				_ = json.Unmarshal(m.Data, &in.Info)
			case micro.StatsResponseType:
				_ = json.Unmarshal(m.Data, &in.Stats)
			}
			timer = time.After(quiet)
		case <-timer:
			return sorted(byID), nil
		case <-ctx.Done():
			return sorted(byID), nil
		}
	}
}

func sorted(byID map[string]*Instance) []Instance {
	out := make([]Instance, 0, len(byID))
	for _, in := range byID {
		if in.Info.Name == "" {
			in.Info.ServiceIdentity = in.Stats.ServiceIdentity
		}
		out = append(out, *in)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Info.Name != out[j].Info.Name {
			return out[i].Info.Name < out[j].Info.Name
		}
		return out[i].Info.ID < out[j].Info.ID
	})
	return out
}
