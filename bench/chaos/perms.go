package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// permCase is one thing a user must, or must not, be allowed to do.
type permCase struct {
	what    string
	allowed bool
	try     func(nc *nats.Conn) error
}

// violations collects the server's permission errors of a connection.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

// seen waits up to d for a permission error naming subject.
func (v *violations) seen(subject string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		v.mu.Lock()
		for _, e := range v.errs {
			if strings.Contains(e, `"`+subject+`"`) && strings.Contains(strings.ToLower(e), "permissions violation") {
				v.mu.Unlock()
				return true
			}
		}
		v.mu.Unlock()
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publish tries a publish and tells whether the server refused it.
func publish(v *violations, subject string, data []byte) func(*nats.Conn) error {
	return func(nc *nats.Conn) error {
		if err := nc.Publish(subject, data); err != nil {
			return err
		}
		if err := nc.Flush(); err != nil {
			return err
		}
		if v.seen(subject, 500*time.Millisecond) {
			return errRefused
		}
		return nil
	}
}

// request tries a request: refused, or answered (a reply, whatever it says).
func request(v *violations, subject string, data []byte) func(*nats.Conn) error {
	return func(nc *nats.Conn) error {
		_, err := nc.Request(subject, data, 2*time.Second)
		if v.seen(subject, 200*time.Millisecond) {
			return errRefused
		}
		return err
	}
}

// subscribe tries a subscription.
func subscribe(v *violations, subject string) func(*nats.Conn) error {
	return func(nc *nats.Conn) error {
		sub, err := nc.SubscribeSync(subject)
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
		if err := nc.Flush(); err != nil {
			return err
		}
		if v.seen(subject, 500*time.Millisecond) {
			return errRefused
		}
		return nil
	}
}

var errRefused = errors.New("refused by the server")

// runPerms connects as each user given and checks what it may do.
func runPerms(ctx context.Context, urls string, clientPass, cacheSeed string) error {
	failed := 0
	check := func(user string, opts []nats.Option, cases func(v *violations) []permCase) error {
		v := &violations{}
		opts = append(opts, nats.ErrorHandler(v.handler), nats.Name("permission check "+user))
		nc, err := nats.Connect(urls, opts...)
		if err != nil {
			return fmt.Errorf("connect as %s: %w", user, err)
		}
		defer nc.Close()
		for _, c := range cases(v) {
			err := c.try(nc)
			refused := errors.Is(err, errRefused)
			verdict := "ok  "
			if refused == c.allowed {
				verdict = "FAIL"
				failed++
			}
			state := "allowed"
			if refused {
				state = "refused"
			} else if err != nil {
				state = "allowed (" + err.Error() + ")"
			}
			fmt.Printf("%s %-6s %-62s %s\n", verdict, user, c.what, state)
		}
		return nil
	}
	err := check("client", []nats.Option{nats.UserInfo("client", clientPass), nats.CustomInboxPrefix(clientInbox)}, func(v *violations) []permCase {
		return []permCase{
			{"request mesh.cache.stats", true, request(v, "mesh.cache.stats", []byte("{}"))},
			{"request mesh.lock.list", true, request(v, "mesh.lock.list", []byte("{}"))},
			{"request mesh.scheduler.queues", true, request(v, "mesh.scheduler.queues", []byte("{}"))},
			{"request $SRV.PING (discovery)", true, request(v, "$SRV.PING", nil)},
			{"subscribe mesh.events.>", true, subscribe(v, "mesh.events.>")},
			{"publish a heartbeat mesh.heartbeat.cache.evil", false, publish(v, "mesh.heartbeat.cache.evil", []byte(`{"id":"evil"}`))},
			{"write the lock bucket $KV.MESH_LOCKS.chaos", false, publish(v, "$KV.MESH_LOCKS.chaos", []byte("x"))},
			{"JetStream request to write $KV.MESH_LOCKS.chaos", false, request(v, "$KV.MESH_LOCKS.chaos", []byte("x"))},
			{"pull a task: $JS.API.CONSUMER.MSG.NEXT.MESH_TASKS.default", false, request(v, "$JS.API.CONSUMER.MSG.NEXT.MESH_TASKS.default", []byte(`{"batch":1}`))},
			{"store a task in mesh.tasks.default.<id> (the client's direct submit)", true, publish(v, "mesh.tasks.default.chaos-perms", nil)},
			{"write a task record mesh.history.default.x (worker protocol)", false, publish(v, "mesh.history.default.x", []byte("{}"))},
			{"delete a stream: $JS.API.STREAM.DELETE.KV_MESH_LOCKS", false, request(v, "$JS.API.STREAM.DELETE.KV_MESH_LOCKS", nil)},
			{"subscribe mesh.tasks.> (read tasks)", false, subscribe(v, "mesh.tasks.>")},
			{"subscribe mesh.cache.get (serve the cache)", false, subscribe(v, "mesh.cache.get")},
			{"publish to another client's inbox _INBOX.x", false, publish(v, "_INBOX.x", nil)},
			{"subscribe _INBOX.> (read every user's replies)", false, subscribe(v, "_INBOX.>")},
			{"subscribe _INBOX_lock.> (read the lock service's replies)", false, subscribe(v, "_INBOX_lock.>")},
		}
	})
	if err != nil {
		return err
	}
	if cacheSeed != "" {
		opt, err := nats.NkeyOptionFromSeed(cacheSeed)
		if err != nil {
			return err
		}
		err = check("cache", []nats.Option{opt, nats.CustomInboxPrefix("_INBOX_cache")}, func(v *violations) []permCase {
			return []permCase{
				{"request mesh.cache.stats", true, request(v, "mesh.cache.stats", []byte("{}"))},
				{"write the lock bucket $KV.MESH_LOCKS.chaos", false, publish(v, "$KV.MESH_LOCKS.chaos", []byte("x"))},
				{"read the lock bucket $JS.API.DIRECT.GET.KV_MESH_LOCKS", false, request(v, "$JS.API.DIRECT.GET.KV_MESH_LOCKS", []byte(`{"last_by_subj":"$KV.MESH_LOCKS.x"}`))},
				{"write the task states $KV.MESH_TASK_STATE.x", false, publish(v, "$KV.MESH_TASK_STATE.x", []byte("x"))},
				{"subscribe _INBOX_client.> (read the clients' replies)", false, subscribe(v, "_INBOX_client.>")},
			}
		})
		if err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d permission checks failed", failed)
	}
	fmt.Println("permissions: every check passed")
	return nil
}
