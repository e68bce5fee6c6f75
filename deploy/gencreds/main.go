// Command gencreds makes the credentials of the compose stack in a
// directory (deploy/secrets by default), once: an nkey seed per service
// user (cache, lock, scheduler, worker, console), a password for the client and the
// admin users, and auth.conf, which the NATS configuration includes: it
// defines the public nkeys and the bcrypt hashes of the passwords, so the
// servers hold no secret a client could log in with. An existing directory
// is left alone unless -force, but for the nkey users it lacks (a user
// added since it was made): their seeds are made and their public keys
// appended to its auth.conf.
package main

import (
	"crypto/rand"
	"encoding/base32"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nkeys"
	"golang.org/x/crypto/bcrypt"
)

var nkeyUsers = []string{"cache", "lock", "scheduler", "worker", "console"}
var passwordUsers = []string{"client", "admin"}

// routeHosts are the NATS servers of compose.yaml.
var routeHosts = []string{"n1", "n2", "n3"}

// password returns 32 random lower-case base32 characters (160 bits).
func password() (string, error) {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b)), nil
}

func main() {
	dir := flag.String("dir", "deploy/secrets", "directory to write the credentials to")
	force := flag.Bool("force", false, "replace existing credentials")
	flag.Parse()
	if err := run(*dir, *force); err != nil {
		fmt.Fprintln(os.Stderr, "gencreds:", err)
		os.Exit(1)
	}
}

func run(dir string, force bool) error {
	if _, err := os.Stat(filepath.Join(dir, "auth.conf")); err == nil && !force {
		return addMissing(dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var conf strings.Builder
	conf.WriteString("# Made by deploy/gencreds: public nkeys and password hashes of the mesh users.\n")
	for _, u := range nkeyUsers {
		line, err := makeNkey(dir, u)
		if err != nil {
			return err
		}
		conf.WriteString(line)
	}
	for _, u := range passwordUsers {
		pw, err := password()
		if err != nil {
			return err
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), 11)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, u+".password"), []byte(pw+"\n"), 0o600); err != nil {
			return err
		}
		fmt.Fprintf(&conf, "%s_PASSWORD: %q\n", strings.ToUpper(u), string(hash))
	}
	// The routes between the servers authenticate with a password of their
	// own, in clear here since the route URLs must carry it: auth.conf is
	// mounted in the NATS containers only.
	route, err := password()
	if err != nil {
		return err
	}
	fmt.Fprintf(&conf, "ROUTE_PASSWORD: %q\n", route)
	fmt.Fprintf(&conf, "ROUTES: [")
	for i, h := range routeHosts {
		if i > 0 {
			conf.WriteString(", ")
		}
		fmt.Fprintf(&conf, "%q", "nats-route://route:"+route+"@"+h+":6222")
	}
	conf.WriteString("]\n")
	return os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(conf.String()), 0o644)
}

// makeNkey writes a new seed for user in dir and returns its line of
// auth.conf.
func makeNkey(dir, user string) (string, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", err
	}
	seed, err := kp.Seed()
	if err != nil {
		return "", err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return "", err
	}
	// Readable by the container's unprivileged user; the directory is 0700.
	if err := os.WriteFile(filepath.Join(dir, user+".nk"), append(seed, '\n'), 0o644); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s_NKEY: %q\n", strings.ToUpper(user), pub), nil
}

// addMissing adds to the credentials in dir the nkey users they lack.
func addMissing(dir string) error {
	path := filepath.Join(dir, "auth.conf")
	conf, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var added []string
	var lines strings.Builder
	for _, u := range nkeyUsers {
		if strings.Contains(string(conf), strings.ToUpper(u)+"_NKEY:") {
			continue
		}
		line, err := makeNkey(dir, u)
		if err != nil {
			return err
		}
		lines.WriteString(line)
		added = append(added, u)
	}
	if len(added) == 0 {
		fmt.Fprintf(os.Stderr, "gencreds: %s already holds credentials (-force to replace them)\n", dir)
		return nil
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(lines.String()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "gencreds: %s: added the users %s\n", dir, strings.Join(added, ", "))
	return nil
}
