package br

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// logFixture is a log backup storage written flush by flush with chosen
// timestamps, through the agent's own file builder.
type logFixture struct {
	t    *testing.T
	ctx  context.Context
	st   storage.Storage
	env  *Env
	base uint64
}

func newLogFixture(t *testing.T) *logFixture {
	t.Helper()
	ctx := context.Background()
	st := openTestStorage(t, ctx, "mem://")
	env := NewEnv(nil)
	env.Location = time.UTC
	f := &logFixture{t: t, ctx: ctx, st: st, env: env, base: ComposeTS(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))}
	if _, _, err := prepareStorage(ctx, st, f.ts(1), 7); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *logFixture) ts(n int) uint64 { return f.base + uint64(n) }

// item is one thing a flush holds: a committed change, or (TiKV's way of
// writing a long value at prewrite) a bare column-family entry.
type item struct {
	region uint64
	change *logfile.Change
	kv     *logfile.KV
}

func (f *logFixture) put(region uint64, key string, start, commit int, valueLen int) item {
	return item{region: region, change: &logfile.Change{Key: []byte(key), Value: bytes.Repeat([]byte{'v'}, valueLen),
		StartTS: f.ts(start), CommitTS: f.ts(commit), Op: logfile.OpPut}}
}

// halves splits a long-value change into its default-CF and write-CF entries.
func (f *logFixture) halves(region uint64, key string, start, commit int) (item, item) {
	kvs := logfile.EncodeChange(nil, logfile.Change{Key: []byte(key), Value: bytes.Repeat([]byte{'L'}, 400),
		StartTS: f.ts(start), CommitTS: f.ts(commit), Op: logfile.OpPut})
	return item{region: region, kv: &kvs[0]}, item{region: region, kv: &kvs[1]}
}

// flush uploads one flush of store 1 at flush ts n: data objects, then
// its meta file. limit is the builder's file size limit (0: default).
func (f *logFixture) flush(n, limit int, items ...item) *logfile.Flush {
	f.t.Helper()
	b := logfile.NewBuilder(logfile.BuilderConfig{StoreID: 1, FileSizeLimit: limit})
	defer b.Close()
	for _, it := range items {
		var err error
		if it.change != nil {
			err = b.Add(logfile.RegionInfo{ID: it.region}, *it.change)
		} else {
			err = b.AddKV(logfile.RegionInfo{ID: it.region}, *it.kv)
		}
		if err != nil {
			f.t.Fatal(err)
		}
	}
	fl, err := b.Finish(f.ts(n), f.ts(n))
	if err != nil {
		f.t.Fatal(err)
	}
	for _, o := range fl.Data {
		if err := f.st.WriteFrom(f.ctx, o.Name, o.Size, o.Open); err != nil {
			f.t.Fatal(err)
		}
	}
	if err := f.st.WriteFile(f.ctx, fl.Meta.Name, fl.Meta.Data); err != nil {
		f.t.Fatal(err)
	}
	return fl
}

func (f *logFixture) checkpoint(n int) {
	o := logfile.GlobalCheckpointObject(1, f.ts(n))
	if err := f.st.WriteFile(f.ctx, o.Name, o.Data); err != nil {
		f.t.Fatal(err)
	}
}

func (f *logFixture) truncate(until int) (*TruncateResult, string) {
	f.t.Helper()
	var out bytes.Buffer
	res, err := TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: fmt.Sprint(f.ts(until)), Yes: true}, &out)
	if err != nil {
		f.t.Fatalf("truncate: %v\n%s", err, out.String())
	}
	return res, out.String()
}

// walk decodes the whole storage into "key@commit" → value.
func (f *logFixture) walk() map[string]string {
	f.t.Helper()
	got := map[string]string{}
	if _, err := logfile.Walk(f.ctx, f.st, func(d logfile.Decoded) error {
		got[fmt.Sprintf("%s@%d", d.Key, d.CommitTS-f.base)] = string(d.Value)
		return nil
	}); err != nil {
		f.t.Fatalf("the storage no longer decodes: %v", err)
	}
	return got
}

func (f *logFixture) exists(name string) bool {
	ok, err := f.st.Exists(f.ctx, name)
	if err != nil {
		f.t.Fatal(err)
	}
	return ok
}

