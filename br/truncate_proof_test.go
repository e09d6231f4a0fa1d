package br

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/br/tablefilter"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/etcdtest"
)

// snapshot is every object of st with its content's hash.
func snapshot(t *testing.T, st storage.Storage) map[string][32]byte {
	t.Helper()
	ctx := context.Background()
	out := map[string][32]byte{}
	if err := st.List(ctx, "", func(o storage.ObjectInfo) error {
		b, err := st.ReadFile(ctx, o.Name)
		if err != nil {
			return err
		}
		out[o.Name] = sha256.Sum256(b)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func requireUnchanged(t *testing.T, what string, before, after map[string][32]byte) {
	t.Helper()
	for name, h := range before {
		if g, ok := after[name]; !ok {
			t.Fatalf("%s: %s was deleted", what, name)
		} else if g != h {
			t.Fatalf("%s: %s was rewritten", what, name)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			t.Fatalf("%s: %s was written", what, name)
		}
	}
}

// proofCase is one damage to a checkpoint source and the object a
// truncate must name when it refuses.
type proofCase struct {
	name string
	// damage breaks the fixture (and etcd's records of its task) and
	// returns the object the refusal must name and the --until to try.
	damage func(t *testing.T, f *fixture, d *proofDeps) (object string, until uint64)
}

// proofDeps is what a damage may touch: the storage's task in etcd.
type proofDeps struct {
	ctx  context.Context
	m    *meta.Client
	raw  func(key string, ts uint64) // writes a checkpoint value as is
	task string
}

func putTS(t *testing.T, f *fixture, store, ts uint64) string {
	o := logfile.GlobalCheckpointObject(store, ts)
	f.put(t, o.Name, o.Data)
	return o.Name
}

func minutes(ts uint64, n int) uint64 {
	return ts + uint64(n)*uint64(time.Minute.Milliseconds())<<logicalBits
}

// proofCases: every kind of checkpoint source truncate reads, damaged.
// The fixture's stores flushed every 3 minutes for 36 minutes (12
// flushes), and the global checkpoint is that of the 11th.
var proofCases = []proofCase{
	{"a store's .ts is 0x7FFF…", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		return putTS(t, f, 2, 0x7FFFFFFFFFFFFFFF), minutes(f.global, 40)
	}},
	{"a store's .ts holds 8 bytes of text", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		name := logfile.GlobalCheckpointObject(2, 0).Name
		f.put(t, name, []byte("20250601"))
		return name, minutes(f.global, 40)
	}},
	{"a store's .ts is not 8 bytes", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		name := logfile.GlobalCheckpointObject(2, 0).Name
		f.put(t, name, []byte{1, 2, 3, 4, 5})
		return name, f.global
	}},
	{"a store's .ts is past every flush", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		return putTS(t, f, 1, minutes(f.global, 40)), minutes(f.global, 40)
	}},
	{"a store's .ts leads the others by more than a flush", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		// The task lags (one region held back): the stores flushed to the
		// 36th minute, the global checkpoint stayed at the 6th.
		old := minutes(f.startTS, 6)
		putTS(t, f, 1, old)
		if d.m != nil {
			d.raw(meta.GlobalCheckpointKey(d.task), old)
		}
		return putTS(t, f, 2, minutes(old, 24)), minutes(old, 20)
	}},
	{"a meta file cannot be decoded", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		name := f.metas[1][5]
		f.put(t, name, []byte("not a meta file"))
		return name, f.global
	}},
	{"a meta file flushed in the future", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		fl := f.flushes[1][11]
		n := fl.Name
		n.FlushTS = 0x7FFFFFFFFFFFFF
		n.Linked = false
		name := n.Format()
		f.put(t, name, fl.Meta.Data)
		return name, f.global
	}},
	{"etcd's central_global is in the future", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		d.raw(meta.GlobalCheckpointKey(d.task), 0x7FFFFFFFFFFFFFFF)
		return "etcd " + meta.GlobalCheckpointKey(d.task), f.global
	}},
	{"etcd's central_global is past every flush", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		putTS(t, f, 1, minutes(f.global, 40))
		putTS(t, f, 2, minutes(f.global, 40))
		d.raw(meta.GlobalCheckpointKey(d.task), minutes(f.global, 40))
		return "etcd " + meta.GlobalCheckpointKey(d.task), minutes(f.global, 40)
	}},
	{"etcd's central_global leads the storage by more than a flush", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		old := minutes(f.startTS, 6)
		putTS(t, f, 1, old)
		putTS(t, f, 2, old)
		d.raw(meta.StorageCheckpointKey(d.task, 1), old)
		d.raw(meta.StorageCheckpointKey(d.task, 2), old)
		d.raw(meta.GlobalCheckpointKey(d.task), minutes(old, 24))
		return "etcd " + meta.GlobalCheckpointKey(d.task), old
	}},
	{"etcd's store checkpoint is past every flush", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		d.raw(meta.StoreCheckpointKey(d.task, 1), minutes(f.global, 40))
		return "etcd " + meta.StoreCheckpointKey(d.task, 1), f.global
	}},
	{"etcd's storage checkpoint is past central_global", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		d.raw(meta.StorageCheckpointKey(d.task, 2), minutes(f.global, 2))
		return "etcd " + meta.StorageCheckpointKey(d.task, 2), f.global
	}},
	{"etcd's storage checkpoint is in the future", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		d.raw(meta.StorageCheckpointKey(d.task, 2), 0x7FFFFFFFFFFFFFFF)
		return "etcd " + meta.StorageCheckpointKey(d.task, 2), f.global
	}},
	{"a store's .ts is past etcd's central_global", func(t *testing.T, f *fixture, d *proofDeps) (string, uint64) {
		return putTS(t, f, 2, minutes(f.global, 1)), minutes(f.global, 1)
	}},
}

