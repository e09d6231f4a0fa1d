package br

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"logbackup/storage"
)

// Objects at the storage root that truncate keeps while it runs.
const (
	// TruncateLockFile is BR's remote lock for `br log truncate`: a JSON
	// LockMeta (locked_at, locker_host, locker_pid, txn_id, hint). BR and
	// this tool exclude each other through it.
	TruncateLockFile = "truncating.lock"
	// TruncateJournalFile is ours: the data objects a truncate is about to
	// unlist, written before the first meta file changes and removed once
	// they are all deleted, so a rerun after a crash deletes what the
	// crashed run had unlisted but not yet deleted. BR ignores it.
	TruncateJournalFile = "truncating.pending"
)

const truncateLockHint = "another truncate may be running, or one did not exit cleanly: wait for it, or check the storage " +
	"and delete " + TruncateLockFile + " (and any " + TruncateLockFile + ".INTENT.* a crashed run left) at its root"

// lockMeta is BR's LockMeta as JSON.
type lockMeta struct {
	LockedAt   time.Time `json:"locked_at"`
	LockerHost string    `json:"locker_host"`
	LockerPID  int       `json:"locker_pid"`
	TxnID      []byte    `json:"txn_id,omitempty"`
	Hint       string    `json:"hint"`
}

func (l lockMeta) String() string {
	return fmt.Sprintf("locked at %s by host %s, pid %d", l.LockedAt.Format(time.RFC3339), l.LockerHost, l.LockerPID)
}

// acquireTruncateLock takes BR's truncating.lock with BR's protocol
// (objstore conditionalPut): nothing may exist under the lock's name as a
// prefix; write an intent truncating.lock.INTENT.<txn hex>; check again
// that our intent is the only such object; write the lock; delete the
// intent. Of two runs racing through it at most one passes its second
// check (each lists after writing its own intent, so the later lister sees
// the earlier intent), and BR and this tool see each other's intents and
// locks. release removes the lock if it is still ours; a failure is printed
// (the next run refuses and says how to clear it).
func acquireTruncateLock(ctx context.Context, env *Env, st storage.Storage) (release func(io.Writer), err error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("lock id: %w", err)
	}
	intent := TruncateLockFile + ".INTENT." + hex.EncodeToString(id[:])
	if err := onlyLockObject(ctx, st, ""); err != nil {
		return nil, err
	}
	if err := st.WriteFile(ctx, intent, nil); err != nil {
		return nil, fmt.Errorf("write %s: %w", intent, err)
	}
	intentLeft := true
	dropIntent := func(ctx context.Context) error {
		if !intentLeft {
			return nil
		}
		if err := st.Delete(ctx, intent); err != nil {
			return fmt.Errorf("delete %s: %w", intent, err)
		}
		intentLeft = false
		return nil
	}
	if err := onlyLockObject(ctx, st, intent); err != nil {
		_ = dropIntent(ctx) // best effort: the error says what to clear
		return nil, err
	}
	me := lockMeta{LockedAt: env.now(), LockerHost: env.Hostname, LockerPID: env.PID, TxnID: id[:], Hint: truncateLockHint}
	raw, err := json.Marshal(me)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", TruncateLockFile, err)
	}
	if err := st.WriteFile(ctx, TruncateLockFile, raw); err != nil {
		return nil, fmt.Errorf("write %s: %w", TruncateLockFile, err)
	}
	if err := dropIntent(ctx); err != nil {
		return nil, err
	}
	return func(w io.Writer) {
		// The caller's context may be what ended the run.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		b, err := st.ReadFile(ctx, TruncateLockFile)
		var cur lockMeta
		if err == nil && json.Unmarshal(b, &cur) == nil && bytes.Equal(cur.TxnID, id[:]) {
			err = st.Delete(ctx, TruncateLockFile)
		}
		if err != nil {
			fmt.Fprintf(w, "Warning: could not remove %s (%s); delete it before the next truncate.\n", TruncateLockFile, storage.Redact(err.Error()))
		}
	}, nil
}

