//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package embed

import "os"

// tryLock: this system has no flock; the data directory is not locked.
func tryLock(*os.File) (held bool, err error) { return false, nil }