// proofFixture is a 2-store storage of a task recorded in an embedded
// etcd (nil m: storage only), its checkpoints consistent.
func proofFixture(t *testing.T, withEtcd bool) (*fixture, *Env, *proofDeps) {
	t.Helper()
	ctx := context.Background()
	url := ""
	if withEtcd {
		url = "local://" + t.TempDir() // a task's storage cannot be mem://
	}
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 12, linked: true, url: url})
	env := NewEnv(nil)
	env.Now = func() time.Time { return fixtureNow }
	env.Location = time.UTC
	d := &proofDeps{ctx: ctx, task: "pitr"}
	if !withEtcd {
		return f, env, d
	}
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	d.m = meta.NewClient(cli)
	env.Meta = d.m
	loc, err := storage.ParseURL(f.st.String())
	if err != nil {
		t.Fatal(err)
	}
	backend, err := loc.Backend()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.m.PutTask(ctx, &brpb.StreamBackupTaskInfo{Name: d.task, StartTs: f.startTS, EndTs: DefaultEndTS, Storage: backend}, tablefilter.AllRanges()); err != nil {
		t.Fatal(err)
	}
	// What the agents publish: each store's checkpoint (its newest flush's
	// resolved ts), central_global, each store's copy of it.
	d.raw = func(key string, ts uint64) {
		t.Helper()
		if _, err := cli.Put(ctx, key, string(binary.BigEndian.AppendUint64(nil, ts))); err != nil {
			t.Fatal(err)
		}
	}
	for store, fls := range f.flushes {
		d.raw(meta.StoreCheckpointKey(d.task, store), fls[len(fls)-1].Metadata.ResolvedTs)
		d.raw(meta.StorageCheckpointKey(d.task, store), f.global)
	}
	d.raw(meta.GlobalCheckpointKey(d.task), f.global)
	return f, env, d
}

// TestTruncateRefusesUnprovenCheckpoints: each kind of checkpoint source
// truncate reads, damaged (alone, and all at once), makes it refuse naming
// the damaged object, with a hint, having changed nothing; the --until
// tried is one the damaged value would have let through.
func TestTruncateRefusesUnprovenCheckpoints(t *testing.T) {
	for _, c := range proofCases {
		t.Run(c.name, func(t *testing.T) {
			etcd := strings.Contains(c.name, "etcd")
			f, env, d := proofFixture(t, etcd)
			// The intact storage proves: a dry run to the real checkpoint.
			if _, err := TruncateStorage(d.ctx, env, f.st, TruncateOptions{Until: fmt.Sprint(f.global), DryRun: true}, &bytes.Buffer{}); err != nil {
				t.Fatalf("intact storage: %v", err)
			}
			object, until := c.damage(t, f, d)
			before := snapshot(t, f.st)
			var out bytes.Buffer
			_, err := TruncateStorage(d.ctx, env, f.st, TruncateOptions{Until: fmt.Sprint(until), Yes: true}, &out)
			if err == nil {
				t.Fatalf("truncated past a damaged %s:\n%s", object, out.String())
			}
			if !strings.Contains(err.Error(), object+": ") || !strings.Contains(HintOf(err), "br stream verify") {
				t.Fatalf("refusal does not name %s: %v (hint %q)", object, err, HintOf(err))
			}
			requireUnchanged(t, c.name, before, snapshot(t, f.st))
		})
	}
	t.Run("all at once", func(t *testing.T) {
		f, env, d := proofFixture(t, true)
		for _, c := range proofCases {
			if !strings.Contains(c.name, "leads") { // those two lower the rest
				c.damage(t, f, d)
			}
		}
		before := snapshot(t, f.st)
		_, err := TruncateStorage(d.ctx, env, f.st, TruncateOptions{Until: fmt.Sprint(minutes(f.global, 40)), Yes: true}, &bytes.Buffer{})
		if err == nil || HintOf(err) == "" {
			t.Fatalf("every source damaged: %v", err)
		}
		requireUnchanged(t, "every source damaged", before, snapshot(t, f.st))
	})
}

