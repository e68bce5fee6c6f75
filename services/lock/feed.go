package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// errReconnected: the connection reconnected since the consumer was made.
var errReconnected = errors.New("the connection reconnected")

// createTimeout bounds one request to create the feed's consumer. The
// server answers in milliseconds or not at all: a request sent while
// JetStream has no meta leader is dropped.
const createTimeout = time.Second

// feed hands the bucket's messages to the mirror in stream order, through
// a consumer of its own (one replica, in memory, no acks), and makes a new
// one when the consumer is lost: no heartbeat for 2 s, deleted, a gap in
// its sequence, or the connection reconnected (messages may have been lost
// with the old connection; the old consumer's messages are dropped from
// then on, so that no barrier is seen on the view of before). Each
// consumer loads the bucket afresh (the last message of every key) into a
// new view for the mirror (mirror.reload).
//
// nats.go's ordered consumer also makes a new consumer, but resumes after
// the last message seen, which misses the markers that expired meanwhile,
// and its requests to make a new consumer wait out a fixed 10 s, and one
// sent while the cluster elects a new meta leader gets no answer, so that
// losing the node a service was connected to, when that node led JetStream,
// stopped the mirror, and every acquire, for 11 s. Here each request waits
// createTimeout and is sent again (with the same name, so a request that
// did land is not made twice) until one is answered.
type feed struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	stream string
	filter string
	name   string // of the consumers, before their serial
	mirror *mirror
	apply  func(jetstream.Msg) // hands a message to the mirror
	log    zerolog.Logger

	mu         sync.Mutex
	serial     int    // of the consumer in use; older consumers' messages are dropped
	reconnects uint64 // the connection's reconnections when the consumer in use was made
	cc         jetstream.ConsumeContext
	dseq       uint64 // consumer sequence of the last message taken

	lost   chan struct{} // the consumer in use is lost (buffered, 1)
	status chan nats.Status
	cancel context.CancelFunc
	done   chan struct{}
}

func newFeed(js jetstream.JetStream, stream, filter, name string, m *mirror, apply func(jetstream.Msg), log zerolog.Logger) *feed {
	return &feed{
		js: js, nc: js.Conn(), stream: stream, filter: filter, name: name, mirror: m, apply: apply, log: log,
		lost: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
}

// start makes the first consumer (trying until ctx ends) and keeps a
// consumer going until stop.
func (f *feed) start(ctx context.Context) error {
	f.status = f.nc.StatusChanged(nats.CONNECTED)
	if err := f.resume(ctx); err != nil {
		f.nc.RemoveStatusListener(f.status)
		return err
	}
	rctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go f.run(rctx)
	return nil
}

// stop stops the feed and removes its consumer.
func (f *feed) stop() {
	if f.cancel == nil {
		return
	}
	f.cancel()
	f.cancel = nil // stopped once
	<-f.done
	f.nc.RemoveStatusListener(f.status)
	f.mu.Lock()
	cc, name := f.cc, f.consumer()
	f.mu.Unlock()
	cc.Stop()
	<-cc.Closed()
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	_ = f.js.DeleteConsumer(ctx, f.stream, name) // else the server removes it after a minute
}

func (f *feed) run(ctx context.Context) {
	defer close(f.done)
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-f.status:
			if !ok {
				return
			}
			f.log.Info().Msg("mirror: reconnected, making a new consumer")
		case <-f.lost:
		}
		if f.resume(ctx) != nil {
			return // stopped
		}
	}
}

// consumer names the consumer in use; f.mu held.
func (f *feed) consumer() string { return fmt.Sprintf("%s_%d", f.name, f.serial) }

// lose reports the consumer of serial lost, unless it was already
// replaced; f.mu held.
func (f *feed) lose(serial int, why error) {
	if serial != f.serial {
		return
	}
	select {
	case f.lost <- struct{}{}:
		f.log.Warn().Err(why).Msg("mirror: consumer lost, making a new one")
	default:
	}
}

