package br

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"logbackup/storage"
)

// deadPID is the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func writeLockObject(t *testing.T, f *logFixture, name string, l lockMeta) {
	t.Helper()
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.WriteFile(f.ctx, name, b); err != nil {
		t.Fatal(err)
	}
}

// TestTruncateLockTakeover: a lock (or intent) whose holder is gone — its
// process on this host exited, or its pid now runs a later process, or, on
// another host, its lease expired — is taken over and the run goes on; a
// live holder's, or one with no lease (BR's), is refused naming it.
func TestTruncateLockTakeover(t *testing.T) {
	now := time.Now()
	f := newLogFixture(t)
	f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	f.checkpoint(20)
	f.env.Now = func() time.Time { return now }
	dead := deadPID(t)
	self := procStart(os.Getpid())
	if self == "" || machineID() == "" {
		t.Skip("no /proc: pids cannot be told apart")
	}
	lease := now.Add(time.Minute)
	here := machineID()
	cases := []struct {
		name   string
		object string
		l      lockMeta
		takes  string // "" : refused
		refuse string
	}{
		{"dead process on this host", TruncateLockFile,
			lockMeta{LockerHost: f.env.Hostname, LockerPID: dead, Machine: here, TxnID: []byte{1}, LeaseUntil: lease}, "is gone", ""},
		{"dead pid, same host name, another container", TruncateLockFile,
			lockMeta{LockerHost: f.env.Hostname, LockerPID: dead, Machine: "other-boot/pid:[1]", TxnID: []byte{11}, LeaseUntil: lease}, "", "pid " + fmt.Sprint(dead)},
		{"pid reused by a later process", TruncateLockFile,
			lockMeta{LockerHost: f.env.Hostname, LockerPID: os.Getpid(), ProcStart: self + "0", Machine: here, TxnID: []byte{2}, LeaseUntil: lease}, "is gone", ""},
		{"live process on this host", TruncateLockFile,
			lockMeta{LockerHost: f.env.Hostname, LockerPID: os.Getpid(), ProcStart: self, Machine: here, TxnID: []byte{3}, LeaseUntil: now.Add(-time.Hour)}, "", "pid " + fmt.Sprint(os.Getpid())},
		{"other host, lease running", TruncateLockFile,
			lockMeta{LockerHost: "far-away", LockerPID: 9, TxnID: []byte{4}, LeaseUntil: lease}, "", "far-away"},
		{"other host, lease within the clock skew", TruncateLockFile,
			lockMeta{LockerHost: "far-away", LockerPID: 9, TxnID: []byte{5}, LeaseUntil: now.Add(-lockClockSkew / 2)}, "", "far-away"},
		{"other host, lease expired", TruncateLockFile,
			lockMeta{LockerHost: "far-away", LockerPID: 9, TxnID: []byte{6}, LeaseUntil: now.Add(-lockClockSkew - time.Second)}, "lease expired", ""},
		{"BR's lock, no lease", TruncateLockFile,
			lockMeta{LockerHost: "far-away", LockerPID: 9, TxnID: []byte{7}}, "", "far-away"},
		{"dead run's intent", TruncateLockFile + ".INTENT.0a0b",
			lockMeta{LockerHost: f.env.Hostname, LockerPID: dead, Machine: here, TxnID: []byte{8}, LeaseUntil: lease}, "is gone", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			writeLockObject(t, f, c.object, c.l)
			var out bytes.Buffer
			res, err := TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: fmt.Sprint(f.ts(15)), Yes: true}, &out)
			if c.takes == "" {
				if err == nil || !strings.Contains(err.Error(), c.refuse) || !strings.Contains(HintOf(err), "lease") {
					t.Fatalf("want a refusal naming %q: %v (hint %q)\n%s", c.refuse, err, HintOf(err), out.String())
				}
				if err := f.st.Delete(f.ctx, c.object); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err != nil || res.Cancelled {
				t.Fatalf("want a takeover: %v\n%s", err, out.String())
			}
			if !strings.Contains(out.String(), "Took over the lock") || !strings.Contains(out.String(), c.takes) {
				t.Fatalf("the takeover is not said:\n%s", out.String())
			}
			var left []string
			if err := f.st.List(f.ctx, TruncateLockFile, func(o storage.ObjectInfo) error { left = append(left, o.Name); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(left) > 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}
}

// TestTruncateLockLost: a run whose lease ran out by its own clock, or
// whose lock another run took over (it stalled past its lease), stops
// before its next destructive step and does not remove the other run's
// lock; renewals move the lease on, and stop once the lock is another's.
func TestTruncateLockLost(t *testing.T) {
	f := newLogFixture(t)
	f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	f.checkpoint(20)
	var clock atomic.Int64
	t0 := time.Now()
	clock.Store(t0.UnixNano())
	f.env.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	l, err := acquireTruncateLock(f.ctx, f.env, f.st)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.check(f.ctx); err != nil {
		t.Fatalf("a fresh lock: %v", err)
	}
	// A renewal moves the lease on.
	clock.Store(t0.Add(time.Minute).UnixNano())
	if err := l.renewOnce(f.ctx); err != nil {
		t.Fatal(err)
	}
	rec, _, err := readLockObject(f.ctx, f.st, TruncateLockFile)
	if err != nil || rec == nil || !rec.LeaseUntil.Equal(t0.Add(time.Minute+truncateLease)) {
		t.Fatalf("after a renewal at +1m the lease is %v (%v), want %v", rec, err, t0.Add(time.Minute+truncateLease))
	}
	// Past its lease by its own clock (renewals failing, or a stall) the
	// run stops before its next delete, without asking the storage.
	if err := l.valid(); err != nil {
		t.Fatalf("within the lease: %v", err)
	}
	clock.Store(t0.Add(time.Minute + truncateLease + time.Second).UnixNano())
	if err := l.valid(); err == nil || !strings.Contains(err.Error(), "ran out") {
		t.Fatalf("past the lease: %v", err)
	}
	clock.Store(t0.Add(time.Minute).UnixNano())
	other := lockMeta{LockerHost: "taker", LockerPID: 5, TxnID: []byte{9}, LeaseUntil: time.Now().Add(time.Minute)}
	writeLockObject(t, f, TruncateLockFile, other)
	if err := l.check(f.ctx); err == nil || !strings.Contains(err.Error(), "taker") {
		t.Fatalf("lost lock not noticed: %v", err)
	}
	if err := l.renewOnce(f.ctx); err == nil {
		t.Fatal("a renewal overwrote the taker's lock")
	}
	l.release(io.Discard)
	b, err := f.st.ReadFile(f.ctx, TruncateLockFile)
	if err != nil || !strings.Contains(string(b), "taker") {
		t.Fatalf("release removed the taker's lock: %q %v", b, err)
	}
}

// failingStorage fails every write and delete after the first n, as a
// storage answering 500 from some moment on. A hand-written fault: no
// storage server here can be made to fail at an exact request.
type failingStorage struct {
	storage.Storage
	left atomic.Int64
	ops  atomic.Int64
}

var errStorage500 = errors.New("simulated storage failure: 500 Internal Server Error")

func (s *failingStorage) fail() error {
	s.ops.Add(1)
	if s.left.Add(-1) < 0 {
		return errStorage500
	}
	return nil
}

func (s *failingStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	if err := s.fail(); err != nil {
		return err
	}
	return s.Storage.WriteFile(ctx, name, data)
}

func (s *failingStorage) Delete(ctx context.Context, name string) error {
	if err := s.fail(); err != nil {
		return err
	}
	return s.Storage.Delete(ctx, name)
}

// TestTruncateRerunAfterFailure: a truncate whose storage starts failing
// at any write or delete fails with a hint to run it again, and the run
// again (by another process of this host: the failed one exited) takes
// over whatever lock is left and ends where an undisturbed run ends,
// without anyone deleting anything by hand.
func TestTruncateRerunAfterFailure(t *testing.T) {
	build := func() *logFixture {
		f := newLogFixture(t)
		f.flush(20, 0, f.put(1, "ta", 10, 12, 8), f.put(2, "tb", 14, 16, 300))
		f.flush(40, 0, f.put(1, "ta", 30, 32, 8))
		f.flush(60, 0, f.put(1, "ta", 50, 52, 300), f.put(2, "tb", 54, 56, 8))
		f.checkpoint(60)
		return f
	}
	ref := build()
	counted := &failingStorage{Storage: ref.st}
	counted.left.Store(1 << 40)
	opts := TruncateOptions{Until: fmt.Sprint(ref.ts(45)), Yes: true}
	if _, err := TruncateStorage(ref.ctx, ref.env, counted, opts, io.Discard); err != nil {
		t.Fatal(err)
	}
	// Object names are random per fixture: compare what decodes, and how
	// many objects hold it.
	want, wantN := fmt.Sprint(ref.walk()), len(snapshot(t, ref.st))
	steps := counted.ops.Load()
	dead := deadPID(t)
	for n := int64(0); n < steps; n++ {
		f := build()
		opts.Until = fmt.Sprint(f.ts(45))
		failed := NewEnv(nil)
		failed.PID = dead // the failed run's process, since exited
		fs := &failingStorage{Storage: f.st}
		fs.left.Store(n)
		var out bytes.Buffer
		_, err := TruncateStorage(f.ctx, failed, fs, opts, &out)
		if err == nil {
			if n != steps-1 || !strings.Contains(out.String(), "next truncate takes it over") {
				t.Fatalf("failure at step %d of %d: the truncate succeeded\n%s", n, steps, out.String())
			}
		} else if h := HintOf(err); !errors.Is(err, errStorage500) || !strings.Contains(h, "run the same truncate again") {
			t.Fatalf("failure at step %d: %v (hint %q)", n, err, h)
		}
		out.Reset()
		if _, err := TruncateStorage(f.ctx, f.env, f.st, opts, &out); err != nil {
			t.Fatalf("rerun after a failure at step %d: %v (hint %q)\n%s", n, err, HintOf(err), out.String())
		}
		if got, gotN := fmt.Sprint(f.walk()), len(snapshot(t, f.st)); got != want || gotN != wantN {
			t.Fatalf("failure at step %d, then a rerun: %d objects holding %s, want %d holding %s\n%s", n, gotN, got, wantN, want, out.String())
		}
	}
}

// TestTruncateCleansTempFiles: on a local storage, the temp files a
// killed truncate stranded at the root (its lock, journal and safepoint
// half-written; issue 20 found a …safepoint.txt.<hex>.tmp) are removed by
// the next run under its lock; meta file temps, which an agent may be
// writing right now, are reported, not touched; other files stay.
func TestTruncateCleansTempFiles(t *testing.T) {
	dir := t.TempDir()
	f := newLogFixture(t)
	f.st = openTestStorage(t, f.ctx, "local://"+dir)
	if _, _, err := prepareStorage(f.ctx, f.st, f.ts(1), 7); err != nil {
		t.Fatal(err)
	}
	f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	f.flush(40, 0, f.put(1, "ta", 30, 32, 8))
	f.checkpoint(40)
	ours := []string{TruncateSafepointFile + ".17f3a.tmp", TruncateLockFile + ".5ab.tmp", TruncateLockFile + ".INTENT.0a0b.99.tmp", TruncateJournalFile + ".1.tmp"}
	others := []string{"notes.tmp", "backupmeta.17f3a.tmp", filepath.Join("v1", "backupmeta", "x.meta.abc.tmp")}
	for _, name := range append(append([]string{}, ours...), others...) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	if _, err := TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: fmt.Sprint(f.ts(35)), Yes: true}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, name := range ours {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s stays (%v)\n%s", name, err, out.String())
		}
		if !strings.Contains(out.String(), "Removed "+name) {
			t.Fatalf("removing %s is not said:\n%s", name, out.String())
		}
	}
	for _, name := range others {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("%s was removed: %v", name, err)
		}
	}
	if !strings.Contains(out.String(), "1 temp files of meta files") {
		t.Fatalf("the meta file temp is not reported:\n%s", out.String())
	}
}