func (f *logFixture) requireVersions(got map[string]string, want ...string) {
	f.t.Helper()
	for _, w := range want {
		if _, ok := got[w]; !ok {
			f.t.Fatalf("%s is gone; storage holds %v", w, keysOf(got))
		}
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestTruncateRemovesOldFlushes: whole flushes older than until go, meta
// files and data; newer ones stay; the safepoint moves log-min-ts.
func TestTruncateRemovesOldFlushes(t *testing.T) {
	f := newLogFixture(t)
	f1 := f.flush(20, 0, f.put(1, "ta", 10, 12, 8), f.put(2, "tb", 14, 16, 300))
	f2 := f.flush(40, 0, f.put(1, "ta", 30, 32, 8))
	f3 := f.flush(60, 0, f.put(1, "ta", 50, 52, 300), f.put(2, "tb", 54, 56, 8))
	empty := f.flush(41, 0)
	f.checkpoint(60)

	res, out := f.truncate(45)
	if res.DataFiles != 2 || res.MetasDeleted != 3 || res.MetasRewritten != 0 {
		t.Fatalf("removed %d files, %d metas deleted, %d rewritten; want 2, 3 (one empty), 0\n%s", res.DataFiles, res.MetasDeleted, res.MetasRewritten, out)
	}
	for _, gone := range []*logfile.Flush{f1, f2, empty} {
		for _, name := range objectNames(gone) {
			if f.exists(name) {
				t.Fatalf("%s is still there", name)
			}
		}
	}
	for _, name := range objectNames(f3) {
		if !f.exists(name) {
			t.Fatalf("%s was removed", name)
		}
	}
	got := f.walk()
	f.requireVersions(got, "ta@52", "tb@56")
	if len(got) != 2 {
		t.Fatalf("storage holds %v, want only the flush after until", keysOf(got))
	}
	info, err := ReadLogInfo(f.ctx, f.st)
	if err != nil {
		t.Fatal(err)
	}
	if info.MinTS != f.ts(45) {
		t.Fatalf("log-min-ts %d, want the until %d", info.MinTS, f.ts(45))
	}
	for _, name := range []string{TruncateLockFile, TruncateJournalFile} {
		if f.exists(name) {
			t.Fatalf("%s left behind", name)
		}
	}
}

// TestTruncateKeepsOldValuesOfNewCommits: TiKV writes a long value's
// default-CF entry at prewrite, so it can sit in an older flush than its
// commit. BR's shifted until keeps that flush; truncating at until would
// lose the value of a commit after until.
func TestTruncateKeepsOldValuesOfNewCommits(t *testing.T) {
	f := newLogFixture(t)
	f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	dflt, write := f.halves(1, "tlong", 30, 50)
	f2 := f.flush(40, 0, dflt, f.put(2, "tb", 33, 35, 8))
	f.flush(60, 0, write, f.put(2, "tb", 55, 57, 8))
	f.checkpoint(60)

	res, out := f.truncate(45)
	if res.ShiftUntil != f.ts(30) {
		t.Fatalf("shift until %d, want the long value's start %d\n%s", res.ShiftUntil, f.ts(30), out)
	}
	if res.DataFiles != 1 {
		t.Fatalf("removed %d files, want only the first flush's\n%s", res.DataFiles, out)
	}
	if !f.exists(f2.Meta.Name) {
		t.Fatal("the flush holding the value of a commit after until was removed")
	}
	got := f.walk()
	f.requireVersions(got, "tlong@50", "tb@57")
	if got["tlong@50"] != strings.Repeat("L", 400) {
		t.Fatalf("tlong@50 = %q", got["tlong@50"])
	}
}

// TestTruncateRewritesMetaFiles: a meta file whose groups straddle the
// shifted until is written back with the newer group only, its ts
// statistics recomputed; the older group's object goes.
func TestTruncateRewritesMetaFiles(t *testing.T) {
	f := newLogFixture(t)
	// Two groups: the first object reaches the 100-byte limit alone.
	fa := f.flush(41, 100, f.put(1, "tx", 11, 12, 200), f.put(2, "ty", 39, 40, 8))
	if len(fa.Metadata.FileGroups) != 2 {
		t.Fatalf("fixture: %d groups, want 2", len(fa.Metadata.FileGroups))
	}
	f.flush(60, 0, f.put(1, "td", 30, 50, 300)) // its start (30) is the shifted until
	f.checkpoint(60)

	res, out := f.truncate(45)
	if res.DataFiles != 1 || res.MetasRewritten != 1 || res.MetasDeleted != 0 {
		t.Fatalf("removed %d files, rewrote %d, deleted %d metas; want 1, 1, 0\n%s", res.DataFiles, res.MetasRewritten, res.MetasDeleted, out)
	}
	old, kept := fa.Metadata.FileGroups[0], fa.Metadata.FileGroups[1]
	if f.exists(old.Path) || !f.exists(kept.Path) {
		t.Fatalf("old group there: %v, newer group there: %v", f.exists(old.Path), f.exists(kept.Path))
	}
	// Its name's tags now follow its content: same flush and store, new
	// l/u; the old name is gone.
	if f.exists(fa.Meta.Name) {
		t.Fatal("the rewritten meta file kept its old name, whose tags no longer match it")
	}
	var rewritten []string
	if err := f.st.List(f.ctx, logfile.MetaDir, func(o storage.ObjectInfo) error {
		if strings.HasPrefix(o.Name, fa.Meta.Name[:len(logfile.MetaDir)+32]) {
			rewritten = append(rewritten, o.Name)
		}
		return nil
	}); err != nil || len(rewritten) != 1 {
		t.Fatalf("meta files of the rewritten flush: %v (%v)", rewritten, err)
	}
	raw, err := f.st.ReadFile(f.ctx, rewritten[0])
	if err != nil {
		t.Fatal(err)
	}
	md, err := logfile.DecodeMetadata(raw)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := logfile.ParseMetaName(rewritten[0]); err != nil || n.MinTS != md.MinTs || n.MaxTS != md.MaxTs {
		t.Fatalf("rewritten name %s says %d..%d, content %d..%d (%v)", rewritten[0], n.MinTS, n.MaxTS, md.MinTs, md.MaxTs, err)
	}
	if len(md.FileGroups) != 1 || md.FileGroups[0].Path != kept.Path || md.MinTs != kept.MinTs || md.MaxTs != kept.MaxTs {
		t.Fatalf("rewritten meta: %d groups, min %d max %d; want only %s (%d..%d)", len(md.FileGroups), md.MinTs, md.MaxTs, kept.Path, kept.MinTs, kept.MaxTs)
	}
	got := f.walk()
	f.requireVersions(got, "ty@40", "td@50")
	if _, ok := got["tx@12"]; ok {
		t.Fatal("tx@12 survived")
	}
}

// TestTruncateKeepsValuesOfKeptRecords: inside one flush, a long value's
// default-CF file can land in another object than its write record. When
// that write record's object stays, its value's object stays too, so the
// storage keeps decoding as a whole (BR alone would drop it: its restore
// never reads records before until).
func TestTruncateKeepsValuesOfKeptRecords(t *testing.T) {
	f := newLogFixture(t)
	f.flush(20, 0, f.put(1, "told", 5, 6, 8))
	// Objects: [r1 default (value of tlong)] [r1 write tlong@35, r2 write tc@42].
	m1 := f.flush(43, 100, f.put(1, "tlong", 30, 35, 300), f.put(2, "tc", 41, 42, 8))
	if len(m1.Metadata.FileGroups) != 2 {
		t.Fatalf("fixture: %d groups, want 2", len(m1.Metadata.FileGroups))
	}
	f.flush(60, 0, f.put(1, "td", 38, 50, 300)) // shifted until: 38
	f.checkpoint(60)

	res, out := f.truncate(45)
	if res.ShiftUntil != f.ts(38) || res.DataFiles != 1 {
		t.Fatalf("shift until %d (want %d), %d files removed (want 1)\n%s", res.ShiftUntil, f.ts(38), res.DataFiles, out)
	}
	got := f.walk()
	f.requireVersions(got, "tlong@35", "tc@42", "td@50")
}

// TestTruncateRefusals: an until past the storage's checkpoint, a storage
// with no log backup, and a held lock are refused with nothing changed.
func TestTruncateRefusals(t *testing.T) {
	f := newLogFixture(t)
	f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	f.checkpoint(20)
	var out bytes.Buffer
	for _, until := range []string{fmt.Sprint(f.ts(21)), "2037-12-31 00:00:00+0800"} {
		_, err := TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: until, Yes: true}, &out)
		if err == nil || !strings.Contains(err.Error(), "global checkpoint") || HintOf(err) == "" {
			t.Fatalf("until %s past the checkpoint: %v (hint %q)", until, err, HintOf(err))
		}
	}
	_, err := TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: "yesterday", Yes: true}, &out)
	if err == nil || !strings.Contains(err.Error(), "invalid --until") {
		t.Fatalf("bad until: %v", err)
	}
	if err := f.st.WriteFile(f.ctx, TruncateLockFile, []byte(`{"locker_host":"elsewhere","locker_pid":7}`)); err != nil {
		t.Fatal(err)
	}
	_, err = TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: fmt.Sprint(f.ts(15)), Yes: true}, &out)
	if err == nil || !strings.Contains(err.Error(), "elsewhere") || !strings.Contains(HintOf(err), TruncateLockFile) {
		t.Fatalf("held lock: %v (hint %q)", err, HintOf(err))
	}
	f.requireVersions(f.walk(), "ta@12")
	if f.exists(TruncateSafepointFile) {
		t.Fatal("a refused truncate wrote the safepoint")
	}

	empty, err := storage.OpenURL(f.ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	_, err = TruncateStorage(f.ctx, f.env, empty, TruncateOptions{Until: fmt.Sprint(f.ts(25)), Yes: true}, &out)
	if err == nil || !strings.Contains(err.Error(), "backupmeta") {
		t.Fatalf("storage without a log backup: %v", err)
	}
}

