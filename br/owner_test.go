package br

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/util/codec"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/logfile"
	"logbackup/tests/etcdtest"
	"logbackup/tests/simcluster"
)

// ownerCluster is one simulated cluster (PD with its own cluster id) with
// its own etcd, as two deployed clusters are.
type ownerCluster struct {
	c   *simcluster.Cluster
	cli *clientv3.Client
	env *Env
}

func newOwnerCluster(t *testing.T, ctx context.Context) *ownerCluster {
	t.Helper()
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cli := etcdtest.Start(t).Client(t)
	return &ownerCluster{c: c, cli: cli, env: NewEnv(meta.NewClient(cli)).WithPD(c.PD())}
}

func (o *ownerCluster) start(ctx context.Context, task, url string, takeOver bool) (string, error) {
	var out bytes.Buffer
	err := Start(ctx, o.env, StartOptions{TaskName: task, Storage: url, TakeOver: takeOver}, &out)
	return out.String(), err
}

// etcdState is every key and value in an etcd and its revision: any
// write changes it.
func etcdState(t *testing.T, ctx context.Context, cli *clientv3.Client) string {
	t.Helper()
	resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "rev %d\n", resp.Header.Revision)
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%q=%q\n", kv.Key, kv.Value)
	}
	return b.String()
}

