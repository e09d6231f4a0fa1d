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
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
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

// The truncate lock's lease: the holder rewrites it every
// truncateLeaseRenew while it runs; once it is truncateLease old (plus
// lockClockSkew, for another host's clock), the holder is taken for dead.
const (
	truncateLease      = 2 * time.Minute
	truncateLeaseRenew = truncateLease / 4
	lockClockSkew      = time.Minute
)

const truncateLockHint = "wait for the running truncate to finish. A truncate that died leaves the lock to the next one: on its own host " +
	"a rerun takes it over at once, elsewhere once its lease has expired. A lock without a lease (BR's, or a tool's that wrote none) " +
	"is only released by hand: once sure its holder is gone, delete " + TruncateLockFile + " (and any " + TruncateLockFile + ".INTENT.*) at the storage root"

// lockMeta is BR's LockMeta as JSON, with the lease this tool adds (BR
// ignores the fields it does not know). The intents this tool writes hold
// one too, so that a run killed between its intent and its lock does not
// block the next for good.
type lockMeta struct {
	LockedAt   time.Time `json:"locked_at"`
	LockerHost string    `json:"locker_host"`
	LockerPID  int       `json:"locker_pid"`
	TxnID      []byte    `json:"txn_id,omitempty"`
	Hint       string    `json:"hint"`
	// ProcStart tells the holder's process from a later one given the
	// same pid (Linux: /proc/<pid>/stat's start time); "" if unknown.
	ProcStart string `json:"locker_proc_start,omitempty"`
	// Machine is the kernel's boot id and the pid namespace the pid is
	// in: a pid means something only there (two containers may share a
	// host name, and each has its own pids). "" if unknown.
	Machine string `json:"locker_machine,omitempty"`
	// LeaseUntil is when the holder, unless it renews, is taken for dead.
	LeaseUntil time.Time `json:"lease_until,omitempty"`
}

func (l lockMeta) String() string {
	s := fmt.Sprintf("locked at %s by host %s, pid %d", l.LockedAt.Format(time.RFC3339), l.LockerHost, l.LockerPID)
	if !l.LeaseUntil.IsZero() {
		s += ", lease until " + l.LeaseUntil.Format(time.RFC3339)
	}
	return s
}

// truncateLock is a held truncating.lock.
type truncateLock struct {
	st   storage.Storage
	env  *Env
	me   lockMeta
	stop context.CancelFunc // ends the renewals
	done chan struct{}
	mu   sync.Mutex
	lost error // set once the lock was found to be someone else's
	// TakenOver describes the dead holder whose lock this run took over
	// ("" if none).
	TakenOver string
}

// holderGone reports whether the process that wrote l is surely gone, and
// why: on this host its pid is not running (or runs another program
// started later); anywhere, its lease expired more than lockClockSkew ago.
// A record without a lease (BR's) is never judged gone.
func holderGone(env *Env, l lockMeta) (bool, string) {
	if l.LeaseUntil.IsZero() {
		return false, ""
	}
	if l.LockerHost == env.Hostname && l.LockerPID > 0 && l.Machine != "" && l.Machine == machineID() {
		if !processAlive(l.LockerPID, l.ProcStart) {
			return true, fmt.Sprintf("its process %d on this host is gone", l.LockerPID)
		}
		return false, ""
	}
	if expired := l.LeaseUntil.Add(lockClockSkew); env.now().After(expired) {
		return true, fmt.Sprintf("its lease expired at %s", l.LeaseUntil.Format(time.RFC3339))
	}
	return false, ""
}

// machineID is this process's kernel boot and pid namespace, "" where
// /proc cannot tell (then only the lease can free a lock).
func machineID() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(boot)) + "/" + ns
}

// processAlive reports whether pid runs, and, when start is known, is the
// same process (a pid is reused by later processes).
func processAlive(pid int, start string) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	if start == "" {
		return true
	}
	now := procStart(pid)
	return now == "" || now == start
}

