package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// TestTakeOverFencesTheOldWriter: cluster A's task writes a storage;
// cluster B (its own PD, cluster id and etcd) takes the storage over with
// `start --take-over`. A's agents stop writing there: A's task is paused
// with a StorageOwnedElsewhere LastError naming B, no meta file of A is
// flushed after the takeover, A's checkpoint never covers it; B's agents
// back up B's writes, and verify proves the storage, A's files being the
// previous owner's.
func TestTakeOverFencesTheOldWriter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	url := "local://" + filepath.Join(t.TempDir(), "b")
	a := newHarness(t, ctx, simcluster.Config{Stores: 2}, url, 0)
	for _, s := range a.c.StoreIDs() {
		_, stop := a.agent(s, nil, nil)
		defer stop()
	}
	for i := 0; i < 10; i++ {
		if _, err := a.c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("cluster a")); err != nil {
			t.Fatal(err)
		}
	}
	beforeTakeover, _ := a.c.TSO(ctx)
	a.waitGlobal(beforeTakeover)

	// Cluster B takes the storage over, deliberately.
	bc := startPDCluster(t, ctx, simcluster.Config{Stores: 2})
	if bc.ClusterID() == a.c.ClusterID() {
		t.Fatalf("both clusters have id %d", bc.ClusterID())
	}
	b := &harness{t: t, ctx: ctx, etcd: pdEtcd{bc}, c: bc, url: url}
	b.m = meta.NewClient(b.etcd.Client(t))
	var out bytes.Buffer
	if err := br.Start(ctx, b.env(), br.StartOptions{TaskName: "pitr", Storage: url, TakeOver: true}, &out); err != nil {
		t.Fatal(err)
	}
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	owner, err := logfile.ReadOwner(ctx, st)
	if err != nil || len(owner.Previous) != 1 {
		t.Fatalf("owner record after the takeover: %+v %v", owner, err)
	}
	takenOver := owner.Previous[0].TakenOverTS

	// A keeps committing; its agents must not write them to B's storage.
	for i := 0; i < 10; i++ {
		if _, err := a.c.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("after the takeover")); err != nil {
			t.Fatal(err)
		}
	}
	waitFenced := func(what string) {
		t.Helper()
		var le map[uint64]*brpb.StreamBackupError
		eventually.NoError(t, 60*time.Second, func(ctx context.Context) error {
			le, _ = a.m.LastErrors(ctx, "pitr")
			task, _ := a.m.GetTask(ctx, "pitr")
			var found bool
			for _, e := range le {
				found = found || e.ErrorCode == string(errs.CodeStorageOwned) && strings.Contains(e.ErrorMessage, fmt.Sprint(bc.ClusterID()))
			}
			if !found || task == nil || !task.Pause.Paused {
				return fmt.Errorf("last errors %v", le)
			}
			return nil
		}, "%s: cluster A's task to be fenced off", what)
		for _, e := range le {
			t.Logf("%s: store %d: %s: %s", what, e.StoreId, e.ErrorCode, e.ErrorMessage)
		}
	}
	waitFenced("after the takeover")
	// Resumed, A's agents refuse the storage before their first flush.
	if err := br.Resume(ctx, a.env(), "pitr", true, io.Discard); err != nil {
		t.Fatal(err)
	}
	waitFenced("resumed")

	// B's agents back up B's writes from the storage's checkpoint.
	for _, s := range bc.StoreIDs() {
		_, stop := b.agent(s, nil, nil)
		defer stop()
	}
	task, err := b.m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if _, err := bc.Put(ctx, []byte(fmt.Sprintf("t%d", i)), []byte("cluster b")); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := bc.TSO(ctx)
	global := b.waitGlobal(end)

	// Nothing of A after the takeover: its meta files were all flushed
	// before it, and its checkpoint rests on them.
	if err := st.List(ctx, logfile.MetaDir, func(o storage.ObjectInfo) error {
		n, err := logfile.ParseMetaName(o.Name)
		if err != nil {
			return err
		}
		if n.ClusterID == a.c.ClusterID() && n.FlushTS >= takenOver {
			t.Errorf("cluster A flushed %s after the takeover at %d", o.Name, takenOver)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if g, _, _ := a.m.GlobalCheckpoint(ctx, "pitr"); g >= takenOver {
		t.Fatalf("cluster A's checkpoint %d covers the takeover at %d", g, takenOver)
	}
	// verify (inside) proves the storage: no problem, A's files are history.
	if n := assertBackedUp(t, ctx, url, bc, task.Info.StartTs, global); n != 10 {
		t.Fatalf("%d versions of cluster B backed up, want 10", n)
	}
}

// TestCLITakeOver: through the command line, `br log start` on another
// cluster's storage exits 1 naming the owner and the flag; `br stream
// start --take-over` starts and warns.
func TestCLITakeOver(t *testing.T) {
	ra, _, ca := cliCluster(t)
	rb, cli, cb := cliCluster(t)
	url := "local://" + filepath.Join(t.TempDir(), "backup")
	ra.ok("stream", "start", "--task-name", "pitr", "--storage", url)
	before := snapshot(t, cli)
	res := rb.fails(fmt.Sprint(ca.ClusterID()), "log", "start", "--task-name", "pitr", "--storage", url)
	t.Logf("refused:\n%s", res.stderr)
	if !strings.Contains(res.stderr, "--take-over") {
		t.Fatalf("the refusal does not name --take-over: %s", res.stderr)
	}
	sameSnapshot(t, "refused start", before, snapshot(t, cli))
	out := rb.ok("stream", "start", "--task-name", "pitr", "--storage", url, "--take-over")
	if !strings.Contains(out, "warning: taking the storage over from cluster "+fmt.Sprint(ca.ClusterID())) || !strings.Contains(out, `"pitr" started`) {
		t.Fatalf("take-over output: %s", out)
	}
	t.Logf("taken over:\n%s", out)
	// And the cluster taken over is refused in turn, naming the new owner.
	ra.ok("stream", "stop", "--task-name", "pitr")
	ra.fails(fmt.Sprint(cb.ClusterID()), "stream", "start", "--task-name", "pitr", "--storage", url)
}
