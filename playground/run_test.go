package playground

import (
	"context"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/meta"
	"logbackup/tests/etcdtest"
)

// TestWaitGlobalNamesLastError: when the checkpoint does not reach the end
// of the workload, the end message says why if the task knows: its pause
// and each store's LastError, not only that the time ran out.
func TestWaitGlobalNamesLastError(t *testing.T) {
	srv := etcdtest.Start(t)
	m := meta.NewClient(srv.Client(t), meta.WithRequestTimeout(5*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info := &brpb.StreamBackupTaskInfo{Name: taskName, StartTs: 100, EndTs: 999999999999999999}
	if err := m.PutTask(ctx, info, []meta.Range{{StartKey: []byte("a"), EndKey: []byte("z")}}); err != nil {
		t.Fatal(err)
	}

	// Nothing reported: the message says so and where to look instead.
	_, err := waitGlobal(m, 1<<40, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "within 200ms") || !strings.Contains(err.Error(), "no store reported an error") {
		t.Fatalf("no error reported: %v", err)
	}

	lastErr := &brpb.StreamBackupError{StoreId: 2, ErrorCode: "KV:LogBackup:StorageAccessDenied", ErrorMessage: "403 AccessDenied on PUT v1/backupmeta/x.meta"}
	if err := m.ReportLastError(ctx, taskName, lastErr); err != nil {
		t.Fatal(err)
	}
	if err := m.PauseTask(ctx, taskName, meta.NewErrorPause("host", 1, time.Now(), lastErr)); err != nil {
		t.Fatal(err)
	}
	_, err = waitGlobal(m, 1<<40, 200*time.Millisecond)
	if err == nil {
		t.Fatal("the checkpoint reached an end it cannot reach")
	}
	for _, want := range []string{"paused by an error", "store 2", "KV:LogBackup:StorageAccessDenied", "403 AccessDenied on PUT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("end message %q lacks %q", err, want)
		}
	}
}
