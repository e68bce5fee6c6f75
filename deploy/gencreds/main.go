// Command gencreds makes the credentials of the compose stack in a
// directory (deploy/secrets by default), once: an nkey seed per service
// user (cache, lock, scheduler, worker), a password for the client and the
// admin users, and auth.conf, which the NATS configuration includes: it
// defines the public nkeys and the bcrypt hashes of the passwords, so the
// servers hold no secret a client could log in with. An existing directory
// is left alone unless -force.
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

var nkeyUsers = []string{"cache", "lock", "scheduler", "worker"}
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
		fmt.Fprintf(os.Stderr, "gencreds: %s already holds credentials (-force to replace them)\n", dir)
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var conf strings.Builder
	conf.WriteString("# Made by deploy/gencreds: public nkeys and password hashes of the mesh users.\n")
	for _, u := range nkeyUsers {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return err
		}
		seed, err := kp.Seed()
		if err != nil {
			return err
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return err
		}
		// Readable by the container's unprivileged user; the directory is 0700.
		if err := os.WriteFile(filepath.Join(dir, u+".nk"), append(seed, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&conf, "%s_NKEY: %q\n", strings.ToUpper(u), pub)
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