// TestTruncateProvenThenVerifies: on a sound storage with its task in
// etcd, truncate goes ahead, and afterwards the storage verifies with no
// problem and restores from --until.
func TestTruncateProvenThenVerifies(t *testing.T) {
	f, env, d := proofFixture(t, true)
	until := f.flushes[1][6].Name.FlushTS
	var out bytes.Buffer
	res, err := TruncateStorage(d.ctx, env, f.st, TruncateOptions{Until: fmt.Sprint(until), Yes: true}, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if res.DataFiles == 0 {
		t.Fatalf("nothing truncated:\n%s", out.String())
	}
	rep, err := VerifyWith(d.ctx, f.st, VerifyConfig{Now: func() time.Time { return fixtureNow }})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Fatalf("after truncate: %v", rep.Problems)
	}
	if rep.RestorableFrom != until {
		t.Fatalf("restorable from %d, want the until %d", rep.RestorableFrom, until)
	}
	var vout bytes.Buffer
	printVerify(&vout, rep, time.UTC)
	if want := "restorable: " + FormatTS(until, time.UTC) + " .. "; !strings.Contains(vout.String(), want) {
		t.Fatalf("verify prints\n%s\nwant %q", vout.String(), want)
	}
}

// TestMetadataWarnsOfImpossibleCheckpoint: metadata still prints BR's
// line (log-max-ts is BR's, whatever the .ts holds) and, after it, names
// a .ts from the future.
func TestMetadataWarnsOfImpossibleCheckpoint(t *testing.T) {
	url := "local://" + t.TempDir()
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 3, linked: true, url: url})
	env := NewEnv(nil)
	env.Now = func() time.Time { return fixtureNow }
	var out bytes.Buffer
	if err := RunMetadata(context.Background(), env, MetadataOptions{Storage: url}, &out); err != nil || strings.Contains(out.String(), "warning") {
		t.Fatalf("intact: %v\n%s", err, out.String())
	}
	name := putTS(t, f, 2, 0x7FFFFFFFFFFFFFFF)
	out.Reset()
	if err := RunMetadata(context.Background(), env, MetadataOptions{Storage: url}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], `["log metadata"]`) || !strings.Contains(lines[1], "warning: "+name+": ") {
		t.Fatalf("damaged .ts:\n%s", out.String())
	}
}

// TestTruncateScaledInStore: a store scaled in keeps its old .ts for
// good. A truncate past its last flush removes all its meta files; the
// storage must still verify, and the next truncate must not refuse it.
func TestTruncateScaledInStore(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 12, linked: true})
	// Store 2 left after its 3rd flush: its later flushes never happened,
	// its .ts stayed at what it last saw.
	for _, fl := range f.flushes[2][3:] {
		f.del(t, fl.Meta.Name)
		for _, o := range fl.Data {
			f.del(t, o.Name)
		}
	}
	putTS(t, f, 2, f.flushes[2][2].Metadata.ResolvedTs)
	env := NewEnv(nil)
	env.Now = func() time.Time { return fixtureNow }
	for _, k := range []int{6, 8} {
		until := f.flushes[1][k].Name.FlushTS
		var out bytes.Buffer
		if _, err := TruncateStorage(context.Background(), env, f.st, TruncateOptions{Until: fmt.Sprint(until), Yes: true}, &out); err != nil {
			t.Fatalf("truncate to store 1's flush %d: %v\n%s", k, err, out.String())
		}
		rep, err := VerifyWith(context.Background(), f.st, VerifyConfig{Now: func() time.Time { return fixtureNow }})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Problems) > 0 {
			t.Fatalf("after a truncate to store 1's flush %d: %v", k, rep.Problems)
		}
	}
}

