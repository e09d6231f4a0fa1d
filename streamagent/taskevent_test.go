package streamagent

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/tikv/client-go/v2/oracle"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
	"logbackup/streamagent/internal/etcdfixture"
)

// TestTaskEventSurvivesAFailedRead: the agent acts on a resume, or on a
// new task, by reading the task and starting it. When that one read fails
// (etcd just back from an outage, a request timing out on a loaded
// machine), the watch has already moved past the event: before, the agent
// logged the failure and never started the task, which stayed NORMAL in
// etcd with no agent flushing it and no error anywhere (a nemesis run's
// checkpoint stood still for ten minutes; an automatic resume after an
// etcd outage never ran). Now the read is retried until it lands, so the
// task starts once etcd answers. The task's storage refuses the start
// itself: what is checked is that a start was tried.
func TestTaskEventSurvivesAFailedRead(t *testing.T) {
	for _, event := range []string{"resume", "new task", "start retry"} {
		t.Run(event, func(t *testing.T) {
			t.Parallel() // mostly waiting
			ctx := context.Background()
			cfg := runConfig(t, "held")
			cli := cfg.Meta.Raw()
			kv := etcdfixture.NewFaultKV(cli.KV)
			cli.KV = kv // every request of the agent's client goes through kv
			watching := make(chan struct{})
			cli.Watcher = &signalWatcher{Watcher: cli.Watcher, prefix: meta.InfoKey(""), called: watching}
			// "resume": the task runConfig made, paused before the agent
			// runs. "new task": that one is gone (one task per cluster)
			// and "evt" is created while the agent runs.
			name := "held"
			switch event {
			case "resume":
				if err := cfg.Meta.PauseTask(ctx, name, meta.NewManualPause("test", 1, time.Now(), "held by the test")); err != nil {
					t.Fatal(err)
				}
			case "new task":
				if err := cfg.Meta.DeleteTask(ctx, name); err != nil {
					t.Fatal(err)
				}
				name = "evt"
			case "start retry":
				// Running: its start fails and is retried (retryStart),
				// and the retry's read of the task is what fails.
			}
			starts := runRefusingStarts(t, cfg)
			// The event must come to the watch, not to Run's first list:
			// the watch starts after the list, from the revision after it.
			select {
			case <-watching:
			case <-time.After(30 * time.Second):
				t.Fatal("the agent did not watch its tasks")
			}

			if event == "start retry" {
				<-starts // the first start, refused by its storage
			}
			var refuse atomic.Bool
			refuse.Store(true)
			kv.SetRule(func(op clientv3.Op) error {
				if refuse.Load() && op.IsGet() && string(op.KeyBytes()) == meta.InfoKey(name) {
					return rpctypes.ErrGRPCTimeout
				}
				return nil
			})
			path := t.TempDir()
			switch event {
			case "resume", "start retry":
				path = ""
				if event == "resume" {
					if err := cfg.Meta.ResumeTask(ctx, name); err != nil {
						t.Fatal(err)
					}
				}
			case "new task":
				info := &brpb.StreamBackupTaskInfo{Name: name, StartTs: oracle.GoTimeToTS(time.Now()),
					Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: path}}}}
				if err := cfg.Meta.PutTask(ctx, info, []meta.Range{{StartKey: []byte("a"), EndKey: []byte("z")}}); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-kv.Refused: // the agent's read for the event failed
			case <-time.After(30 * time.Second):
				t.Fatal("the agent never read the task after the event")
			}
			for len(starts) > 0 { // tried before the failed read: not what is checked
				<-starts
			}
			refuse.Store(false)
			select {
			case got := <-starts:
				if path != "" && got.path != path {
					t.Fatalf("started the task at %q, want %q", got.path, path)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("the task was not started within 30 s of its read failing once (%s)", event)
			}
		})
	}
}

// signalWatcher closes called at the first watch of keys under prefix.
type signalWatcher struct {
	clientv3.Watcher
	prefix string
	once   sync.Once
	called chan struct{}
}

func (w *signalWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	ch := w.Watcher.Watch(ctx, key, opts...)
	if key == w.prefix {
		w.once.Do(func() { close(w.called) })
	}
	return ch
}
