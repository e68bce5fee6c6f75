package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Options are the connection options of every mesh process. The zero value
// connects to nats://127.0.0.1:4222 without credentials.
type Options struct {
	URL      string // one URL or several separated by commas; zero: nats://127.0.0.1:4222
	Name     string // client name shown by the server's monitoring
	Creds    string // credentials file (JWT and nkey seed)
	NKey     string // nkey seed file
	User     string
	Password string
	Token    string
	TLSCA    string // CA file to verify the server
	TLSCert  string // client certificate file (with TLSKey)
	TLSKey   string
	// InboxPrefix replaces _INBOX as the prefix of the connection's reply
	// subjects, so that a server can let each user subscribe to its own
	// replies only (e.g. _INBOX_client.> rather than _INBOX.>). Zero: _INBOX.
	InboxPrefix string
	// Retry makes Connect wait for a server that is not up yet (until ctx
	// ends) instead of failing at once. Services retry; commands do not.
	Retry bool
	// Logger receives disconnect, reconnect and asynchronous error events.
	Logger zerolog.Logger
	// Extra options applied last, e.g. nats.InProcessServer.
	Extra []nats.Option
}

// DefaultURL is where Connect goes when Options.URL is empty.
const DefaultURL = "nats://127.0.0.1:4222"

// Connect connects to NATS and stays connected: once connected it reconnects
// forever, with exponential backoff from 50 ms to 2 s plus jitter, buffering
// publishes meanwhile. Disconnects, reconnects and asynchronous errors are
// logged. Connect returns when the connection is up, or fails when ctx ends
// first (or at once on an error, unless Options.Retry is set).
func Connect(ctx context.Context, o Options) (*nats.Conn, error) {
	url := o.URL
	if url == "" {
		url = DefaultURL
	}
	log := o.Logger
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(backoff),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err == nil || nc.IsClosed() { // closed on purpose
				return
			}
			log.Warn().Err(err).Msg("nats disconnected; reconnecting")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats error")
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Debug().Msg("nats connection closed") }),
	}
	if o.Retry {
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKey)
		if err != nil {
			return nil, fmt.Errorf("bus: nkey seed %s: %w", o.NKey, err)
		}
		opts = append(opts, opt)
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.TLSCert != "" || o.TLSKey != "" {
		if o.TLSCert == "" || o.TLSKey == "" {
			return nil, errors.New("bus: a TLS client certificate needs both a cert and a key file")
		}
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	opts = append(opts, o.Extra...)

	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connecting to %s: %w", url, err)
	}
	connected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(connected)
	if nc.IsConnected() {
		return nc, nil
	}
	select {
	case <-connected:
		return nc, nil
	case <-ctx.Done():
		last := nc.LastError()
		nc.Close()
		if last != nil {
			return nil, fmt.Errorf("bus: connecting to %s: %w (last error: %v)", url, ctx.Err(), last)
		}
		return nil, fmt.Errorf("bus: connecting to %s: %w", url, ctx.Err())
	}
}

func backoff(attempt int) time.Duration {
	d := 2 * time.Second
	if attempt < 6 {
		d = 50 * time.Millisecond << attempt
	}
	return d + rand.N(d/4+1)
}
