package embed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LockFile is the file in a data directory that a running server holds an
// exclusive lock on, and that names its process.
const LockFile = "mesh.lock"

// ErrDataDirInUse: another running server holds the data directory. Two
// servers on one store would each grant the same locks and corrupt the
// store's state files.
var ErrDataDirInUse = errors.New("embed: the data directory is in use")

// DataDirInUseError says which directory is held and by which process.
// It matches ErrDataDirInUse.
type DataDirInUseError struct {
	Dir string
	PID int // 0 when the holder has not written it yet
}

func (e *DataDirInUseError) Error() string {
	holder := "another process"
	if e.PID > 0 {
		holder = "process " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("the data directory %s is in use by %s (a running mesh or NATS server)", e.Dir, holder)
}

// Is makes errors.Is(err, ErrDataDirInUse) true.
func (e *DataDirInUseError) Is(target error) bool { return target == ErrDataDirInUse }

// dataLock is an exclusive advisory lock (flock) on a data directory's
// LockFile, held for the server's lifetime. The operating system drops it
// when the process ends, however it ends: a crash leaves no stale lock.
type dataLock struct{ f *os.File }

// lockDataDir creates dir if need be and locks it, or returns a
// *DataDirInUseError naming the holder.
func lockDataDir(dir string) (*dataLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("embed: data directory: %w", err)
	}
	path := filepath.Join(dir, LockFile)
	// Not O_TRUNC: the file names the holder, if any, until locked.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("embed: data directory lock: %w", err)
	}
	held, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("embed: data directory lock %s: %w", path, err)
	}
	if held {
		b, _ := os.ReadFile(path)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		f.Close()
		abs, aerr := filepath.Abs(dir)
		if aerr != nil {
			abs = dir
		}
		return nil, &DataDirInUseError{Dir: abs, PID: pid}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dataLock{f: f}, nil
}

// release drops the lock. The file stays: removing it could let two
// processes each lock a different file of the same name.
func (l *dataLock) release() {
	if l == nil {
		return
	}
	_ = l.f.Truncate(0)
	l.f.Close() // closing the last descriptor releases the flock
}
