package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tikv/client-go/v2/txnkv/transaction"

	"logbackup/br"
	"logbackup/br/cli"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/streamagent/logfile"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestCLIExitCodes: a command group without a subcommand, an unknown
// subcommand and a command missing a required flag exit non-zero with a
// hint, never the help text and exit 0 (which a cron job would take for
// success).
func TestCLIExitCodes(t *testing.T) {
	r := brRun{t: t}
	dir := "local://" + t.TempDir()
	cases := []struct {
		name string
		want string
		args []string
	}{
		{"br alone", "missing command", nil},
		{"stream group", "missing subcommand", []string{"stream"}},
		{"log group", "missing subcommand", []string{"log"}},
		{"unknown subcommand", "unknown command", []string{"log", "bogus"}},
		{"unknown flag", "unknown flag", []string{"stream", "status", "--bogus"}},
		{"start without task", "--task-name", []string{"stream", "start", "--storage", dir}},
		{"pause without task", "--task-name", []string{"stream", "pause"}},
		{"resume without task", "--task-name", []string{"stream", "resume"}},
		{"stop without task", "--task-name", []string{"stream", "stop"}},
		{"history without task", "--task-name", []string{"stream", "history"}},
		{"verify without storage", "--storage", []string{"stream", "verify"}},
		{"truncate without until", "--until", []string{"log", "truncate", "--storage", dir, "-y"}},
		{"truncate without storage", "--storage", []string{"log", "truncate", "--until", "400036290571534337", "-y"}},
		{"metadata without storage", "--storage", []string{"stream", "metadata"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := brRun{t: t}.fails(c.want, c.args...)
			if !strings.Contains(res.stderr, "Hint:") {
				t.Fatalf("br %s: no hint in %q", strings.Join(c.args, " "), res.stderr)
			}
		})
	}
	// Help is still help.
	if out := r.ok("stream", "--help"); !strings.Contains(out, "truncate") {
		t.Fatalf("stream --help does not list truncate:\n%s", out)
	}
}

// workload commits small transactions until stopped: short values, long
// ones (default CF) and deletes over a few hundred keys. It holds back
// while the task's global checkpoint lags more than maxLag, so a slow
// (loaded, race-instrumented) machine gets load it can back up, not an
// ever-growing lag.
type workload struct {
	commits atomic.Int64
	stop    func()
}

const maxLag = 3 * time.Second

func startWorkload(t *testing.T, ctx context.Context, c *simcluster.Cluster, m *meta.Client, seed int64, pace time.Duration) *workload {
	t.Helper()
	w := &workload{}
	lagging := func() bool {
		g, ok, err := m.GlobalCheckpoint(ctx, "pitr")
		now, terr := c.TSO(ctx)
		return err == nil && terr == nil && ok && br.PhysicalTime(now).Sub(br.PhysicalTime(g)) > maxLag
	}
	// stop ends the loop between transactions, never inside one: a
	// commit cancelled half way leaves its locks, which hold the regions'
	// resolved ts, and with them the checkpoint the test then waits for,
	// until someone resolves them (1 run in 40 of small-objects).
	txnCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewSource(seed))
		// Time is the subject: the workload's rate, a pause of pace after
		// each transaction (cut short when ctx ends).
		pause := time.NewTimer(pace)
		defer pause.Stop()
		for i := 0; ctx.Err() == nil; i++ {
			if i%20 == 0 {
				// Back-pressure, not synchronisation: a checkpoint lagging
				// past maxLag holds the writer (until ctx ends; a lag that
				// never recovers fails the test's own waits).
				_ = eventually.Wait(ctx, time.Hour, func(context.Context) error {
					if lagging() {
						return errors.New("lagging")
					}
					return nil
				}, "the checkpoint to catch up")
				if ctx.Err() != nil {
					return
				}
			}
			n := 1 + rng.Intn(3)
			st, err := c.Txn(txnCtx, func(txn *transaction.KVTxn) error {
				for j := 0; j < n; j++ {
					k := []byte(fmt.Sprintf("t%d%02d", rng.Intn(8), rng.Intn(100)))
					if rng.Intn(6) == 0 {
						if err := txn.Delete(k); err != nil {
							return err
						}
						continue
					}
					size := 16
					if rng.Intn(4) == 0 {
						size = 300 + rng.Intn(1500)
					}
					if err := txn.Set(k, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, size)); err != nil {
						return err
					}
				}
				return nil
			})
			switch {
			case err == nil:
				w.commits.Add(1)
			case st != 0 && txnCtx.Err() == nil:
				if err := c.ResolveTxn(txnCtx, st); err != nil {
					t.Errorf("resolve a failed transaction: %v", err)
					return
				}
			}
			pause.Reset(pace)
			select {
			case <-ctx.Done():
			case <-pause.C:
			}
		}
	}()
	w.stop = func() { cancel(); <-done }
	return w
}