// TestTruncateDeletesOnlyLogObjects: object paths come from meta file
// content; a meta file listing something that is no log data object (here
// the root backupmeta) makes truncate refuse, not delete it.
func TestTruncateDeletesOnlyLogObjects(t *testing.T) {
	f := newLogFixture(t)
	fl := f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	fl.Metadata.FileGroups[0].Path = BackupMetaFile
	raw, err := fl.Metadata.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.WriteFile(f.ctx, fl.Meta.Name, raw); err != nil {
		t.Fatal(err)
	}
	f.flush(40, 0, f.put(1, "ta", 30, 32, 8))
	f.checkpoint(40)
	var out bytes.Buffer
	_, err = TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: fmt.Sprint(f.ts(35)), Yes: true}, &out)
	if err == nil || !strings.Contains(err.Error(), BackupMetaFile) {
		t.Fatalf("got %v, want a refusal naming %s\n%s", err, BackupMetaFile, out.String())
	}
	if !f.exists(BackupMetaFile) || !f.exists(fl.Meta.Name) {
		t.Fatal("a refused truncate deleted something")
	}
}

// TestTruncateLockExcludes: a foreign intent (a run taking the lock, or a
// crashed one) blocks a truncate; of many runs taking the lock at once at
// most one gets it; a released lock can be taken again.
func TestTruncateLockExcludes(t *testing.T) {
	f := newLogFixture(t)
	f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	f.checkpoint(20)
	foreign := TruncateLockFile + ".INTENT.00ff"
	if err := f.st.WriteFile(f.ctx, foreign, nil); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_, err := TruncateStorage(f.ctx, f.env, f.st, TruncateOptions{Until: fmt.Sprint(f.ts(15)), Yes: true}, &out)
	if err == nil || !strings.Contains(err.Error(), foreign) || !strings.Contains(HintOf(err), "INTENT") {
		t.Fatalf("foreign intent: %v (hint %q)", err, HintOf(err))
	}
	if err := f.st.Delete(f.ctx, foreign); err != nil {
		t.Fatal(err)
	}

	// All runs list (and find nothing) before any writes its intent, and
	// all have written their intents before any lists again: the worst
	// interleaving, where an exists-then-write lock lets everyone in.
	const runs = 8
	ls := &lineUp{Storage: f.st, n: runs, first: make(chan struct{}), second: make(chan struct{})}
	var wg sync.WaitGroup
	var won atomic.Int32
	releases := make(chan *truncateLock, runs)
	for range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l, err := acquireTruncateLock(f.ctx, f.env, ls); err == nil {
				won.Add(1)
				releases <- l
			}
		}()
	}
	wg.Wait()
	close(releases)
	if won.Load() > 1 {
		t.Fatalf("%d runs hold the lock at once", won.Load())
	}
	for l := range releases {
		l.release(io.Discard)
	}
	// Losers cleaned up their intents: the lock is free again.
	l, err := acquireTruncateLock(f.ctx, f.env, f.st)
	if err != nil {
		t.Fatalf("lock not free after the race: %v", err)
	}
	l.release(io.Discard)
	if f.exists(TruncateLockFile) {
		t.Fatal("release left the lock")
	}
}

// lineUp holds the first n lock listings until all n have listed, and the
// next n until all n have arrived.
type lineUp struct {
	storage.Storage
	n                      int
	mu                     sync.Mutex
	calls, listed, arrived int
	first, second          chan struct{}
}

// count adds one to *c and closes done when it reaches n.
func (l *lineUp) count(c *int, done chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if *c++; *c == l.n {
		close(done)
	}
}

func (l *lineUp) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if prefix != TruncateLockFile {
		return l.Storage.List(ctx, prefix, fn)
	}
	l.mu.Lock()
	l.calls++
	k := l.calls
	l.mu.Unlock()
	switch {
	case k <= l.n:
		err := l.Storage.List(ctx, prefix, fn)
		l.count(&l.listed, l.first)
		<-l.first
		return err
	case k <= 2*l.n:
		l.count(&l.arrived, l.second)
		<-l.second
	}
	return l.Storage.List(ctx, prefix, fn)
}

// objectNames is a flush's data objects' names, then its meta file's.
func objectNames(fl *logfile.Flush) []string {
	var names []string
	for _, o := range fl.Data {
		names = append(names, o.Name)
	}
	return append(names, fl.Meta.Name)
}