// onlyLockObject fails unless the only object named with the lock's name
// as a prefix is mine ("" for none): the lock itself or another run's
// intent means someone holds, or is taking, the lock.
func onlyLockObject(ctx context.Context, st storage.Storage, mine string) error {
	var others []string
	err := st.List(ctx, TruncateLockFile, func(o storage.ObjectInfo) error {
		if o.Name != mine {
			others = append(others, o.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", TruncateLockFile, err)
	}
	if len(others) == 0 {
		return nil
	}
	holder := "intent files " + strings.Join(others, ", ")
	if others[0] == TruncateLockFile {
		if holder, err = readLock(ctx, st); err != nil {
			return err
		}
	}
	return userError(truncateLockHint, nil, "the storage is locked by another truncate (%s)", holder)
}

// readLock describes the lock holder.
func readLock(ctx context.Context, st storage.Storage) (string, error) {
	b, err := st.ReadFile(ctx, TruncateLockFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
		return "released meanwhile; try again", nil
	case err != nil:
		return "", fmt.Errorf("read %s: %w", TruncateLockFile, err)
	}
	var l lockMeta
	if err := json.Unmarshal(b, &l); err != nil {
		return "an unreadable " + TruncateLockFile, nil
	}
	return l.String(), nil
}

// readSafepoint reads BR's truncate safepoint (decimal text; 0 if none).
func readSafepoint(ctx context.Context, st storage.Storage) (uint64, error) {
	b, err := st.ReadFile(ctx, TruncateSafepointFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read %s: %w", TruncateSafepointFile, err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("decode %s: %w", TruncateSafepointFile, err)
	}
	return v, nil
}

// truncateJournal is the body of TruncateJournalFile.
type truncateJournal struct {
	Version int `json:"version"`
	// Until is the highest until of the runs that wrote it: every object
	// listed holds only entries older than it, so the meta files that could
	// still list one all have a min ts below it.
	Until      uint64   `json:"until"`
	ShiftUntil uint64   `json:"shift_until"`
	Objects    []string `json:"objects"`
}

func readJournal(ctx context.Context, st storage.Storage) (truncateJournal, error) {
	var j truncateJournal
	b, err := st.ReadFile(ctx, TruncateJournalFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
		return j, nil
	case err != nil:
		return j, fmt.Errorf("read %s: %w", TruncateJournalFile, err)
	}
	if err := json.Unmarshal(b, &j); err != nil || j.Version != 1 {
		return j, userError("check "+TruncateJournalFile+" at the storage root; delete it only if no truncate was interrupted", err,
			"unreadable %s (version %d)", TruncateJournalFile, j.Version)
	}
	return j, nil
}

func writeJournal(ctx context.Context, st storage.Storage, j truncateJournal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("encode %s: %w", TruncateJournalFile, err)
	}
	if err := st.WriteFile(ctx, TruncateJournalFile, b); err != nil {
		return fmt.Errorf("write %s: %w", TruncateJournalFile, err)
	}
	return nil
}

// forEach runs fn for 0..n-1 on up to truncateWorkers goroutines and
// returns the first error; after one, no new index starts.
func forEach(ctx context.Context, n int, fn func(context.Context, int) error) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	next := make(chan int)
	for range min(truncateWorkers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(cctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-cctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// progress prints "label: done/total (pct%)" each time another tenth is
// done, so a long run over a large storage shows it is moving.
type progress struct {
	mu          sync.Mutex
	w           io.Writer
	label       string
	total, done int
	tenth       int
}

func newProgress(w io.Writer, label string, total int) *progress {
	return &progress{w: w, label: label, total: total}
}

func (p *progress) add(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.total == 0 {
		return
	}
	if t := p.done * 10 / p.total; t > p.tenth {
		p.tenth = t
		fmt.Fprintf(p.w, "%s: %d/%d (%d%%)\n", p.label, p.done, p.total, p.done*100/p.total)
	}
}
