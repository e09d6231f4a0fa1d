package br

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/br/tablefilter"
	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/etcdtest"
	"logbackup/tests/simcluster"
)

// TestVerifyNewestFlush: a store's newest meta file is named by no later
// flush. From storage alone its loss is a warning; with the task's records
// in etcd, whose newest recorded flush the checkpoints rest on, a problem.
func TestVerifyNewestFlush(t *testing.T) {
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 3, linked: true})
	newest := f.flushes[2][2]
	f.del(t, newest.Meta.Name)
	rep := f.verify(t)
	if len(rep.Problems) > 0 || !strings.Contains(strings.Join(rep.Warnings, "\n"), "newest flush of each store cannot be proven") {
		t.Fatalf("storage only: problems %v, warnings %v", rep.Problems, rep.Warnings)
	}
	recorded := map[uint64]uint64{1: f.flushes[1][2].Name.FlushTS, 2: newest.Name.FlushTS}
	rep, err := VerifyWith(context.Background(), f.st, VerifyConfig{Now: func() time.Time { return fixtureNow }, Recorded: recorded, Task: "pitr"})
	if err != nil {
		t.Fatal(err)
	}
	if problemNaming(rep, newest.Meta.Name[:len(logfile.MetaDir)+32], "etcd records") == "" {
		t.Fatalf("with records: %v", rep.Problems)
	}
	// A record behind storage (a crash before the record) is fine.
	recorded[2] = f.flushes[2][1].Name.FlushTS
	rep, _ = VerifyWith(context.Background(), f.st, VerifyConfig{Now: func() time.Time { return fixtureNow }, Recorded: recorded, Task: "pitr"})
	if len(rep.Problems) > 0 || strings.Contains(strings.Join(rep.Warnings, "\n"), "cannot be proven present") {
		t.Fatalf("record behind storage: problems %v, warnings %v", rep.Problems, rep.Warnings)
	}
}

// TestRunVerifyWithTask runs the command's path: the task's span
// checkpoints come from etcd.
func TestRunVerifyWithTask(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	m := meta.NewClient(cli)
	url := "local://" + t.TempDir()
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 3, linked: true, url: url})
	loc, _ := storage.ParseURL(url)
	backend, _ := loc.Backend()
	if err := m.PutTask(ctx, &brpb.StreamBackupTaskInfo{Name: "pitr", StartTs: f.startTS, EndTs: DefaultEndTS, Storage: backend}, tablefilter.AllRanges()); err != nil {
		t.Fatal(err)
	}
	task, gerr := m.GetTask(ctx, "pitr")
	if gerr != nil {
		t.Fatal(gerr)
	}
	for store, fls := range f.flushes {
		if err := m.PutSpanCheckpoints(ctx, "pitr", task.Incarnation, &lbpb.SpanCheckpoints{StoreId: store, FlushTs: fls[len(fls)-1].Name.FlushTS}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.AdvanceGlobalCheckpoint(ctx, "pitr", f.global); err != nil {
		t.Fatal(err)
	}
	env := NewEnv(m)
	env.Now = func() time.Time { return fixtureNow }
	var out bytes.Buffer
	if err := RunVerify(ctx, env, VerifyOptions{Storage: url, TaskName: "pitr"}, &out); err != nil {
		t.Fatalf("intact: %v\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "warning") {
		t.Fatalf("warnings with the task's records:\n%s", out.String())
	}
	// A global checkpoint raised within the flushed range: nothing in
	// storage contradicts it, etcd's does.
	raised := logfile.GlobalCheckpointObject(2, f.global+1)
	f.put(t, raised.Name, raised.Data)
	if rep := f.verify(t); len(rep.Problems) > 0 {
		t.Fatalf("storage alone cannot see a raised global checkpoint, yet: %v", rep.Problems)
	}
	out.Reset()
	if err := RunVerify(ctx, env, VerifyOptions{Storage: url, TaskName: "pitr"}, &out); err == nil || !strings.Contains(out.String(), "PROBLEM: "+raised.Name+": ") {
		t.Fatalf("raised global checkpoint: %v\n%s", err, out.String())
	}
	lowered := logfile.GlobalCheckpointObject(2, f.global)
	f.put(t, lowered.Name, lowered.Data)
	f.del(t, f.flushes[1][2].Meta.Name)
	out.Reset()
	err := RunVerify(ctx, env, VerifyOptions{Storage: url, TaskName: "pitr"}, &out)
	if err == nil || !strings.Contains(out.String(), "PROBLEM: "+f.flushes[1][2].Meta.Name[:len(logfile.MetaDir)+32]) {
		t.Fatalf("newest flush deleted: %v\n%s", err, out.String())
	}
	if err := RunVerify(ctx, env, VerifyOptions{Storage: url, TaskName: "other"}, &out); err == nil {
		t.Fatal("an unknown task verified")
	}
}

// TestStartRecordsClusterID: the root backupmeta carries PD's cluster id,
// which verify compares with the meta files'.
func TestStartRecordsClusterID(t *testing.T) {
	ctx := context.Background()
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := etcdtest.Start(t)
	env := NewEnv(meta.NewClient(srv.Client(t))).WithPD(c.PD())
	dir := t.TempDir()
	if err := Start(ctx, env, StartOptions{TaskName: "pitr", Storage: "local://" + dir}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if id := rootClusterID(t, ctx, "local://"+dir); id != c.ClusterID() {
		t.Fatalf("root backupmeta cluster id %d, want PD's %d", id, c.ClusterID())
	}
}
