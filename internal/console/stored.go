package console

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meshkit/mesh/pkg/bus"
)

// Stored history: the task and lock pages show what happened before the
// console started by reading the stream MESH_EVENTS (an ordered consumer
// filtered by subject, from an instant, at most storedScan events), merged
// with the events the hub heard since. A read is kept storedKeep, so a
// live page does not read the stream at every render; a user who may not
// read the stream (or a mesh without it) gets the live events only.
const (
	storedScan  = 10000
	storedKeep  = 30 * time.Second
	lockHistory = time.Hour
	// taskHistory is how far back a task's events are looked for when its
	// state is gone (the stream keeps events 24 h by default).
	taskHistory = 24 * time.Hour
)

// storedRead is one read of the stored events: the events kept, or why
// there are none.
type storedRead struct {
	Events []event
	Cut    bool // more events matched the filter than storedScan
	Err    error
	// NotStored: the stream does not store these events (task events
	// without --store-task-events), so none was read.
	NotStored bool
}

// stored returns the stored events on filter since the instant that match,
// at most n (the first n, or the last n if newest), read again at most
// every storedKeep.
func (c *Console) stored(ctx context.Context, filter string, since time.Time, newest bool, n int, match func(event) bool, key string) storedRead {
	r, _ := c.storedReads.get(key+"\x00"+strconv.FormatBool(newest), time.Time{}, func() (storedRead, error) {
		return c.readStored(ctx, filter, since, newest, n, match), nil
	})
	return r
}

// readStored reads the stored events on filter since the instant. If more
// than storedScan match and newest, it reads again from a later instant,
// as much later as the rate of those events says.
func (c *Console) readStored(ctx context.Context, filter string, since time.Time, newest bool, n int, match func(event) bool) storedRead {
	ctx, cancel := context.WithTimeout(ctx, min(c.cfg.Timeout, 3*time.Second))
	defer cancel()
	js, err := jetstream.New(c.nc)
	if err != nil {
		return storedRead{Err: err}
	}
	open := func(since time.Time) (jetstream.Consumer, uint64, error) {
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, InactiveThreshold: 30 * time.Second, MaxResetAttempts: 1,
			DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since}
		cons, err := js.OrderedConsumer(ctx, bus.EventStream, cfg)
		if err != nil {
			return nil, 0, err
		}
		return cons, cons.CachedInfo().NumPending, nil
	}
	cons, pending, err := open(since)
	if err != nil {
		return storedRead{Err: err}
	}
	if pending > storedScan && newest {
		c.dropConsumer(js, cons)
		span := time.Since(since)
		later := time.Now().Add(-time.Duration(float64(span) * storedScan / float64(pending) * 0.9))
		if cons, pending, err = open(later); err != nil {
			return storedRead{Err: err}
		}
	}
	defer c.dropConsumer(js, cons)
	r := storedRead{Cut: pending > storedScan}
	if pending == 0 {
		return r
	}
	batch := int(min(pending, storedScan))
	msgs, err := cons.Fetch(batch, jetstream.FetchMaxWait(time.Until(deadline(ctx))))
	if err != nil {
		return storedRead{Err: err}
	}
	for m := range msgs.Messages() {
		if ev := parseEvent(m.Subject(), m.Data()); match(ev) {
			r.Events = append(r.Events, ev)
			if newest && len(r.Events) > n {
				r.Events = r.Events[1:]
			}
		}
	}
	if !newest && len(r.Events) > n {
		r.Events, r.Cut = r.Events[:n], true
	}
	return r
}

// dropConsumer deletes a read's consumer at once rather than after its
// inactivity threshold.
func (c *Console) dropConsumer(js jetstream.JetStream, cons jetstream.Consumer) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if info := cons.CachedInfo(); info != nil {
		_ = js.DeleteConsumer(ctx, bus.EventStream, info.Name)
	}
}

func deadline(ctx context.Context) time.Time {
	d, ok := ctx.Deadline()
	if !ok {
		return time.Now().Add(3 * time.Second)
	}
	return d.Add(-100 * time.Millisecond)
}

// mergeEvents returns the stored and the live events, each once, oldest
// first, at most the last n.
func mergeEvents(stored, live []event, n int) []event {
	seen := map[string]bool{}
	var out []event
	for _, evs := range [][]event{stored, live} {
		for _, ev := range evs {
			k := ev.Subject + "\x00" + ev.Source + "\x00" + ev.Time.Format(time.RFC3339Nano) + "\x00" + string(ev.Data)
			if !seen[k] {
				seen[k] = true
				out = append(out, ev)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b event) int { return a.Time.Compare(b.Time) })
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}