// waitCommits waits until the workload has committed n transactions.
func (w *workload) waitCommits(t *testing.T, n int64) {
	t.Helper()
	eventually.NoError(t, time.Minute, func(context.Context) error {
		if c := w.commits.Load(); c < n {
			return fmt.Errorf("%d committed", c)
		}
		return nil
	}, "the workload to commit %d transactions", n)
}

// faultyStorage lets a number of writes and deletes through, then fails
// every later one, as if the process died there. beforeDelete, when set,
// runs once, at the first delete (truncate has listed and planned by then).
type faultyStorage struct {
	storage.Storage
	left         atomic.Int64
	ops          atomic.Int64
	once         sync.Once
	beforeDelete func(context.Context)
}

var errCrashed = errors.New("simulated crash: the truncate process is gone")

func newFaulty(st storage.Storage, allowed int64) *faultyStorage {
	s := &faultyStorage{Storage: st}
	s.left.Store(allowed)
	return s
}

func (s *faultyStorage) mutate() error {
	s.ops.Add(1)
	if s.left.Add(-1) < 0 {
		return errCrashed
	}
	return nil
}

func (s *faultyStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	if err := s.mutate(); err != nil {
		return err
	}
	return s.Storage.WriteFile(ctx, name, data)
}

func (s *faultyStorage) WriteFrom(ctx context.Context, name string, size int64, open func() (io.ReadCloser, error)) error {
	if err := s.mutate(); err != nil {
		return err
	}
	return s.Storage.WriteFrom(ctx, name, size, open)
}

func (s *faultyStorage) Delete(ctx context.Context, name string) error {
	if s.beforeDelete != nil {
		s.once.Do(func() { s.beforeDelete(ctx) })
	}
	if err := s.mutate(); err != nil {
		return err
	}
	return s.Storage.Delete(ctx, name)
}