// TestTruncateRefusesSilentEtcd: etcd that answered once and then stops
// answering (the command connected, the task's records cannot be read) is
// a refusal that names --task-stopped; with it the truncate goes on, on
// the storage's word alone, and says so.
func TestTruncateRefusesSilentEtcd(t *testing.T) {
	url := "local://" + t.TempDir()
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 12, linked: true, url: url})
	srv := etcdtest.Start(t)
	env := NewEnv(meta.NewClient(srv.Client(t), meta.WithRequestTimeout(500*time.Millisecond)))
	env.Now = func() time.Time { return fixtureNow }
	srv.Stop(t)
	until := f.flushes[1][6].Name.FlushTS
	before := snapshot(t, f.st)
	var out bytes.Buffer
	_, err := TruncateStorage(context.Background(), env, f.st, TruncateOptions{Until: fmt.Sprint(until), Yes: true}, &out)
	if err == nil || !strings.Contains(err.Error(), "etcd did not answer") || !strings.Contains(HintOf(err), "--task-stopped") {
		t.Fatalf("silent etcd: %v (hint %q)\n%s", err, HintOf(err), out.String())
	}
	requireUnchanged(t, "a silent etcd", before, snapshot(t, f.st))
	out.Reset()
	res, err := TruncateStorage(context.Background(), env, f.st, TruncateOptions{Until: fmt.Sprint(until), Yes: true, TaskStopped: true}, &out)
	if err != nil || res.DataFiles == 0 || !strings.Contains(out.String(), "--task-stopped") {
		t.Fatalf("--task-stopped: %v\n%s", err, out.String())
	}
}

// TestTruncateChecksAfter: once done, truncate proves the storage still
// verifies from --until; a problem it finds then (here a meta file lost
// before the truncate, above --until) fails the command with the problem
// and the next step, instead of "the log now restores to".
func TestTruncateChecksAfter(t *testing.T) {
	f, env, d := proofFixture(t, false)
	lost := f.flushes[1][9]
	f.del(t, lost.Meta.Name)
	var out bytes.Buffer
	_, err := TruncateStorage(d.ctx, env, f.st, TruncateOptions{Until: fmt.Sprint(f.flushes[1][6].Name.FlushTS), Yes: true}, &out)
	if err == nil || !strings.Contains(err.Error(), "does not verify") || !strings.Contains(err.Error(), fmt.Sprintf("%016X", lost.Name.FlushTS)) ||
		!strings.Contains(HintOf(err), "br stream verify") {
		t.Fatalf("a storage that does not verify after the truncate: %v (hint %q)\n%s", err, HintOf(err), out.String())
	}
	if strings.Contains(out.String(), "restores to") {
		t.Fatalf("claims a range it did not prove:\n%s", out.String())
	}
}

// TestFlushSlack: one flush's slack follows the stores' flush interval
// (the median gap between a store's flushes, so a pause does not widen
// it), never below TruncateFlushSlack.
func TestFlushSlack(t *testing.T) {
	base := fixtureNow.Add(-5 * time.Hour)
	metas := func(store uint64, gaps ...time.Duration) []*logfile.MetaFile {
		at := base
		out := []*logfile.MetaFile{{Name: logfile.MetaName{StoreID: store, FlushTS: tsAt(at)}}}
		for _, g := range gaps {
			at = at.Add(g)
			out = append(out, &logfile.MetaFile{Name: logfile.MetaName{StoreID: store, FlushTS: tsAt(at)}})
		}
		return out
	}
	m := time.Minute
	for _, c := range []struct {
		name  string
		metas []*logfile.MetaFile
		want  time.Duration
	}{
		{"none", nil, TruncateFlushSlack},
		{"every 3 minutes", metas(1, 3*m, 3*m, 3*m), TruncateFlushSlack},
		{"every 10 minutes, one pause of 2 hours", metas(1, 10*m, 10*m, 120*m, 10*m), 15 * m},
		{"one store every 3, another every 8", append(metas(1, 3*m, 3*m, 3*m), metas(2, 8*m, 8*m, 8*m)...), 12 * m},
	} {
		if got := flushSlack(c.metas); got != c.want {
			t.Errorf("%s: slack %s, want %s", c.name, got, c.want)
		}
	}
}