// openTestStorage opens url for the rest of the test.
func openTestStorage(t testing.TB, ctx context.Context, url string) storage.Storage {
	t.Helper()
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// storageState is every object in a storage with its content.
func storageState(t *testing.T, ctx context.Context, url string) string {
	t.Helper()
	st := openTestStorage(t, ctx, url)
	var b strings.Builder
	if err := st.List(ctx, "", func(o storage.ObjectInfo) error {
		raw, err := st.ReadFile(ctx, o.Name)
		fmt.Fprintf(&b, "%s=%x %v\n", o.Name, raw, err)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func readOwner(t *testing.T, ctx context.Context, url string) *logfile.Owner {
	t.Helper()
	st := openTestStorage(t, ctx, url)
	o, err := logfile.ReadOwner(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func rootClusterID(t *testing.T, ctx context.Context, url string) uint64 {
	t.Helper()
	st := openTestStorage(t, ctx, url)
	raw, err := st.ReadFile(ctx, BackupMetaFile)
	if err != nil {
		t.Fatal(err)
	}
	var bm brpb.BackupMeta
	if err := bm.Unmarshal(raw); err != nil {
		t.Fatal(err)
	}
	return bm.ClusterId
}

// assertUntouched fails unless start changed nothing: not the storage,
// not the cluster's etcd, not its PD's GC safepoints.
func assertUntouched(t *testing.T, ctx context.Context, url string, o *ownerCluster, storageBefore, etcdBefore string, safepoints int) {
	t.Helper()
	if got := storageState(t, ctx, url); got != storageBefore {
		t.Fatalf("the refused start changed the storage:\nbefore:\n%s\nafter:\n%s", storageBefore, got)
	}
	if got := etcdState(t, ctx, o.cli); got != etcdBefore {
		t.Fatalf("the refused start changed etcd:\nbefore:\n%s\nafter:\n%s", etcdBefore, got)
	}
	if n := len(o.c.ServiceSafePoints()); n != safepoints {
		t.Fatalf("the refused start set a GC safepoint: %v", o.c.ServiceSafePoints())
	}
}

// TestStartRefusesAnotherClustersStorage: a second cluster's start on a
// storage the first cluster's task writes is refused, naming the owner,
// and changes nothing; --take-over starts it, records the takeover and
// the new cluster id; the same cluster starting again after a stop
// continues as before; the first cluster is then refused in turn.
func TestStartRefusesAnotherClustersStorage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, b := newOwnerCluster(t, ctx), newOwnerCluster(t, ctx)
	if a.c.ClusterID() == b.c.ClusterID() {
		t.Fatalf("both simulated clusters have id %d", a.c.ClusterID())
	}
	url := "local://" + t.TempDir()
	if _, err := a.start(ctx, "pitr", url, false); err != nil {
		t.Fatal(err)
	}
	if o := readOwner(t, ctx, url); o.ClusterID != a.c.ClusterID() || o.Task != "pitr" || len(o.Previous) != 0 {
		t.Fatalf("owner after the first start: %+v", o)
	}

	storageBefore, etcdBefore, sps := storageState(t, ctx, url), etcdState(t, ctx, b.cli), len(b.c.ServiceSafePoints())
	_, err := b.start(ctx, "other", url, false)
	var ue *Error
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), fmt.Sprint(a.c.ClusterID())) || !strings.Contains(err.Error(), `"pitr"`) ||
		!strings.Contains(ue.Hint, "--take-over") {
		t.Fatalf("second cluster's start: %v (hint %q)", err, HintOf(err))
	}
	assertUntouched(t, ctx, url, b, storageBefore, etcdBefore, sps)

	// Deliberately: --take-over.
	out, err := b.start(ctx, "other", url, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "warning") || !strings.Contains(out, fmt.Sprint(a.c.ClusterID())) {
		t.Fatalf("take-over printed no warning naming cluster %d:\n%s", a.c.ClusterID(), out)
	}
	o := readOwner(t, ctx, url)
	if o.ClusterID != b.c.ClusterID() || o.Task != "other" || len(o.Previous) != 1 ||
		o.Previous[0].ClusterID != a.c.ClusterID() || o.Previous[0].Task != "pitr" || o.Previous[0].TakenOverTS == 0 || o.Previous[0].TakenOverBy != b.c.ClusterID() {
		t.Fatalf("owner after the takeover: %+v", o)
	}
	task, err := b.env.Meta.GetTask(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	if o.TaskStartTS != task.Info.StartTs {
		t.Fatalf("owner record names start ts %d, the task has %d", o.TaskStartTS, task.Info.StartTs)
	}
	if id := rootClusterID(t, ctx, url); id != b.c.ClusterID() {
		t.Fatalf("root backupmeta names cluster %d after the takeover, want %d", id, b.c.ClusterID())
	}

	// The same cluster again, after a stop: BR's restart path, no flag.
	if err := Stop(ctx, b.env, "other", io.Discard); err != nil {
		t.Fatal(err)
	}
	out, err = b.start(ctx, "again", url, false)
	if err != nil || !strings.Contains(out, "continuing it from its last checkpoint") {
		t.Fatalf("restart on the owning cluster: %v\n%s", err, out)
	}
	if o := readOwner(t, ctx, url); o.ClusterID != b.c.ClusterID() || o.Task != "again" || len(o.Previous) != 1 {
		t.Fatalf("owner after the restart: %+v", o)
	}

	// The first cluster, whose task was taken over, is refused now.
	if err := Stop(ctx, a.env, "pitr", io.Discard); err != nil {
		t.Fatal(err)
	}
	storageBefore, etcdBefore, sps = storageState(t, ctx, url), etcdState(t, ctx, a.cli), len(a.c.ServiceSafePoints())
	if _, err := a.start(ctx, "pitr", url, false); err == nil || !strings.Contains(err.Error(), fmt.Sprint(b.c.ClusterID())) {
		t.Fatalf("first cluster after the takeover: %v", err)
	}
	assertUntouched(t, ctx, url, a, storageBefore, etcdBefore, sps)
}

// TestStartRefusesByRootClusterID: a storage without an owner record
// (TiDB's BR or TiKV started it) belongs to the cluster its root
// backupmeta names: another cluster is refused, that cluster restarts.
func TestStartRefusesByRootClusterID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, b := newOwnerCluster(t, ctx), newOwnerCluster(t, ctx)
	url := "local://" + t.TempDir()
	st := openTestStorage(t, ctx, url)
	start, err := a.c.TSO(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bm := brpb.BackupMeta{StartVersion: start, ClusterId: a.c.ClusterID(), BrVersion: "BR v8.5.0"}
	raw, _ := bm.Marshal()
	if err := st.WriteFile(ctx, BackupMetaFile, raw); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteFile(ctx, LockFile, []byte(lockFileBody)); err != nil {
		t.Fatal(err)
	}
	storageBefore, etcdBefore, sps := storageState(t, ctx, url), etcdState(t, ctx, b.cli), len(b.c.ServiceSafePoints())
	if _, err := b.start(ctx, "pitr", url, false); err == nil || !strings.Contains(err.Error(), fmt.Sprint(a.c.ClusterID())) {
		t.Fatalf("another cluster on a BR storage: %v", err)
	}
	assertUntouched(t, ctx, url, b, storageBefore, etcdBefore, sps)
	out, err := a.start(ctx, "pitr", url, false)
	if err != nil || !strings.Contains(out, "continuing") {
		t.Fatalf("the cluster BR started the storage on: %v\n%s", err, out)
	}
	if o := readOwner(t, ctx, url); o.ClusterID != a.c.ClusterID() || len(o.Previous) != 0 {
		t.Fatalf("owner after the restart: %+v", o)
	}
}

// TestStartCorruptOwnerRecord: an owner record that cannot be decoded is a
// clear error naming it (never a panic); --take-over replaces it.
func TestStartCorruptOwnerRecord(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := newOwnerCluster(t, ctx)
	for _, body := range []string{"{not json", `{"version":9,"cluster_id":1,"task":"x"}`, `{"version":1,"cluster_id":1}`, "", "\x00\xff"} {
		url := "local://" + t.TempDir()
		if _, err := a.start(ctx, "pitr", url, false); err != nil {
			t.Fatal(err)
		}
		if err := Stop(ctx, a.env, "pitr", io.Discard); err != nil {
			t.Fatal(err)
		}
		st := openTestStorage(t, ctx, url)
		if err := st.WriteFile(ctx, logfile.OwnerFile, []byte(body)); err != nil {
			t.Fatal(err)
		}
		storageBefore, etcdBefore, sps := storageState(t, ctx, url), etcdState(t, ctx, a.cli), len(a.c.ServiceSafePoints())
		_, err := a.start(ctx, "pitr", url, false)
		if err == nil || !strings.Contains(err.Error(), logfile.OwnerFile) || !strings.Contains(HintOf(err), "--take-over") {
			t.Fatalf("owner record %q: %v (hint %q)", body, err, HintOf(err))
		}
		assertUntouched(t, ctx, url, a, storageBefore, etcdBefore, sps)
		if _, err := a.start(ctx, "pitr", url, true); err != nil {
			t.Fatalf("--take-over over owner record %q: %v", body, err)
		}
		if o := readOwner(t, ctx, url); o.ClusterID != a.c.ClusterID() {
			t.Fatalf("owner after replacing %q: %+v", body, o)
		}
		if err := Stop(ctx, a.env, "pitr", io.Discard); err != nil {
			t.Fatal(err)
		}
	}
}

// fixtureFlush writes one more flush of store (one change of its table)
// at the given time, as cluster with the given task start, after prev.
func (f *fixture) fixtureFlush(t *testing.T, store uint64, at time.Time, prev, cluster, taskStart uint64) *logfile.Flush {
	t.Helper()
	table := int64(70 + store)
	region := logfile.RegionInfo{ID: store*10 + 1, StartKey: codec.EncodeBytes(nil, tableRowKey(table, 0)), EndKey: codec.EncodeBytes(nil, tableRowKey(table, 50)),
		Epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 5}}
	b := logfile.NewBuilder(logfile.BuilderConfig{StoreID: store})
	defer b.Close()
	startTS := tsAt(at.Add(-time.Second))
	if err := b.Add(region, logfile.Change{Key: tableRowKey(table, 7), Value: []byte("after"), StartTS: startTS, CommitTS: startTS + 1<<logicalBits, Op: logfile.OpPut}); err != nil {
		t.Fatal(err)
	}
	fl, err := b.FinishLinked(tsAt(at), tsAt(at.Add(-time.Millisecond)), logfile.Lineage{PrevFlushTS: prev, ClusterID: cluster, TaskStartTS: taskStart})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range fl.Data {
		data, err := o.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		f.put(t, o.Name, data)
	}
	fl.Close()
	f.put(t, fl.Meta.Name, fl.Meta.Data)
	return fl
}

// TestVerifyTakeover: after a takeover the previous owner's meta files
// flushed before it are history (a warning naming the takeover), not a
// second cluster; one it flushed after the takeover is still a problem.
func TestVerifyTakeover(t *testing.T) {
	const newCluster = 42
	f := newFixture(t, fixtureOpts{stores: 2, flushes: 3, linked: true})
	takeover := fixtureNow.Add(-40 * time.Minute) // the fixture's flushes end 50 minutes before now
	newStart := f.global
	o := &logfile.Owner{Version: logfile.OwnerVersion, ClusterID: newCluster, Task: "pitr", TaskStartTS: newStart, SinceTS: tsAt(takeover),
		Previous: []logfile.PreviousOwner{{ClusterID: fixtureCluster, Task: "pitr", TaskStartTS: f.startTS, TakenOverTS: tsAt(takeover), TakenOverBy: newCluster}}}
	if err := logfile.WriteOwner(context.Background(), f.st, o); err != nil {
		t.Fatal(err)
	}
	bm := brpb.BackupMeta{StartVersion: f.startTS, ClusterId: newCluster, BrVersion: "logbackup"}
	raw, _ := bm.Marshal()
	f.put(t, BackupMetaFile, raw)

	// Before the new owner's first flush, and after two of them.
	rep := f.verify(t)
	if len(rep.Problems) > 0 || !strings.Contains(strings.Join(rep.Warnings, "\n"), "taken over") {
		t.Fatalf("before the new owner flushed: problems %v, warnings %v", rep.Problems, rep.Warnings)
	}
	first := f.fixtureFlush(t, 1, takeover.Add(time.Minute), 0, newCluster, newStart)
	f.fixtureFlush(t, 1, takeover.Add(2*time.Minute), first.Name.FlushTS, newCluster, newStart)
	rep = f.verify(t)
	warnings := strings.Join(rep.Warnings, "\n")
	if len(rep.Problems) > 0 || !strings.Contains(warnings, "taken over") || !strings.Contains(warnings, fmt.Sprint(fixtureCluster)) {
		t.Fatalf("after the new owner flushed: problems %v, warnings %v", rep.Problems, rep.Warnings)
	}

	// The previous owner's writer, not fenced, flushed after the takeover.
	late := f.fixtureFlush(t, 2, takeover.Add(3*time.Minute), f.flushes[2][2].Name.FlushTS, fixtureCluster, f.startTS)
	rep = f.verify(t)
	if problemNaming(rep, late.Meta.Name, "two clusters") == "" {
		t.Fatalf("a meta file of cluster %d flushed after the takeover is not a problem: %v", uint64(fixtureCluster), rep.Problems)
	}
	if len(rep.Problems) != 1 {
		t.Fatalf("only the late meta file is foreign: %v", rep.Problems)
	}

	// A corrupt owner record is a problem naming it.
	f.put(t, logfile.OwnerFile, []byte("{"))
	if rep = f.verify(t); problemNaming(rep, logfile.OwnerFile) == "" {
		t.Fatalf("corrupt owner record: %v", rep.Problems)
	}
}

// TestTruncateKeepsOwnerRecord: truncate removes log objects only; the
// owner record stays whatever it truncates (a guard: truncate deletes
// only what meta files list).
func TestTruncateKeepsOwnerRecord(t *testing.T) {
	f := newLogFixture(t)
	o := &logfile.Owner{Version: logfile.OwnerVersion, ClusterID: 7, Task: "pitr", TaskStartTS: f.ts(1)}
	if err := logfile.WriteOwner(f.ctx, f.st, o); err != nil {
		t.Fatal(err)
	}
	f.flush(20, 0, f.put(1, "ta", 10, 12, 8))
	f.flush(40, 0, f.put(1, "tb", 30, 32, 8))
	f.checkpoint(40)
	f.truncate(40)
	if !f.exists(logfile.OwnerFile) {
		t.Fatal("truncate deleted the owner record")
	}
	if got, err := logfile.ReadOwner(f.ctx, f.st); err != nil || got.Task != "pitr" {
		t.Fatalf("owner record after truncate: %+v %v", got, err)
	}
}

// TestStartFullBackupOfAnotherCluster: another cluster's full backup
// storage is refused as a full backup, not as a storage to take over.
func TestStartFullBackupOfAnotherCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := newOwnerCluster(t, ctx)
	url := "local://" + t.TempDir()
	st := openTestStorage(t, ctx, url)
	bm := brpb.BackupMeta{StartVersion: 1, EndVersion: 2, ClusterId: b.c.ClusterID() + 1}
	raw, _ := bm.Marshal()
	if err := st.WriteFile(ctx, BackupMetaFile, raw); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteFile(ctx, LockFile, []byte(lockFileBody)); err != nil {
		t.Fatal(err)
	}
	for _, takeOver := range []bool{false, true} {
		before := storageState(t, ctx, url)
		if _, err := b.start(ctx, "pitr", url, takeOver); err == nil || !strings.Contains(err.Error(), "full (snapshot) backup") {
			t.Fatalf("take-over %v: %v", takeOver, err)
		}
		if storageState(t, ctx, url) != before {
			t.Fatalf("take-over %v: the refused start changed the storage", takeOver)
		}
	}
}
