package meta_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"logbackup/meta"
	"logbackup/tests/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's server and client leave these behind until process exit.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc.(*serverWatchStream).recvLoop"),
	)
}

func task(name string) *brpb.StreamBackupTaskInfo {
	return &brpb.StreamBackupTaskInfo{Name: name, StartTs: 100, EndTs: 999, TableFilter: []string{"*.*"},
		Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: "/tmp/x"}}}}
}

var ranges = []meta.Range{{StartKey: []byte("m"), EndKey: []byte("n")}, {StartKey: []byte("t"), EndKey: []byte("u")}}

func setup(t *testing.T) (*meta.Client, *clientv3.Client, *etcdtest.Server) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	return meta.NewClient(cli), cli, srv
}

func keysUnder(t *testing.T, cli *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func TestTaskLifecycle(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	if err := c.PutTask(ctx, task("other"), ranges); !errors.Is(err, meta.ErrTaskExists) {
		t.Fatalf("second task: %v", err)
	}
	if err := c.PutTask(ctx, task("bad/name"), ranges); err == nil {
		t.Fatal("bad name accepted")
	}
	st, err := c.GetTask(ctx, "pitr")
	if err != nil || st.Info.StartTs != 100 || st.Pause.Paused {
		t.Fatalf("GetTask: %+v %v", st, err)
	}
	rs, err := c.Ranges(ctx, "pitr")
	if err != nil || len(rs) != 2 || string(rs[0].StartKey) != "m" || string(rs[1].EndKey) != "u" {
		t.Fatalf("Ranges: %+v %v", rs, err)
	}
	if _, err := c.GetTask(ctx, "nope"); !errors.Is(err, meta.ErrTaskNotFound) {
		t.Fatalf("missing task: %v", err)
	}
	if err := c.PauseTask(ctx, "nope", nil); !errors.Is(err, meta.ErrTaskNotFound) {
		t.Fatalf("pause missing task: %v", err)
	}
	p := meta.NewManualPause("h", 1, time.Now(), "why")
	if err := c.PauseTask(ctx, "pitr", p); err != nil {
		t.Fatal(err)
	}
	st, _ = c.GetTask(ctx, "pitr")
	if !st.Pause.Paused || st.Pause.V2 == nil || st.Pause.V2.Severity != meta.SeverityManual {
		t.Fatalf("paused: %+v", st.Pause)
	}
	if err := c.PauseTask(ctx, "pitr", nil); err != nil { // legacy empty value
		t.Fatal(err)
	}
	if st, _ = c.GetTask(ctx, "pitr"); !st.Pause.Paused || st.Pause.V2 != nil {
		t.Fatalf("legacy pause: %+v", st.Pause)
	}
	if err := c.ResumeTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	tasks, rev, err := c.ListTasks(ctx)
	if err != nil || len(tasks) != 1 || tasks[0].Pause.Paused || rev == 0 {
		t.Fatalf("ListTasks: %v %d %v", tasks, rev, err)
	}
	e := &brpb.StreamBackupError{HappenAt: 5, ErrorCode: "KV:LogBackup:Io", ErrorMessage: "m", StoreId: 4}
	if err := c.ReportLastError(ctx, "pitr", e); err != nil {
		t.Fatal(err)
	}
	errs, err := c.LastErrors(ctx, "pitr")
	if err != nil || len(errs) != 1 || errs[4].ErrorCode != "KV:LogBackup:Io" {
		t.Fatalf("LastErrors: %v %v", errs, err)
	}
	if err := c.ClearLastErrors(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if errs, _ = c.LastErrors(ctx, "pitr"); len(errs) != 0 {
		t.Fatalf("not cleared: %v", errs)
	}
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if left := keysUnder(t, cli, meta.Prefix+"/"); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
	if err := c.DeleteTask(ctx, "pitr"); !errors.Is(err, meta.ErrTaskNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

// TestPrefixIsolation: task "pitr" never touches "pitr2"'s keys.
func TestPrefixIsolation(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	// Write pitr2's keys by hand: the one-task rule would refuse PutTask.
	raw, _ := task("pitr2").Marshal()
	mustPut := func(k, v string) {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	mustPut(meta.InfoKey("pitr2"), string(raw))
	mustPut(meta.RangeKey("pitr2", []byte("a")), "b")
	mustPut(meta.PauseKey("pitr2"), "")
	mustPut(meta.StoreCheckpointKey("pitr2", 1), string(meta.EncodeTS(50)))
	mustPut(meta.GlobalCheckpointKey("pitr2"), string(meta.EncodeTS(50)))
	mustPut(meta.StorageCheckpointKey("pitr2", 1), string(meta.EncodeTS(50)))
	e, _ := (&brpb.StreamBackupError{StoreId: 1, ErrorCode: "x"}).Marshal()
	mustPut(meta.LastErrorKey("pitr2", 1), string(e))
	other := keysUnder(t, cli, meta.Prefix+"/")

	// pitr's own keys, written through the client.
	raw, _ = task("pitr").Marshal()
	mustPut(meta.InfoKey("pitr"), string(raw))
	mustPut(meta.RangeKey("pitr", []byte("m")), "n")
	if _, err := c.AdvanceStoreCheckpoint(ctx, "pitr", 1, 60); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AdvanceStorageCheckpoint(ctx, "pitr", 1, 60); err != nil {
		t.Fatal(err)
	}
	if rs, _ := c.Ranges(ctx, "pitr"); len(rs) != 1 {
		t.Fatalf("pitr ranges include pitr2's: %v", rs)
	}
	if cps, _ := c.Checkpoints(ctx, "pitr"); len(cps) != 1 {
		t.Fatalf("pitr checkpoints include pitr2's: %v", cps)
	}
	if scs, _ := c.StorageCheckpoints(ctx, "pitr"); len(scs) != 1 || scs[1] != 60 {
		t.Fatalf("pitr storage checkpoints: %v", scs)
	}
	if errs, _ := c.LastErrors(ctx, "pitr"); len(errs) != 0 {
		t.Fatalf("pitr last errors include pitr2's: %v", errs)
	}
	if err := c.ClearLastErrors(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	got := keysUnder(t, cli, meta.Prefix+"/")
	if strings.Join(got, "|") != strings.Join(other, "|") {
		t.Fatalf("deleting pitr changed pitr2's keys:\n got %v\nwant %v", got, other)
	}
}

func TestCheckpointsNeverGoBack(t *testing.T) {
	c, _, _ := setup(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				ts := uint64(1000 + (i*8+w)*(1-2*(i%2)) + i*50) // jumps up and down
				got, err := c.AdvanceGlobalCheckpoint(ctx, "pitr", ts)
				if err != nil {
					t.Error(err)
					return
				}
				if got < ts {
					t.Errorf("stored %d below the %d just written", got, ts)
				}
			}
		}(w)
	}
	wg.Wait()
	var maxWritten uint64
	for w := 0; w < 8; w++ {
		for i := 0; i < 25; i++ {
			maxWritten = max(maxWritten, uint64(1000+(i*8+w)*(1-2*(i%2))+i*50))
		}
	}
	got, ok, err := c.GlobalCheckpoint(ctx, "pitr")
	if err != nil || !ok || got != maxWritten {
		t.Fatalf("global checkpoint %d (ok=%v, %v), want the max written %d", got, ok, err, maxWritten)
	}
	if v, _ := c.AdvanceRegionCheckpoint(ctx, "pitr", 7, 2, 10); v != 10 {
		t.Fatalf("region checkpoint %d", v)
	}
	if v, _ := c.AdvanceRegionCheckpoint(ctx, "pitr", 7, 2, 5); v != 10 {
		t.Fatalf("region checkpoint moved back to %d", v)
	}
	cps, err := c.Checkpoints(ctx, "pitr")
	if err != nil || len(cps) != 2 {
		t.Fatalf("Checkpoints: %v %v", cps, err)
	}
}

// TestCorruptValuesNameTheKey puts garbage under every key kind.
func TestCorruptValuesNameTheKey(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	garbage := "\xff\x00garbage"
	checks := []struct {
		key  string
		call func() error
	}{
		{meta.PauseKey("pitr"), func() error { _, err := c.GetTask(ctx, "pitr"); return err }},
		{meta.StoreCheckpointKey("pitr", 1), func() error { _, err := c.Checkpoints(ctx, "pitr"); return err }},
		{meta.GlobalCheckpointKey("pitr"), func() error { _, _, err := c.GlobalCheckpoint(ctx, "pitr"); return err }},
		{meta.RegionCheckpointKey("pitr", 1, 1), func() error { _, err := c.AdvanceRegionCheckpoint(ctx, "pitr", 1, 1, 5); return err }},
		{meta.StorageCheckpointKey("pitr", 1), func() error { _, err := c.StorageCheckpoints(ctx, "pitr"); return err }},
		{meta.LastErrorKey("pitr", 1), func() error { _, err := c.LastErrors(ctx, "pitr"); return err }},
		{meta.LastErrorPrefix("pitr") + "notanumber", func() error { _, err := c.LastErrors(ctx, "pitr"); return err }},
		{meta.InfoKey("pitr"), func() error { _, _, err := c.ListTasks(ctx); return err }},
	}
	for _, ch := range checks {
		if _, err := cli.Put(ctx, ch.key, garbage); err != nil {
			t.Fatal(err)
		}
		err := ch.call()
		if !errors.Is(err, meta.ErrMalformed) || !strings.Contains(err.Error(), fmt.Sprintf("%q", ch.key)) {
			t.Errorf("corrupt %s: %v", ch.key, err)
		}
		if _, err := cli.Delete(ctx, ch.key); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDialUnreachable(t *testing.T) {
	began := time.Now()
	_, err := meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "cannot reach etcd") {
		t.Fatalf("Dial to a dead endpoint: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("Dial took %s with a 500ms timeout", took)
	}
	if _, err := meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{"127.0.0.1:2379"}, CAFile: "/nonexistent/ca.pem"}); err == nil {
		t.Fatal("missing CA file accepted")
	}
}

func TestDialReachable(t *testing.T) {
	srv := etcdtest.Start(t)
	cli, err := meta.Dial(context.Background(), meta.DialConfig{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cli.Close()
}

func TestAdvanceRegionCheckpointsBatch(t *testing.T) {
	c, _, _ := setup(t)
	ctx := context.Background()
	var cps []meta.RegionTS
	for i := uint64(1); i <= 150; i++ {
		cps = append(cps, meta.RegionTS{RegionID: i, EpochVersion: 2, TS: 100 + i})
	}
	if err := c.AdvanceRegionCheckpoints(ctx, "pitr", cps); err != nil {
		t.Fatal(err)
	}
	// Some go up, some would go down: the lower ones must be ignored.
	// Region 8 was raised by someone else in between (999 > its 108-50).
	if _, err := c.AdvanceRegionCheckpoint(ctx, "pitr", 8, 2, 999); err != nil {
		t.Fatal(err)
	}
	for i := range cps {
		if i%2 == 0 {
			cps[i].TS += 1000
		} else {
			cps[i].TS -= 50
		}
	}
	if err := c.AdvanceRegionCheckpoints(ctx, "pitr", cps); err != nil {
		t.Fatal(err)
	}
	got, err := c.Checkpoints(ctx, "pitr")
	if err != nil || len(got) != 150 {
		t.Fatalf("%d checkpoints, %v", len(got), err)
	}
	for _, cp := range got {
		want := 100 + cp.RegionID
		if (cp.RegionID-1)%2 == 0 {
			want += 1000
		}
		if cp.RegionID == 8 {
			want = 999
		}
		if cp.TS != want {
			t.Fatalf("region %d checkpoint %d, want %d", cp.RegionID, cp.TS, want)
		}
	}
}