// readFailing fails every read and listing after the first n, as a
// storage that stops answering (hand-written for the same reason as
// failingStorage).
type readFailing struct {
	storage.Storage
	left atomic.Int64
	ops  atomic.Int64
}

func (s *readFailing) fail() error {
	s.ops.Add(1)
	if s.left.Add(-1) < 0 {
		return errStorage500
	}
	return nil
}

func (s *readFailing) ReadFile(ctx context.Context, name string) ([]byte, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	return s.Storage.ReadFile(ctx, name)
}

func (s *readFailing) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := s.fail(); err != nil {
		return err
	}
	return s.Storage.List(ctx, prefix, fn)
}

// TestTruncateFailureHints: a storage that stops answering reads at any
// point of a truncate gives an error with a hint saying what to do (issue
// 20: the first failure's hint was "run br stream truncate --help"), and
// a rerun finishes.
func TestTruncateFailureHints(t *testing.T) {
	build := func() *logFixture {
		f := newLogFixture(t)
		f.flush(20, 0, f.put(1, "ta", 10, 12, 8), f.put(2, "tb", 14, 16, 300))
		f.flush(40, 0, f.put(1, "ta", 30, 32, 8))
		f.flush(60, 0, f.put(1, "ta", 50, 52, 300), f.put(2, "tb", 54, 56, 8))
		f.checkpoint(60)
		return f
	}
	ref := build()
	counted := &readFailing{Storage: ref.st}
	counted.left.Store(1 << 40)
	if _, err := TruncateStorage(ref.ctx, ref.env, counted, TruncateOptions{Until: fmt.Sprint(ref.ts(45)), Yes: true}, io.Discard); err != nil {
		t.Fatal(err)
	}
	steps := counted.ops.Load()
	dead := deadPID(t)
	for n := int64(0); n < steps; n++ {
		f := build()
		opts := TruncateOptions{Until: fmt.Sprint(f.ts(45)), Yes: true}
		failed := NewEnv(nil)
		failed.PID = dead
		rf := &readFailing{Storage: f.st}
		rf.left.Store(n)
		var out bytes.Buffer
		_, err := TruncateStorage(f.ctx, failed, rf, opts, &out)
		if err == nil {
			// Only the release's read of the lock, the very last, can fail
			// without failing the truncate: the work is done.
			if n != steps-1 || !strings.Contains(out.String(), "the next truncate takes it over") {
				t.Fatalf("reads failing from %d of %d: the truncate succeeded\n%s", n, steps, out.String())
			}
			continue
		}
		h := HintOf(err)
		if !errors.Is(err, errStorage500) || h == "" || !strings.Contains(h, "again") && !strings.Contains(h, "br stream verify") {
			t.Fatalf("reads failing from %d of %d: %v (hint %q)", n, steps, err, h)
		}
		out.Reset()
		if _, err := TruncateStorage(f.ctx, f.env, f.st, opts, &out); err != nil {
			t.Fatalf("rerun after reads failed from %d: %v (hint %q)\n%s", n, err, HintOf(err), out.String())
		}
	}
}
