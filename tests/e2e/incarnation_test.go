package e2e

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// brLogStop deletes exactly the keys TiDB's own `br log stop` deletes
// (MetaDataClient.DeleteTask); it knows nothing of the agents' keys.
func brLogStop(ctx context.Context, cli *clientv3.Client, name string) error {
	_, err := cli.Txn(ctx).Then(
		clientv3.OpDelete(meta.InfoKey(name)),
		clientv3.OpDelete(meta.RangesPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(meta.CheckpointPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(meta.PauseKey(name)),
		clientv3.OpDelete(meta.LastErrorPrefix(name), clientv3.WithPrefix()),
		clientv3.OpDelete(meta.StorageCheckpointPrefix(name), clientv3.WithPrefix()),
	).Commit()
	return err
}

// TestRestartFromEarlierTS: a task is stopped (by TiDB's `br log stop`,
// or by ours) and started again under the same name from a ts before the
// old checkpoint, into new storage, while the agents keep running. The new
// storage must hold every version committed after the new start: the old
// incarnation's checkpoints must not be read as the new one's.
func TestRestartFromEarlierTS(t *testing.T) {
	for _, stop := range []struct {
		name string
		fn   func(h *harness) error
	}{
		{"tidb-br-stop", func(h *harness) error { return brLogStop(h.ctx, h.etcd.Client(h.t), "pitr") }},
		{"our-stop", func(h *harness) error { return br.Stop(h.ctx, h.env(), "pitr", io.Discard) }},
	} {
		t.Run(stop.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			h := newHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t5")}, ResolvedTsInterval: 20 * time.Millisecond},
				"local://"+filepath.Join(t.TempDir(), "first"), 0)
			for _, s := range h.c.StoreIDs() {
				_, stopAgent := h.agent(s, nil, nil)
				defer stopAgent()
			}
			put := func(n int, tag string) {
				for i := 0; i < n; i++ {
					if _, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%d%03d", i%9, i)), []byte(tag)); err != nil {
						t.Fatal(err)
					}
				}
			}
			put(10, "a")
			restartFrom, err := h.c.TSO(ctx)
			if err != nil {
				t.Fatal(err)
			}
			put(30, "b") // committed after restartFrom: the new incarnation must have these
			end, _ := h.c.TSO(ctx)
			old := h.waitGlobal(end) // the old incarnation's checkpoints are well past restartFrom
			if err := stop.fn(h); err != nil {
				t.Fatal(err)
			}
			second := "local://" + filepath.Join(t.TempDir(), "second")
			if err := br.Start(ctx, h.env(), br.StartOptions{TaskName: "pitr", StartTS: fmt.Sprint(restartFrom), Storage: second}, io.Discard); err != nil {
				t.Fatal(err)
			}
			put(20, "c")
			end2, _ := h.c.TSO(ctx)
			global := h.waitGlobal(end2)
			n := assertBackedUp(t, ctx, second, h.c, restartFrom, global)
			if n < 50 {
				t.Fatalf("only %d versions committed after the restart point; the test proved little", n)
			}
			t.Logf("old checkpoint %d, restarted from %d: %d versions in the new storage", old, restartFrom, n)
		})
	}
}

// hookedStorage runs hook (once) after a meta file is written, before the
// write returns: the flush that wrote it has not yet written a checkpoint.
// Every storage the agent opens shares one hook.
type hookedStorage struct {
	storage.Storage
	hook *atomic.Pointer[func()]
}

func (h *hookedStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	err := h.Storage.WriteFile(ctx, name, data)
	if err == nil && strings.HasSuffix(name, ".meta") {
		if f := h.hook.Swap(nil); f != nil {
			(*f)()
		}
	}
	return err
}

// heldWatches delays every etcd watch message its client receives while
// held: the agent learns of a stop late, as over a slow link.
type heldWatches struct {
	mu   sync.Mutex
	gate chan struct{} // nil: not held
}

func (w *heldWatches) hold() { w.mu.Lock(); w.gate = make(chan struct{}); w.mu.Unlock() }

func (w *heldWatches) release() {
	w.mu.Lock()
	if w.gate != nil {
		close(w.gate)
		w.gate = nil
	}
	w.mu.Unlock()
}

func (w *heldWatches) interceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || !strings.HasSuffix(method, "/Watch") {
		return cs, err
	}
	return &heldStream{ClientStream: cs, w: w}, nil
}

type heldStream struct {
	grpc.ClientStream
	w *heldWatches
}

func (s *heldStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	s.w.mu.Lock()
	gate := s.w.gate
	s.w.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-s.Context().Done():
		}
	}
	return err
}

// TestStopRacesFlush: `stop` lands while a flush is between its upload and
// its checkpoint writes, and the agent learns of it only afterwards (its
// watch is slow). None of the flush's checkpoint writes may land: after the
// stop no key of the task is left for a task started again under the same
// name to be served from.
func TestStopRacesFlush(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1, ResolvedTsInterval: 20 * time.Millisecond},
		"local://"+filepath.Join(t.TempDir(), "b"), 0)
	watches := &heldWatches{}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{h.etcd.Endpoint()}, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop(), DialOptions: []grpc.DialOption{grpc.WithStreamInterceptor(watches.interceptor)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var hook atomic.Pointer[func()]
	var opened atomic.Int32
	reg := prometheus.NewRegistry()
	a, stopAgent := h.agent(1, reg, func(cfg *streamagent.Config) {
		cfg.Meta = meta.NewClient(cli)
		cfg.FlushInterval = time.Hour // flushes only when the test asks
		cfg.OpenStorage = func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error) {
			s, err := storage.OpenBackend(ctx, b)
			if err != nil {
				return nil, err
			}
			opened.Add(1)
			return &hookedStorage{Storage: s, hook: &hook}, nil
		}
	})
	defer stopAgent()
	defer watches.release()
	for i := 0; i < 20; i++ {
		if _, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%03d", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	// Subscriptions initialised and the rows taken in: the flush has data
	// and checkpoints to write.
	eventually.True(t, 30*time.Second, func() bool {
		st := a.Status()
		return opened.Load() > 0 && len(st.Tasks) == 1 && st.Tasks[0].ObservedRegions > 0 && st.Tasks[0].Scanning == 0 &&
			metricSum(t, reg, "logbackup_agent_events_total") >= 20
	}, "the agent to observe the task's region and take its 20 rows in")
	var stopErr error
	stop := func() {
		watches.hold()
		stopErr = br.Stop(ctx, h.env(), "pitr", io.Discard)
	}
	hook.Store(&stop)
	_ = a.Testing().FlushWithAllRegionCheckpoints(ctx) // fails once the fence notices the stop
	if stopErr != nil {
		t.Fatal(stopErr)
	}
	if hook.Load() != nil {
		t.Fatal("the flush wrote no meta file; the race was not exercised")
	}
	watches.release()
	eventually.True(t, 10*time.Second, func() bool { return len(a.Testing().Tasks()) == 0 }, "the agent to drop the stopped task")
	resp, err := h.etcd.Client(t).Get(ctx, meta.Prefix+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, kv := range resp.Kvs {
		if k := string(kv.Key); !strings.HasPrefix(k, meta.AgentPrefix()) && !strings.HasPrefix(k, meta.CoordinatorPrefix()) {
			left = append(left, k)
		}
	}
	if len(left) > 0 {
		t.Fatalf("a flush racing the stop wrote %d keys after it: %v", len(left), left)
	}
}
