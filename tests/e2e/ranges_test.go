package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/tests/simcluster"
)

// TestRangeToTheEnd: a range with an empty end key means "to the end of
// the key space" (BR writes such ranges for a filter that reaches the last
// table). The task backs it up and its checkpoint moves.
func TestRangeToTheEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startPDCluster(t, ctx, simcluster.Config{Stores: 1, SplitKeys: [][]byte{[]byte("t5")}})
	e := pdEtcd{c}
	m := meta.NewClient(e.Client(t))
	dir := filepath.Join(t.TempDir(), "b")
	loc, err := storage.ParseURL("local://" + dir)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := loc.Backend()
	if err != nil {
		t.Fatal(err)
	}
	start, _ := c.TSO(ctx)
	// The root backupmeta br stream start would have written: verify
	// requires the storage to be a log backup's.
	root, err := (&brpb.BackupMeta{StartVersion: start, ClusterId: c.PD().GetClusterID(ctx)}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	st, err := storage.OpenURL(ctx, "local://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.WriteFile(ctx, br.BackupMetaFile, root); err != nil {
		t.Fatal(err)
	}
	info := &brpb.StreamBackupTaskInfo{Name: "pitr", StartTs: start, EndTs: ^uint64(0) >> 1, Storage: backend, TableFilter: []string{"*.*"}}
	if err := m.PutTask(ctx, info, []meta.Range{{StartKey: []byte("t"), EndKey: nil}}); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: ctx, c: c, etcd: e, m: m, startTS: start}
	_, stop := h.agent(1, nil, nil)
	defer stop()
	for _, k := range []string{"t1", "t7", "z9", "\xff\xff"} {
		if _, err := c.Put(ctx, []byte(k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := c.TSO(ctx)
	global := h.waitGlobal(end)
	if n := assertBackedUp(t, ctx, "local://"+dir, c, start, global); n != 4 {
		t.Fatalf("%d versions, want 4", n)
	}
}

// TestInvalidRangeReported: a range whose end is not after its start
// (written by some other tool; start refuses it) is reported by the agents
// as MalformedMetadata with an ERROR pause, instead of observing nothing
// with a stalled checkpoint and status NORMAL.
func TestInvalidRangeReported(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1}, "local://"+filepath.Join(t.TempDir(), "b"), 0)
	cli := h.etcd.Client(t)
	if _, err := cli.Delete(ctx, meta.RangesPrefix("pitr"), clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, meta.RangeKey("pitr", []byte("u")), "t"); err != nil {
		t.Fatal(err)
	}
	_, stop := h.agent(1, nil, nil)
	defer stop()
	e := waitLastError(t, ctx, h.m)
	if e.ErrorCode != "KV:LogBackup:MalformedMetadata" || !strings.Contains(e.ErrorMessage, "not after its start") {
		t.Fatalf("LastError %s: %s", e.ErrorCode, e.ErrorMessage)
	}
}