// procStart is pid's start time in clock ticks since boot (field 22 of
// /proc/<pid>/stat), "" where /proc cannot tell.
func procStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// acquireTruncateLock takes BR's truncating.lock with BR's protocol
// (objstore conditionalPut): nothing may exist under the lock's name as a
// prefix; write an intent truncating.lock.INTENT.<txn hex>; check again
// that our intent is the only such object; write the lock; delete the
// intent. Of two runs racing through it at most one passes its second
// check (each lists after writing its own intent, so the later lister sees
// the earlier intent), and BR and this tool see each other's intents and
// locks.
//
// One addition: a lock or intent whose holder is gone (holderGone) does not
// count. It must be the same object, from the same holder, at both checks,
// and is overwritten (the lock) or deleted (intents) only after the second;
// a third run that arrives meanwhile sees our intent or our lock and stops,
// so a takeover keeps the at-most-one guarantee.
//
// While held, the lease is renewed; a renewal that finds another holder's
// lock records the loss, which check reports before the next destructive
// step.
func acquireTruncateLock(ctx context.Context, env *Env, st storage.Storage) (*truncateLock, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("lock id: %w", err)
	}
	intent := TruncateLockFile + ".INTENT." + hex.EncodeToString(id[:])
	now := env.now()
	me := lockMeta{LockedAt: now, LockerHost: env.Hostname, LockerPID: env.PID, TxnID: id[:], Hint: truncateLockHint,
		ProcStart: procStart(env.PID), Machine: machineID(), LeaseUntil: now.Add(truncateLease)}
	raw, err := json.Marshal(me)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", TruncateLockFile, err)
	}
	stale, err := lockObjects(ctx, env, st, "", nil)
	if err != nil {
		return nil, err
	}
	if err := st.WriteFile(ctx, intent, raw); err != nil {
		return nil, lockFailed(fmt.Errorf("write %s: %w", intent, err))
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
	if _, err := lockObjects(ctx, env, st, intent, stale); err != nil {
		_ = dropIntent(ctx) // best effort: a dead run's intent is taken over
		return nil, err
	}
	if err := st.WriteFile(ctx, TruncateLockFile, raw); err != nil {
		_ = dropIntent(ctx)
		return nil, lockFailed(fmt.Errorf("write %s: %w", TruncateLockFile, err))
	}
	l := &truncateLock{st: st, env: env, me: me, done: make(chan struct{})}
	var taken []string
	// undo gives the lock up after a failure: best effort, a rerun takes
	// over whatever stays.
	undo := func(err error) (*truncateLock, error) {
		_ = st.Delete(ctx, TruncateLockFile)
		_ = dropIntent(ctx)
		return nil, lockFailed(err)
	}
	for name, why := range stale {
		if name != TruncateLockFile {
			if err := st.Delete(ctx, name); err != nil {
				return undo(fmt.Errorf("delete %s, left by a dead run: %w", name, err))
			}
		}
		taken = append(taken, name+" ("+why+")")
	}
	sort.Strings(taken)
	l.TakenOver = strings.Join(taken, ", ")
	if err := dropIntent(ctx); err != nil {
		return undo(err)
	}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	l.stop = stop
	go l.renew(rctx)
	return l, nil
}

// renew rewrites the lease while the lock is held and still ours.
func (l *truncateLock) renew(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(truncateLeaseRenew)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := l.renewOnce(ctx); err != nil {
			l.mu.Lock()
			if l.lost == nil {
				l.lost = err
			}
			l.mu.Unlock()
			return
		}
	}
}

func (l *truncateLock) renewOnce(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, truncateLeaseRenew)
	defer cancel()
	if err := l.mine(rctx); err != nil {
		return err
	}
	l.mu.Lock()
	l.me.LeaseUntil = l.env.now().Add(truncateLease)
	me := l.me
	l.mu.Unlock()
	raw, err := json.Marshal(me)
	if err != nil {
		return fmt.Errorf("encode %s: %w", TruncateLockFile, err)
	}
	if err := l.st.WriteFile(rctx, TruncateLockFile, raw); err != nil {
		// Not lost yet: the lease runs a while; the next renewal retries.
		return nil
	}
	return nil
}

// mine fails unless the lock in storage is still this run's.
func (l *truncateLock) mine(ctx context.Context) error {
	b, err := l.st.ReadFile(ctx, TruncateLockFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
		return userError(truncateLostHint, nil, "%s is gone: another run took it over", TruncateLockFile)
	case err != nil:
		return fmt.Errorf("read %s: %w", TruncateLockFile, err)
	}
	var cur lockMeta
	if json.Unmarshal(b, &cur) != nil || !bytes.Equal(cur.TxnID, l.me.TxnID) { // TxnID never changes
		return userError(truncateLostHint, nil, "%s is no longer this run's (now %s): another run took it over", TruncateLockFile, cur)
	}
	return nil
}

// lockFailed is a storage failure while taking the lock: nothing else
// was touched yet.
func lockFailed(err error) error {
	return userError("nothing was changed. Fix what failed, then run the same truncate again: it takes over what this run left of "+
		TruncateLockFile+" once this process has exited", err, "cannot take the truncate lock")
}

const truncateLostHint = "this run stalled past its lease and another truncate took the storage over; the storage is consistent: " +
	"run br stream metadata and verify, and truncate again if needed"

// check fails if the lock was lost: before each destructive step.
func (l *truncateLock) check(ctx context.Context) error {
	if l == nil {
		return nil // a dry run holds none
	}
	l.mu.Lock()
	lost := l.lost
	l.mu.Unlock()
	if lost != nil {
		return lost
	}
	return l.mine(ctx)
}

// valid fails once the lock was found lost or this run's own lease ran
// out by its own clock (renewals failing, or the process stalled): a
// taker waits lockClockSkew longer, so a holder that stops here never
// acts beside it. No storage request: it runs before every delete.
func (l *truncateLock) valid() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	lost, until := l.lost, l.me.LeaseUntil
	l.mu.Unlock()
	if lost != nil {
		return lost
	}
	if now := l.env.now(); now.After(until) {
		return userError(truncateLostHint, nil, "this run's lease on %s ran out at %s (it could not renew it): stopping before another run may take it over",
			TruncateLockFile, until.Format(time.RFC3339))
	}
	return nil
}