// waitStorageCheckpoint waits until the stores' global checkpoints in
// storage (which trail etcd's) reach atLeast.
// newestFlush is the highest flush ts among the storage's meta files.
func newestFlush(t *testing.T, ctx context.Context, st storage.Storage) uint64 {
	t.Helper()
	var newest uint64
	err := st.List(ctx, logfile.MetaDir, func(o storage.ObjectInfo) error {
		if n, err := logfile.ParseMetaName(o.Name); err == nil {
			newest = max(newest, n.FlushTS)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	return newest
}

// multiObjectFlushes reports whether some meta file lists more than one
// data object.
func multiObjectFlushes(t *testing.T, ctx context.Context, st storage.Storage) bool {
	t.Helper()
	metas, err := logfile.ReadMetas(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range metas {
		if len(m.Metadata.FileGroups) > 1 {
			return true
		}
	}
	return false
}

// metasAfter names the meta files flushed after ts.
func metasAfter(t *testing.T, ctx context.Context, st storage.Storage, ts uint64) []string {
	t.Helper()
	var out []string
	err := st.List(ctx, logfile.MetaDir, func(o storage.ObjectInfo) error {
		if n, err := logfile.ParseMetaName(o.Name); err == nil && n.FlushTS > ts {
			out = append(out, o.Name)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	return out
}

// waitFor polls cond for up to a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// Not fatal, as before: the caller goes on to report what it sees.
	if err := eventually.Wait(t.Context(), time.Minute, func(context.Context) error {
		if !cond() {
			return errors.New("the condition does not hold yet")
		}
		return nil
	}, "%s", what); err != nil {
		t.Error(err)
	}
}

func waitStorageCheckpoint(t *testing.T, ctx context.Context, st storage.Storage, atLeast uint64) {
	t.Helper()
	eventually.NoError(t, time.Minute, func(ctx context.Context) error {
		info, err := br.ReadLogInfo(ctx, st)
		if err == nil && info.MaxTS < atLeast {
			err = fmt.Errorf("at %d", info.MaxTS)
		}
		return err
	}, "the storage's global checkpoint to reach %d", atLeast)
}

func openStorage(t *testing.T, ctx context.Context, url string) storage.Storage {
	t.Helper()
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// objectsOf maps every object of a storage to the sha256 of its content.
func objectsOf(t *testing.T, ctx context.Context, st storage.Storage) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := st.List(ctx, "", func(o storage.ObjectInfo) error {
		b, err := st.ReadFile(ctx, o.Name)
		if err != nil {
			return err
		}
		out[o.Name] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameObjects(t *testing.T, what string, want, got map[string][32]byte) {
	t.Helper()
	for n, h := range want {
		if g, ok := got[n]; !ok {
			t.Fatalf("%s: %s is missing", what, n)
		} else if g != h {
			t.Fatalf("%s: %s differs", what, n)
		}
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			t.Fatalf("%s: unexpected %s", what, n)
		}
	}
}

// assertTruncated checks what truncate must have removed: no meta file
// lies wholly before the shifted until, no empty one was flushed before
// until, and no meta file lists a missing object.
func assertTruncated(t *testing.T, ctx context.Context, st storage.Storage, res *br.TruncateResult) {
	t.Helper()
	metas, err := logfile.ReadMetas(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range metas {
		if len(m.Metadata.FileGroups) == 0 {
			if m.Name.FlushTS < res.Until {
				t.Fatalf("empty meta file %s flushed before until survived", m.Path)
			}
			continue
		}
		if m.Metadata.MaxTs < res.ShiftUntil {
			t.Fatalf("meta file %s (max ts %d) is wholly before the shifted until %d", m.Path, m.Metadata.MaxTs, res.ShiftUntil)
		}
		for _, g := range m.Metadata.FileGroups {
			if ok, err := st.Exists(ctx, g.Path); err != nil || !ok {
				t.Fatalf("%s lists %s, which is gone (%v)", m.Path, g.Path, err)
			}
		}
	}
}

// TestTruncateUnderLoad truncates a storage three times while agents keep
// flushing a running workload, each truncate slowed so flushes land in its
// middle. Afterwards every version committed at or after until is in
// storage with its value, the storage decodes as a whole, and the old
// data is gone. "small-objects" splits every flush into many objects, so a
// long value and its write record can sit in different ones.
func TestTruncateUnderLoad(t *testing.T) {
	t.Run("default", func(t *testing.T) { truncateUnderLoad(t, 0, 120, 3*time.Millisecond) })
	// Many more flushes per commit: a lighter workload, so agents keep up
	// on a loaded machine.
	t.Run("small-objects", func(t *testing.T) { truncateUnderLoad(t, 4<<10, 80, 15*time.Millisecond) })
}

func truncateUnderLoad(t *testing.T, fileSizeLimit int, perRound int64, pace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t2"), []byte("t5")}, ResolvedTsInterval: 20 * time.Millisecond},
		"local://"+t.TempDir(), 0)
	for _, s := range h.c.StoreIDs() {
		_, stop := h.agent(s, nil, func(cfg *streamagent.Config) { cfg.FileSizeLimit = fileSizeLimit })
		defer stop()
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	w := startWorkload(t, ctx, h.c, h.m, seed, pace)
	defer w.stop()
	st := openStorage(t, ctx, h.url)

	var until uint64
	for round := 1; round <= 3; round++ {
		w.waitCommits(t, int64(round)*perRound)
		var err error
		if until, err = h.c.TSO(ctx); err != nil {
			t.Fatal(err)
		}
		waitStorageCheckpoint(t, ctx, st, until)
		w.waitCommits(t, int64(round)*perRound+50) // data after until too
		if fileSizeLimit > 0 && round == 1 {
			// A flush is split only when one store's share of it is over
			// the limit, and the workload's sizes are random: about one
			// run in twenty had no such flush by now (a loaded machine).
			// The workload goes on until one lands; round 1's truncate
			// then meets it, whichever side of until it fell.
			eventually.True(t, time.Minute, func() bool { return multiObjectFlushes(t, ctx, st) },
				"a flush split into several objects (without one the variant proves nothing)")
		}

		// Hold the truncate at its first delete, after it listed the meta
		// files, until an agent has flushed again: that flush is one the
		// truncate never saw, and it must come through whole.
		var listed uint64
		var landed []string // meta files flushed while the truncate was held
		held := newFaulty(st, 1<<40)
		held.beforeDelete = func(ctx context.Context) {
			var err error
			if listed, err = h.c.TSO(ctx); err != nil {
				t.Error(err)
				return
			}
			if newestFlush(t, ctx, st) <= listed {
				waitFor(t, "a flush during the truncate", func() bool { return newestFlush(t, ctx, st) > listed })
			}
			landed = metasAfter(t, ctx, st, listed)
		}
		var out bytes.Buffer
		res, err := br.TruncateStorage(ctx, br.NewEnv(h.m), held, br.TruncateOptions{Until: fmt.Sprint(until), Yes: true}, &out)
		if err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, out.String())
		}
		after, err := h.c.TSO(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %+v", round, *res)
		if res.DataFiles == 0 || res.MetasDeleted == 0 || listed == 0 {
			t.Fatalf("round %d removed nothing (or never deleted): the test proves nothing\n%s", round, out.String())
		}
		if !strings.Contains(out.String(), "Deleting data files: ") || !strings.Contains(out.String(), "(100%)") {
			t.Fatalf("round %d printed no progress:\n%s", round, out.String())
		}
		for _, name := range landed {
			if ok, err := st.Exists(ctx, name); err != nil || !ok {
				t.Fatalf("round %d: %s, flushed during the truncate, is gone (%v)", round, name, err)
			}
		}
		assertTruncated(t, ctx, st, res)
		g := h.waitGlobal(after)
		if n := assertBackedUp(t, ctx, h.url, h.c, until-1, g); n == 0 {
			t.Fatalf("round %d: nothing committed after until to check", round)
		}
		var md bytes.Buffer
		if err := br.RunMetadata(ctx, br.NewEnv(nil), br.MetadataOptions{Storage: h.url}, &md); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(md.String(), fmt.Sprintf("[log-min-ts=%d]", until)) {
			t.Fatalf("round %d: metadata says %s, want log-min-ts=%d", round, md.String(), until)
		}
	}
	w.stop()
	end, err := h.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := h.waitGlobal(end)
	assertBackedUp(t, ctx, h.url, h.c, until-1, g)
}

// TestTruncateCrashAndRerun: a storage written under load is truncated
// once cleanly (the reference), then, on fresh copies, crashed after each
// possible number of writes and deletes. Every crashed storage decodes as
// a whole and holds every version committed at or after until; a rerun,
// with nobody deleting anything by hand (it takes over the lock the dead
// run left), ends in exactly the reference's objects, byte for byte.
func TestTruncateCrashAndRerun(t *testing.T) {
	t.Parallel() // its own cluster, mostly waiting: runs beside the other long tests (see TestMain)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	src := t.TempDir()
	h := newHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t4")}, ResolvedTsInterval: 20 * time.Millisecond}, "local://"+src, 0)
	var stops []func()
	for _, s := range h.c.StoreIDs() {
		_, stop := h.agent(s, nil, nil)
		stops = append(stops, stop)
	}
	w := startWorkload(t, ctx, h.c, h.m, time.Now().UnixNano(), 3*time.Millisecond)
	w.waitCommits(t, 150)
	until, err := h.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.waitCommits(t, 300)
	w.stop()
	end, err := h.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.waitGlobal(end)
	waitStorageCheckpoint(t, ctx, openStorage(t, ctx, h.url), end)
	for _, stop := range stops {
		stop()
	}
	opts := br.TruncateOptions{Until: fmt.Sprint(until), Yes: true}
	env := br.NewEnv(nil)
	// The crashed runs' process, gone by the time of the rerun.
	crashedEnv := br.NewEnv(nil)
	crashedEnv.PID = exitedPID(t)

	refDir := t.TempDir()
	copyDir(t, src, refDir)
	ref := openStorage(t, ctx, "local://"+refDir)
	counted := newFaulty(ref, 1<<40)
	res, err := br.TruncateStorage(ctx, env, counted, opts, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.DataFiles == 0 || res.MetasDeleted == 0 {
		t.Fatalf("the reference truncate removed nothing: %+v", *res)
	}
	want := objectsOf(t, ctx, ref)
	steps := counted.ops.Load()
	t.Logf("reference: %+v, %d writes and deletes", *res, steps)

	for n := int64(0); n < steps; n++ {
		dir, err := os.MkdirTemp(t.TempDir(), "crash")
		if err != nil {
			t.Fatal(err)
		}
		copyDir(t, src, dir)
		url := "local://" + dir
		st, err := storage.OpenURL(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		var crashOut bytes.Buffer
		_, err = br.TruncateStorage(ctx, crashedEnv, newFaulty(st, n), opts, &crashOut)
		switch {
		case err == nil:
			// Only the lock's removal, the very last step, can fail without
			// failing the truncate: all the work is done, the lock stays.
			if n != steps-1 || !strings.Contains(crashOut.String(), "the next truncate takes it over") {
				t.Fatalf("crash after %d of %d steps: the truncate succeeded\n%s", n, steps, crashOut.String())
			}
		case !errors.Is(err, errCrashed):
			t.Fatalf("crash after %d of %d steps: got %v", n, steps, err)
		}
		assertBackedUp(t, ctx, url, h.c, until-1, end)

		if err != nil && !strings.Contains(br.HintOf(err), "run the same truncate again") {
			t.Fatalf("crash at step %d: the hint does not say to rerun: %v (hint %q)", n, err, br.HintOf(err))
		}
		var out bytes.Buffer
		if _, err = br.TruncateStorage(ctx, env, st, opts, &out); err != nil {
			t.Fatalf("rerun after a crash at step %d: %v (hint %q)\n%s", n, err, br.HintOf(err), out.String())
		}
		sameObjects(t, fmt.Sprintf("crash at step %d, then a rerun", n), want, objectsOf(t, ctx, st))
		st.Close()
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}

	// The real thing: the br binary killed with SIGKILL after each line it
	// printed (through the proof, the lock, the plan, every tenth of the
	// meta files and of the data files), then run again.
	bin := filepath.Join(t.TempDir(), "br")
	if out, err := exec.Command("go", "build", "-o", bin, "logbackup/cmd/br").CombinedOutput(); err != nil {
		t.Fatalf("build cmd/br: %v\n%s", err, out)
	}
	args := func(dir string) []string {
		return []string{"log", "truncate", "-s", "local://" + dir, "--until", fmt.Sprint(until), "-y"}
	}
	// A kill lands some time after the line it follows, and on this small
	// log the truncate may finish in between: the pass then ends there, as
	// if it had printed no more. One pass in the day's eleven runs under
	// load ended after 6 of ~30 lines, every kill before the lock was
	// taken. Up to three passes, until one went far enough.
	lines, takeovers := 0, 0
	for pass := 0; pass < 3 && (lines < 5 || takeovers == 0); pass++ {
		lines, takeovers = killAtEveryLine(t, ctx, h.c, bin, args, src, want, until, end)
	}
	if lines < 5 || takeovers == 0 {
		t.Fatalf("the truncate printed %d lines, %d reruns took a lock over: too few kill points", lines, takeovers)
	}
	t.Logf("killed after each of %d lines; %d reruns took over the dead run's lock", lines, takeovers)
}

// killAtEveryLine runs the br binary once for each line it prints, killed
// with SIGKILL after that line, then runs it again to the end and checks
// the storage holds what one clean truncate leaves. It returns the number
// of lines and how many reruns took over a dead run's lock.
func killAtEveryLine(t *testing.T, ctx context.Context, c *simcluster.Cluster, bin string, args func(string) []string, src string, want map[string][32]byte, until, end uint64) (lines, takeovers int) {
	t.Helper()
	for kill := 0; ; kill++ {
		dir, err := os.MkdirTemp(t.TempDir(), "kill")
		if err != nil {
			t.Fatal(err)
		}
		copyDir(t, src, dir)
		printed, finished := runAndKill(t, bin, args(dir), kill)
		if finished {
			lines = kill
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			break
		}
		url := "local://" + dir
		assertBackedUp(t, ctx, url, c, until-1, end)
		out, err := exec.Command(bin, args(dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("rerun after a kill -9 after %q: %v\n%s", printed, err, out)
		}
		if strings.Contains(string(out), "Took over the lock") {
			takeovers++
		}
		st := openStorage(t, ctx, url)
		sameObjects(t, fmt.Sprintf("kill -9 after %q, then a rerun", printed), want, objectsOf(t, ctx, st))
		st.Close()
		if tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(tmps) > 0 {
			t.Fatalf("kill -9 after %q, then a rerun: temp files left at the root: %v", printed, tmps)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	return lines, takeovers
}

// runAndKill runs bin and sends it SIGKILL as soon as it has printed n
// lines. It returns the last line printed and whether the run finished
// first (it printed fewer lines).
func runAndKill(t *testing.T, bin string, args []string, n int) (string, bool) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	last := "(nothing)"
	seen := 0
	for seen < n && sc.Scan() {
		last = sc.Text()
		seen++
	}
	killed := false
	if seen == n {
		killed = cmd.Process.Signal(syscall.SIGKILL) == nil
	}
	_, _ = io.Copy(io.Discard, stdout)
	err = cmd.Wait()
	if seen < n {
		if err != nil {
			t.Fatalf("%s %v: %v (after %q)", bin, args, err, last)
		}
		return last, true
	}
	var ee *exec.ExitError
	if killed && errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
		return last, false
	}
	// It exited on its own between the line and the signal.
	if err != nil {
		t.Fatalf("%s %v: %v (after %q)", bin, args, err, last)
	}
	return last, true
}

// exitedPID is the pid of a process that has exited: the "crashed"
// truncate's, so that a rerun in this process sees its holder gone.
func exitedPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// copyDir copies a local storage's directory tree.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTruncateCLI drives `br log truncate` and `br stream metadata` on a
// loopback S3 storage holding a task's backup: --dry-run, a refused or
// unanswered prompt, an until past the storage's or etcd's checkpoint and
// a held lock change nothing; "y" truncates; metadata reports the new
// log-min-ts; the storage's secret never shows.
func TestTruncateCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s3 := s3test.Start(t, "bk")
	url := s3.URL("bk", "log")
	secret := secretOf(t, url)
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, url, 0)
	_, stop := h.agent(h.c.StoreIDs()[0], nil, nil)
	put := func(round int) {
		for i := 0; i < 30; i++ {
			v := bytes.Repeat([]byte{byte('a' + round)}, 8+300*(i%2)) // long values too
			if _, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%02d", i)), v); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(0)
	until, err := h.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.waitGlobal(until) // round 0 is flushed before round 1 begins
	put(1)
	end, err := h.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	global := h.waitGlobal(end)
	st := openStorage(t, ctx, url)
	waitStorageCheckpoint(t, ctx, st, global)
	stop()
	info, err := br.ReadLogInfo(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	// Read after the agent (and so the coordinator) stopped: it no longer moves.
	etcdCP, ok, err := h.m.GlobalCheckpoint(ctx, "pitr")
	if err != nil || !ok {
		t.Fatalf("no global checkpoint in etcd: %v", err)
	}

	r := brRun{t: t}
	withEtcd := brRun{t: t, ep: h.etcd.Endpoint()}
	var outputs []string
	run := func(stdin string, args ...string) result {
		t.Helper()
		var out, errb bytes.Buffer
		code := cli.Run(ctx, args, strings.NewReader(stdin), &out, &errb)
		outputs = append(outputs, out.String(), errb.String())
		return result{code: code, stdout: out.String(), stderr: errb.String()}
	}
	unchanged := func(what string, before map[string][32]byte) {
		t.Helper()
		sameObjects(t, what+" changed the storage", before, objectsOf(t, ctx, st))
	}
	u := fmt.Sprint(until)
	before := objectsOf(t, ctx, st)

	out := r.ok("log", "truncate", "-s", url, "--until", u, "--dry-run")
	outputs = append(outputs, out)
	if !strings.Contains(out, "Dry run") || !strings.Contains(out, "We are going to truncate") || strings.Contains(out, "We are going to truncate 0 files") {
		t.Fatalf("dry run says:\n%s", out)
	}
	unchanged("--dry-run", before)

	if res := run("n\n", "log", "truncate", "-s", url, "--until", u); res.code != 0 || !strings.Contains(res.stdout, "cancelled") {
		t.Fatalf("answer n: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	unchanged("answering n", before)
	if res := run("", "log", "truncate", "-s", url, "--until", u); res.code == 0 || !strings.Contains(res.stderr, "-y") {
		t.Fatalf("no answer: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	unchanged("no answer", before) // nothing left behind either: no lock, no journal

	res := r.fails("global checkpoint", "log", "truncate", "-s", url, "--until", fmt.Sprint(info.MaxTS+1), "-y")
	outputs = append(outputs, res.stdout, res.stderr)
	unchanged("an until past the storage's checkpoint", before)

	// A store's checkpoint damaged (issue 20: 0x7FFF…, which made the log
	// max the year 3084): refused naming it, storage alone or with etcd.
	ts1 := logfile.GlobalCheckpointObject(h.c.StoreIDs()[0], 0).Name
	good := mustRead(t, ctx, st, ts1)
	damaged := logfile.GlobalCheckpointObject(h.c.StoreIDs()[0], 0x7FFFFFFFFFFFFFFF)
	if err := st.WriteFile(ctx, damaged.Name, damaged.Data); err != nil {
		t.Fatal(err)
	}
	damagedSnap := objectsOf(t, ctx, st)
	for _, runner := range []brRun{r, withEtcd} {
		res := runner.fails(ts1+": ", "log", "truncate", "-s", url, "--until", fmt.Sprint(until+(40*60*1000)<<18), "-y")
		outputs = append(outputs, res.stdout, res.stderr)
		if !strings.Contains(res.stderr, "Hint:") || !strings.Contains(res.stderr, "br stream verify") {
			t.Fatalf("damaged checkpoint: %s", res.stderr)
		}
		sameObjects(t, "a damaged checkpoint changed the storage", damagedSnap, objectsOf(t, ctx, st))
	}
	// Raised within the flushed range, a second past etcd's: only etcd
	// can tell, and does.
	raised := logfile.GlobalCheckpointObject(h.c.StoreIDs()[0], etcdCP+(1<<18)*1000)
	if err := st.WriteFile(ctx, raised.Name, raised.Data); err != nil {
		t.Fatal(err)
	}
	res = withEtcd.fails("in etcd", "log", "truncate", "-s", url, "--until", fmt.Sprint(etcdCP+1), "-y")
	outputs = append(outputs, res.stdout, res.stderr)
	if err := st.WriteFile(ctx, ts1, good); err != nil {
		t.Fatal(err)
	}
	unchanged("a damaged checkpoint", before)

	// etcd named and silent: refused, unless the operator vouches the task
	// is stopped.
	res = r.fails("did not answer", "log", "truncate", "-s", url, "--until", u, "-y", "-u", "127.0.0.1:1", "--dial-timeout", "1s")
	outputs = append(outputs, res.stdout, res.stderr)
	if !strings.Contains(res.stderr, "--task-stopped") {
		t.Fatalf("silent etcd: the hint does not name --task-stopped:\n%s", res.stderr)
	}
	unchanged("a silent etcd", before)
	if help := r.ok("log", "truncate", "--help"); !strings.Contains(help, "--task-stopped") || !strings.Contains(help, "Risk:") {
		t.Fatalf("--task-stopped's help does not say what it risks:\n%s", help)
	}
	out = r.ok("log", "truncate", "-s", url, "--until", u, "--dry-run", "--task-stopped", "-u", "127.0.0.1:1", "--dial-timeout", "1s")
	outputs = append(outputs, out)
	if !strings.Contains(out, "not reachable") || !strings.Contains(out, "Dry run") {
		t.Fatalf("unreachable etcd, --task-stopped:\n%s", out)
	}

	if err := st.WriteFile(ctx, br.TruncateLockFile, []byte(`{"locker_host":"other-host","locker_pid":42}`)); err != nil {
		t.Fatal(err)
	}
	res = r.fails("other-host", "log", "truncate", "-s", url, "--until", u, "-y") // no lease: BR's, never taken over
	outputs = append(outputs, res.stdout, res.stderr)
	if !strings.Contains(res.stderr, "Hint:") || !strings.Contains(res.stderr, br.TruncateLockFile) {
		t.Fatalf("held lock: %s", res.stderr)
	}
	if err := st.Delete(ctx, br.TruncateLockFile); err != nil {
		t.Fatal(err)
	}
	unchanged("a held lock", before)

	res = run("y\n", "stream", "truncate", "-s", url, "--until", u, "-u", h.etcd.Endpoint())
	if res.code != 0 || !strings.Contains(res.stdout, "Truncated:") {
		t.Fatalf("answer y: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	after := objectsOf(t, ctx, st)
	// Data objects go; meta files of flushes after until stay (emptied) as
	// links of their store's chain.
	logs := func(objs map[string][32]byte) (n int) {
		for name := range objs {
			if strings.HasSuffix(name, ".log") {
				n++
			}
		}
		return n
	}
	if logs(after) >= logs(before) {
		t.Fatalf("truncate removed no data object: %d before, %d after", logs(before), logs(after))
	}
	if got := string(mustRead(t, ctx, st, br.TruncateSafepointFile)); got != u {
		t.Fatalf("safepoint %q, want %q", got, u)
	}
	assertBackedUp(t, ctx, url, h.c, until-1, global)

	md := r.ok("stream", "metadata", "-s", url)
	outputs = append(outputs, md)
	for _, want := range []string{`["log metadata"]`, fmt.Sprintf("[log-min-ts=%d]", until), fmt.Sprintf("[log-max-ts=%d]", info.MaxTS), "[log-min-date=", "[log-max-date="} {
		if !strings.Contains(md, want) {
			t.Fatalf("metadata output %q lacks %s", md, want)
		}
	}
	for _, o := range outputs {
		if strings.Contains(o, secret) {
			t.Fatalf("output leaks the storage secret:\n%s", o)
		}
	}
}

func mustRead(t *testing.T, ctx context.Context, st storage.Storage, name string) []byte {
	t.Helper()
	b, err := st.ReadFile(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
