package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/meshkit/mesh/pkg/bus"
)

// accountsConf holds the users of `mesh up --auth` and their permissions:
// the accounts block of the compose stack's NATS configuration.
//
//go:embed accounts.conf
var accountsConf string

// The users of the mesh, as in deploy/gencreds: an nkey per service user,
// a password for the client and admin users.
var (
	nkeyUsers     = []string{"cache", "lock", "scheduler", "worker", "console"}
	passwordUsers = []string{"client", "admin"}
)

// meshAuth holds the credentials of `mesh up --auth`, kept in a directory
// (made at the first run, reused after): <user>.nk, an nkey seed per
// service user, and <user>.password for the client and admin users.
type meshAuth struct {
	dir  string
	pubs map[string]string // nkey user -> public key
	pws  map[string]string // password user -> password
}

// loadAuth reads the credentials in dir, making those that are missing.
func loadAuth(dir string) (*meshAuth, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("--auth-dir: %w", err)
	}
	m := &meshAuth{dir: dir, pubs: map[string]string{}, pws: map[string]string{}}
	for _, u := range nkeyUsers {
		seed, err := readOrMake(filepath.Join(dir, u+".nk"), func() (string, error) {
			kp, err := nkeys.CreateUser()
			if err != nil {
				return "", err
			}
			seed, err := kp.Seed()
			return string(seed), err
		})
		if err != nil {
			return nil, err
		}
		kp, err := nkeys.FromSeed([]byte(seed))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, u+".nk"), err)
		}
		if m.pubs[u], err = kp.PublicKey(); err != nil {
			return nil, err
		}
	}
	for _, u := range passwordUsers {
		pw, err := readOrMake(filepath.Join(dir, u+".password"), func() (string, error) {
			b := make([]byte, 20)
			if _, err := rand.Read(b); err != nil {
				return "", err
			}
			return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b)), nil
		})
		if err != nil {
			return nil, err
		}
		m.pws[u] = pw
	}
	return m, nil
}

// readOrMake returns the first line of a file, writing make's value there
// (mode 0600) first if the file does not exist.
func readOrMake(path string, make func() (string, error)) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		v, err := make()
		if err != nil {
			return "", err
		}
		return v, os.WriteFile(path, []byte(v+"\n"), 0o600)
	}
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if v == "" || strings.ContainsAny(v, "\"\\\n") {
		return "", fmt.Errorf("%s: not a credential written by mesh up --auth", path)
	}
	return v, nil
}

// configure adds the mesh's account, users and permissions to the embedded
// server's options.
func (m *meshAuth) configure(o *server.Options) error {
	var conf strings.Builder
	for _, u := range nkeyUsers {
		fmt.Fprintf(&conf, "%s_NKEY: %q\n", strings.ToUpper(u), m.pubs[u])
	}
	for _, u := range passwordUsers {
		fmt.Fprintf(&conf, "%s_PASSWORD: %q\n", strings.ToUpper(u), m.pws[u])
	}
	conf.WriteString(accountsConf)
	parsed := &server.Options{}
	if err := parsed.ProcessConfigString(conf.String()); err != nil {
		return fmt.Errorf("the embedded server's users: %w", err)
	}
	o.Accounts, o.Users, o.Nkeys = parsed.Accounts, parsed.Users, parsed.Nkeys
	return nil
}

// options returns base with user's credentials and inbox prefix.
func (m *meshAuth) options(user string, base bus.Options) bus.Options {
	base.Creds, base.NKey, base.User, base.Password, base.Token = "", "", "", "", ""
	if _, ok := m.pubs[user]; ok {
		base.NKey = filepath.Join(m.dir, user+".nk")
	} else {
		base.User, base.Password = user, m.pws[user]
	}
	if user != "admin" {
		base.InboxPrefix = "_INBOX_" + user
	}
	return base
}

// serviceConn connects a service of `mesh up --auth` with its own user
// (sys, which the compose stack does not run, with admin's).
func (m *meshAuth) serviceConn(base bus.Options) func(string) (*nats.Conn, error) {
	return func(service string) (*nats.Conn, error) {
		user := service
		if _, ok := m.pubs[service]; !ok {
			user = "admin"
		}
		opts := m.options(user, base)
		opts.Name = base.Name + " " + service
		ctx, cancel := context.WithTimeout(context.Background(), bus.DefaultTimeout)
		defer cancel()
		return bus.Connect(ctx, opts)
	}
}

// tour rewrites the lines of the tour for the users of --auth: the nats
// CLI lines use a context of the client user (saved by the first lines;
// the admin's for sys, which the client user may not call), mesh worker
// the worker's nkey.
func (m *meshAuth) tour(url string, lines []string) []string {
	out := []string{
		fmt.Sprintf(`nats context save mesh --server %s --user client --password "$(cat %s)" --inbox-prefix _INBOX_client`,
			url, filepath.Join(m.dir, "client.password")),
		fmt.Sprintf(`nats context save mesh-admin --server %s --user admin --password "$(cat %s)"   # everything`,
			url, filepath.Join(m.dir, "admin.password")),
	}
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "nats req mesh.sys."): // sys runs as admin (the client user has no sys subjects)
			l = "nats --context mesh-admin " + strings.TrimPrefix(l, "nats ")
		case strings.HasPrefix(l, "nats "):
			l = "nats --context mesh " + strings.TrimPrefix(l, "nats ")
		case strings.HasPrefix(l, "mesh worker "):
			l = fmt.Sprintf("mesh worker --nats %s --nkey %s --inbox-prefix _INBOX_worker %s", url, filepath.Join(m.dir, "worker.nk"), strings.TrimPrefix(l, "mesh worker "))
		}
		out = append(out, l)
	}
	return out
}