// resume replaces the consumer in use, if any, by a new one, trying until
// one is made or ctx ends.
func (f *feed) resume(ctx context.Context) error {
	f.mu.Lock()
	old, oldName := f.cc, f.consumer()
	f.serial++
	f.dseq = 0
	f.reconnects = f.nc.Stats().Reconnects
	serial, name := f.serial, f.consumer()
	f.mu.Unlock()
	if old != nil {
		old.Stop()
	}
	cfg := jetstream.ConsumerConfig{
		Name:              name,
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		FilterSubjects:    []string{f.filter},
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute,
		Replicas:          1,
		MemoryStorage:     true,
	}
	pause := 50 * time.Millisecond
	for {
		cc, err := f.consume(ctx, serial, cfg)
		if err == nil {
			f.mu.Lock()
			f.cc = cc
			f.mu.Unlock()
			if old != nil { // best effort: the server removes it after a minute anyway
				dctx, cancel := context.WithTimeout(ctx, createTimeout)
				defer cancel()
				_ = f.js.DeleteConsumer(dctx, f.stream, oldName)
			}
			return nil
		}
		f.log.Debug().Err(err).Str("consumer", name).Msg("mirror: making a consumer")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}

func (f *feed) consume(ctx context.Context, serial int, cfg jetstream.ConsumerConfig) (jetstream.ConsumeContext, error) {
	cons, err := f.create(ctx, cfg)
	if err != nil {
		return nil, err
	}
	f.mirror.reload()
	if cons.CachedInfo().NumPending == 0 {
		f.mirror.loaded() // an empty bucket: no message will end the load
	}
	return cons.Consume(f.handler(serial),
		jetstream.PullHeartbeat(time.Second),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
				errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, nats.ErrNoResponders) {
				f.mu.Lock()
				f.lose(serial, err)
				f.mu.Unlock()
			}
		}))
}

// create makes a consumer on the node that leads the stream, trying up
// to placements times: the server puts a consumer of one replica on any
// node of the stream, and a node catching up after a restart can hold keys
// the leader has dropped, which the consumer would show as present (it
// shows messages, not the deletions of a catch-up). While the stream has
// no leader, or past placements, a consumer anywhere is better than none.
func (f *feed) create(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	const placements = 8
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, createTimeout)
		cons, err := f.js.CreateOrUpdateConsumer(cctx, f.stream, cfg)
		if err != nil {
			cancel()
			return nil, err
		}
		stream, err := f.js.Stream(cctx, f.stream)
		if err != nil {
			cancel()
			return nil, err
		}
		leader, on := stream.CachedInfo().Cluster, cons.CachedInfo().Cluster
		if leader == nil || on == nil || leader.Leader == "" || on.Leader == leader.Leader || attempt == placements {
			cancel()
			return cons, nil
		}
		err = f.js.DeleteConsumer(cctx, f.stream, cfg.Name)
		cancel()
		if err != nil {
			return nil, err
		}
	}
}

func (f *feed) handler(serial int) func(jetstream.Msg) {
	return func(msg jetstream.Msg) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if serial != f.serial {
			return
		}
		if f.nc.Stats().Reconnects != f.reconnects {
			// A consumer made before the connection's last reconnection:
			// messages may have gone with the old connection, and a
			// barrier (catchUp) taken from it would answer from the view
			// of before. The status listener makes a new consumer; this
			// makes sure of it.
			f.lose(serial, errReconnected)
			return
		}
		meta, err := msg.Metadata()
		if err != nil {
			f.lose(serial, err)
			return
		}
		if meta.Sequence.Consumer != f.dseq+1 {
			f.lose(serial, fmt.Errorf("message %d of the consumer after %d", meta.Sequence.Consumer, f.dseq))
			return
		}
		f.dseq = meta.Sequence.Consumer
		f.apply(msg)
	}
}