// release stops the renewals and removes the lock if it is still ours; a
// failure is printed with what the next run will do about it.
func (l *truncateLock) release(w io.Writer) {
	l.stop()
	<-l.done
	// The run's context may be what ended it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := l.mine(ctx)
	if err == nil {
		err = l.st.Delete(ctx, TruncateLockFile)
	} else if HintOf(err) == truncateLostHint {
		return // someone else's now: not ours to remove
	}
	if err != nil {
		fmt.Fprintf(w, "Warning: could not remove %s (%s). Nothing is lost: the next truncate takes it over, on this host once this process has exited, "+
			"elsewhere after %s.\n", TruncateLockFile, storage.Redact(err.Error()), l.me.LeaseUntil.Add(lockClockSkew).Format(time.RFC3339)) // renewals ended
	}
}

// lockObjects lists the objects named with the lock's name as a prefix,
// other than mine ("" for none), and fails if one is held: the lock or
// another run's intent means someone holds, or is taking, the lock, unless
// its holder is gone. It returns those whose holder is gone, with why.
// With want (the second check), every such object must be one of want,
// from the same holder: anything new is a run racing this one.
func lockObjects(ctx context.Context, env *Env, st storage.Storage, mine string, want map[string]string) (map[string]string, error) {
	var names []string
	err := st.List(ctx, TruncateLockFile, func(o storage.ObjectInfo) error {
		if o.Name != mine {
			names = append(names, o.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", TruncateLockFile, err)
	}
	stale := map[string]string{}
	for _, name := range names {
		rec, desc, err := readLockObject(ctx, st, name)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			continue // released meanwhile
		}
		gone, why := holderGone(env, *rec)
		_, known := want[name]
		if !gone || want != nil && !known {
			return nil, userError(truncateLockHint, nil, "the storage is locked by another truncate (%s: %s)", name, desc)
		}
		stale[name] = why + "; " + desc
	}
	if want != nil {
		for name, why := range stale {
			if want[name] != why {
				return nil, userError(truncateLockHint, nil, "the storage is locked by another truncate (%s changed while this run took it over)", name)
			}
		}
	}
	return stale, nil
}

// readLockObject reads the lock or an intent; nil if it is gone. An
// object this tool did not write (BR's, empty, or unreadable) gets an
// empty record: no lease, so never judged gone.
func readLockObject(ctx context.Context, st storage.Storage, name string) (*lockMeta, string, error) {
	b, err := st.ReadFile(ctx, name)
	switch {
	case errors.Is(err, storage.ErrNotExist):
		return nil, "", nil
	case err != nil:
		return nil, "", fmt.Errorf("read %s: %w", name, err)
	}
	var l lockMeta
	if len(b) == 0 {
		return &lockMeta{}, "an intent with no holder recorded (BR's, or a run taking the lock)", nil
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return &lockMeta{}, "unreadable", nil
	}
	return &l, l.String(), nil
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

// truncateTempFile is a local storage's in-flight write of an object
// truncate writes at the storage root ("<name>.<hex>.tmp", fileblob's):
// a truncate killed mid-write strands it. List hides such files.
var truncateTempFile = regexp.MustCompile(`^(` + regexp.QuoteMeta(TruncateLockFile) + `(\.INTENT\.[0-9a-f]+)?|` +
	regexp.QuoteMeta(TruncateJournalFile) + `|` + regexp.QuoteMeta(TruncateSafepointFile) + `)\.[0-9a-f]+\.tmp$`)

// cleanTempFiles removes, on a local storage, the temp files a killed
// truncate left at the root (under the lock, only truncate writes those
// objects), and reports stranded meta file temps, which an agent writing
// right now may own.
func cleanTempFiles(st storage.Storage, w io.Writer) {
	loc, err := storage.ParseURL(st.String())
	if err != nil || loc.Scheme != "local" {
		return // object stores write whole objects: no temp files
	}
	entries, err := os.ReadDir(loc.Path)
	if err != nil {
		fmt.Fprintf(w, "Note: could not look for temp files left by a killed truncate: %v\n", err)
		return
	}
	for _, e := range entries {
		if e.Type().IsRegular() && truncateTempFile.MatchString(e.Name()) {
			if err := os.Remove(filepath.Join(loc.Path, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintf(w, "Note: could not remove %s, left by a killed truncate: %v\n", e.Name(), err)
				continue
			}
			fmt.Fprintf(w, "Removed %s, left by a killed truncate.\n", e.Name())
		}
	}
	metas, err := os.ReadDir(filepath.Join(loc.Path, filepath.FromSlash(logfile.MetaDir)))
	if err != nil {
		return
	}
	var n int
	for _, e := range metas {
		if strings.HasSuffix(e.Name(), ".tmp") && strings.Contains(e.Name(), ".meta.") {
			n++
		}
	}
	if n > 0 {
		fmt.Fprintf(w, "Note: %s holds %d temp files of meta files (an interrupted write, or one in flight); restore ignores them; "+
			"delete those older than a flush once no agent or truncate runs.\n", logfile.MetaDir, n)
	}
}
