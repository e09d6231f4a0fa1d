package meta_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"logbackup/meta"
	"logbackup/proto/lbpb"
)

// snapshot is every key under /tidb/br-stream/ with its value.
func snapshot(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	resp, err := cli.Get(context.Background(), meta.Prefix+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// writeEveryKey writes one key of every kind for task name, directly (the
// one-task rule would refuse a second PutTask).
func writeEveryKey(t *testing.T, cli *clientv3.Client, name string, ts uint64) {
	t.Helper()
	ctx := context.Background()
	info, _ := meta.EncodeTaskInfo(task(name))
	pause, _ := meta.EncodePause(meta.NewManualPause("h", 1, time.Unix(0, 0), name))
	lastErr, _ := meta.EncodeLastError(&brpb.StreamBackupError{StoreId: 1, ErrorCode: "KV:LogBackup:Io", ErrorMessage: name})
	span, _ := proto.Marshal(&lbpb.SpanCheckpoints{StoreId: 1, FlushTs: ts})
	hist, _ := proto.Marshal(&lbpb.RecoveryEvent{StoreId: 1, HappenAtUnixMs: 5, Message: name})
	tsv := string(meta.EncodeTS(ts))
	kvs := map[string]string{
		meta.InfoKey(name):                                               string(info),
		meta.RangeKey(name, []byte("m")):                                 "n",
		meta.RangeKey(name, []byte("t\x00/x")):                           "u",
		meta.PauseKey(name):                                              string(pause),
		meta.StoreCheckpointKey(name, 1):                                 tsv,
		meta.RegionCheckpointKey(name, 7, 2):                             tsv,
		meta.GlobalCheckpointKey(name):                                   tsv,
		meta.CheckpointPrefix(name) + "\x00\x00\x00\x00\x00\x00\x00\x02": tsv, // legacy V1
		meta.StorageCheckpointKey(name, 1):                               tsv,
		meta.LastErrorKey(name, 1):                                       string(lastErr),
		meta.SpanCheckpointKey(name, 3, 1):                               string(span),
		meta.HistoryPrefix(name, 3) + "00000000000000000005-1-1":         string(hist),
	}
	for k, v := range kvs {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPrefixIsolation: every read, list, clear and delete of task "pitr"
// leaves "pitr2"'s keys alone and never reports them, and DeleteTask
// removes every key of "pitr".
func TestPrefixIsolation(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	writeEveryKey(t, cli, "pitr2", 50)
	other := snapshot(t, cli)
	writeEveryKey(t, cli, "pitr", 60)
	if _, err := cli.Delete(ctx, meta.PauseKey("pitr")); err != nil {
		t.Fatal(err)
	}

	st, err := c.GetTask(ctx, "pitr")
	if err != nil || st.Pause.Paused || st.Info.Name != "pitr" {
		t.Fatalf("GetTask(pitr) = %v, %v (pitr2 is the paused one)", st, err)
	}
	if rs, err := c.Ranges(ctx, "pitr"); err != nil || len(rs) != 2 {
		t.Fatalf("Ranges(pitr) = %q, %v", rs, err)
	}
	cps, err := c.Checkpoints(ctx, "pitr")
	if err != nil || len(cps) != 4 {
		t.Fatalf("Checkpoints(pitr) = %+v, %v", cps, err)
	}
	for _, cp := range cps {
		if cp.TS != 60 {
			t.Fatalf("Checkpoints(pitr) includes pitr2's %+v", cp)
		}
	}
	if ts, ok, err := c.GlobalCheckpoint(ctx, "pitr"); ts != 60 || !ok || err != nil {
		t.Fatalf("GlobalCheckpoint(pitr) = %d %v %v", ts, ok, err)
	}
	if scs, err := c.StorageCheckpoints(ctx, "pitr"); err != nil || len(scs) != 1 || scs[1] != 60 {
		t.Fatalf("StorageCheckpoints(pitr) = %v, %v", scs, err)
	}
	if errs, err := c.LastErrors(ctx, "pitr"); err != nil || len(errs) != 1 || errs[1].ErrorMessage != "pitr" {
		t.Fatalf("LastErrors(pitr) = %v, %v", errs, err)
	}
	if scs, err := c.SpanCheckpoints(ctx, "pitr", 3); err != nil || len(scs) != 1 || scs[1].FlushTs != 60 {
		t.Fatalf("SpanCheckpoints(pitr) = %v, %v", scs, err)
	}
	if h, err := c.History(ctx, "pitr", 3); err != nil || len(h) != 1 || h[0].Message != "pitr" {
		t.Fatalf("History(pitr) = %v, %v", h, err)
	}
	// Writes and deletes through pitr.
	if err := c.ResumeTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if err := c.ClearLastErrors(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if errs, _ := c.LastErrors(ctx, "pitr"); len(errs) != 0 {
		t.Fatalf("not cleared: %v", errs)
	}
	if err := c.DeleteTask(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	got := snapshot(t, cli)
	if len(got) != len(other) {
		t.Errorf("after deleting pitr %d keys remain, want pitr2's %d", len(got), len(other))
	}
	for k, v := range other {
		if got[k] != v {
			t.Errorf("pitr2's key %q changed or went away", k)
		}
	}
	for k := range got {
		if _, ok := other[k]; !ok {
			t.Errorf("DeleteTask(pitr) left %q", k)
		}
	}
	if err := c.DeleteTask(ctx, "pitr"); !errors.Is(err, meta.ErrTaskNotFound) {
		t.Fatalf("deleting a deleted task: %v", err)
	}
}

// TestCorruptValuesNameTheKey puts garbage under every key kind and calls
// every operation that reads it: each gives ErrMalformed naming the key,
// and nothing panics.
func TestCorruptValuesNameTheKey(t *testing.T) {
	c, cli, _ := setup(t)
	ctx := context.Background()
	if err := c.PutTask(ctx, task("pitr"), ranges); err != nil {
		t.Fatal(err)
	}
	otherInfo, _ := meta.EncodeTaskInfo(task("other"))
	garbage := "\xff\x00garbage"
	spanRecordOfStore2, _ := proto.Marshal(&lbpb.SpanCheckpoints{StoreId: 2, Spans: []*lbpb.SpanCheckpoints_Span{{StartKey: []byte("a"), Ts: 1}}})
	registrationOfStore2, _ := proto.Marshal(&lbpb.AgentRegistration{StoreId: 2})
	type call func() error
	list := func() error { _, _, err := c.ListTasks(ctx); return err }
	get := func() error { _, err := c.GetTask(ctx, "pitr"); return err }
	checkpoints := func() error { _, err := c.Checkpoints(ctx, "pitr"); return err }
	checks := []struct {
		key, value string
		calls      []call
	}{
		{meta.InfoKey("pitr"), garbage, []call{list, get}},
		{meta.InfoKey("pitr"), string(otherInfo), []call{list, get}}, // names another task
		{meta.PauseKey("pitr"), garbage, []call{list, get}},
		{meta.PauseKey("pitr"), `{"severity":"MANUAL","operation_time":"yesterday"}`, []call{get}},
		{meta.StoreCheckpointKey("pitr", 1), garbage, []call{checkpoints,
			func() error { _, err := c.AdvanceStoreCheckpoint(ctx, "pitr", 1, 5); return err }}},
		{meta.GlobalCheckpointKey("pitr"), garbage, []call{checkpoints,
			func() error { _, _, err := c.GlobalCheckpoint(ctx, "pitr"); return err },
			func() error { _, err := c.AdvanceGlobalCheckpoint(ctx, "pitr", 5); return err }}},
		{meta.RegionCheckpointKey("pitr", 1, 1), garbage, []call{checkpoints,
			func() error { _, err := c.AdvanceRegionCheckpoint(ctx, "pitr", 1, 1, 5); return err },
			func() error {
				return c.AdvanceRegionCheckpoints(ctx, "pitr", []meta.RegionTS{{RegionID: 1, EpochVersion: 1, TS: 5}})
			}}},
		{meta.CheckpointPrefix("pitr") + "\x00\x00\x00\x00\x00\x00\x00\x01", garbage, []call{checkpoints}},
		{meta.CheckpointPrefix("pitr") + "store/notanumber", string(meta.EncodeTS(1)), []call{checkpoints}},
		{meta.CheckpointPrefix("pitr") + "mystery", string(meta.EncodeTS(1)), []call{checkpoints}},
		{meta.StorageCheckpointKey("pitr", 1), garbage, []call{
			func() error { _, err := c.StorageCheckpoints(ctx, "pitr"); return err },
			func() error { _, err := c.AdvanceStorageCheckpoint(ctx, "pitr", 1, 5); return err }}},
		{meta.StorageCheckpointPrefix("pitr") + "x", string(meta.EncodeTS(1)), []call{
			func() error { _, err := c.StorageCheckpoints(ctx, "pitr"); return err }}},
		{meta.LastErrorKey("pitr", 1), garbage, []call{
			func() error { _, err := c.LastErrors(ctx, "pitr"); return err }}},
		{meta.LastErrorPrefix("pitr") + "notanumber", "", []call{
			func() error { _, err := c.LastErrors(ctx, "pitr"); return err }}},
		{meta.SpanCheckpointKey("pitr", 3, 1), garbage, []call{
			func() error { _, err := c.SpanCheckpoints(ctx, "pitr", 3); return err }}},
		// Well-formed records filed under another store's key.
		{meta.SpanCheckpointKey("pitr", 3, 1), string(spanRecordOfStore2), []call{
			func() error { _, err := c.SpanCheckpoints(ctx, "pitr", 3); return err }}},
		{meta.AgentKey(1), string(registrationOfStore2), []call{
			func() error { _, err := c.Agents(ctx); return err }}},
		{meta.HistoryPrefix("pitr", 3) + "1", garbage, []call{
			func() error { _, err := c.History(ctx, "pitr", 3); return err }}},
		{meta.AgentKey(1), garbage, []call{
			func() error { _, err := c.Agents(ctx); return err }}},
	}
	for _, ch := range checks {
		before, err := cli.Get(ctx, ch.key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, ch.key, ch.value); err != nil {
			t.Fatal(err)
		}
		for i, call := range ch.calls {
			err := call()
			if !errors.Is(err, meta.ErrMalformed) || !strings.Contains(err.Error(), fmt.Sprintf("%q", ch.key)) {
				t.Errorf("corrupt %q, call %d: %v", ch.key, i, err)
			}
		}
		// Put back what was there (the task info) or remove the key.
		if len(before.Kvs) > 0 {
			_, err = cli.Put(ctx, ch.key, string(before.Kvs[0].Value))
		} else {
			_, err = cli.Delete(ctx, ch.key)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.GetTask(ctx, "pitr"); err != nil {
		t.Fatalf("after restoring: %v", err)
	}
}
