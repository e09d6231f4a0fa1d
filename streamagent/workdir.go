package streamagent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// workDir is this agent process's own directory for spilled buffers, under
// the configured temp dir: <TempDir>/store-<id>-<random>/, one
// subdirectory per task incarnation. It holds an exclusive flock on
// .owner for the life of the process, so that
//   - two agents (a second playground, another user's agent, a restarted
//     one) never share or remove each other's files, and
//   - what a crashed process left behind is recognised by the lock no one
//     holds, and removed by the next agent that starts there.
type workDir struct {
	path string
	lock *os.File
}

const ownerFile = ".owner"

// claimWorkDir creates this process's directory under base and removes the
// directories of agents that are gone (their lock is free).
func claimWorkDir(base string, store uint64) (*workDir, error) {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("create temp dir %s: %w", base, err)
	}
	sweepAbandoned(base)
	path, err := os.MkdirTemp(base, fmt.Sprintf("store-%d-", store))
	if err != nil {
		return nil, fmt.Errorf("create the agent's temp dir under %s: %w", base, err)
	}
	lock, err := os.OpenFile(filepath.Join(path, ownerFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		os.RemoveAll(path)
		return nil, fmt.Errorf("lock the agent's temp dir %s: %w", path, err)
	}
	fmt.Fprintf(lock, "pid %d\n", os.Getpid())
	return &workDir{path: path, lock: lock}, nil
}

// sweepAbandoned removes agent directories under base whose owner is gone.
// A directory whose lock is held belongs to a live process and is left
// alone; so is anything that does not look like ours.
func sweepAbandoned(base string) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "store-") {
			continue
		}
		dir := filepath.Join(base, e.Name())
		f, err := os.OpenFile(filepath.Join(dir, ownerFile), os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			// Being created right now by another process, or not ours:
			// either way not ours to remove.
			continue
		}
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			os.RemoveAll(dir) // its owner is gone; we hold the lock while removing
		}
		f.Close()
	}
}

// release removes the directory (everything spilled is either flushed or
// rescanned by whoever observes next) and drops the lock.
func (w *workDir) release() {
	if w == nil {
		return
	}
	os.RemoveAll(w.path)
	w.lock.Close()
}
