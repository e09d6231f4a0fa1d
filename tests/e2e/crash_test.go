package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/prometheus/client_golang/prometheus"

	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestCrashBetweenUploadAndCheckpoint: the agent dies after a flush's
// files are durable but before any checkpoint moved; its successor rescans
// from the old checkpoint and nothing is lost.
func TestCrashBetweenUploadAndCheckpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, ctx, simcluster.Config{Stores: 1, SplitKeys: [][]byte{[]byte("t5")}}, "local://"+t.TempDir(), 0)
	c, m, startTS, url := h.c, h.m, h.startTS, h.url
	// The process "dies" right after the first meta file is durable: the
	// storage write returns only once the agent is gone.
	var hit atomic.Int32
	crashed := make(chan struct{})
	reg := prometheus.NewRegistry()
	a, stop := h.agent(c.StoreIDs()[0], reg, func(cfg *streamagent.Config) {
		cfg.FlushInterval = time.Hour
		cfg.OpenStorage = func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error) {
			s, err := storage.OpenBackend(ctx, b)
			return &dyingStorage{Storage: s, hit: &hit, crashed: crashed}, err
		}
	})
	for i := 0; i < 50; i++ {
		c.Put(ctx, []byte(fmt.Sprintf("t%d%02d", i%9, i)), []byte("v1"))
	}
	// The flush must carry the rows: a flush that observed and buffered
	// nothing writes no meta file, so it would never reach the crash
	// point (the test hung when it asked before the task had started).
	eventually.True(t, time.Minute, func() bool { return metricSum(t, reg, "logbackup_agent_events_total") >= 50 },
		"the agent to take in the 50 rows")
	before, _, _ := m.GlobalCheckpoint(ctx, "pitr")
	go a.Testing().FlushWithAllRegionCheckpoints(ctx)
	select {
	case <-crashed:
	case <-ctx.Done():
		t.Fatal("the flush never stored its meta file")
	}
	a.Testing().Crash()
	stop()
	// The coordinator may publish the task start (nothing to cover yet),
	// never more: the flush that died covered data past it.
	if g, _, _ := m.GlobalCheckpoint(ctx, "pitr"); g > max(before, startTS) {
		t.Fatalf("a checkpoint moved (%d → %d) though the agent died before writing it", before, g)
	}
	_, stop2 := h.agent(c.StoreIDs()[0], nil, nil)
	defer stop2()
	for i := 0; i < 50; i++ {
		c.Put(ctx, []byte(fmt.Sprintf("t%d%02d", i%9, i)), []byte("v2"))
	}
	end, _ := c.TSO(ctx)
	global := h.waitGlobal(end)
	if n := assertBackedUp(t, ctx, url, c, startTS, global); n != 100 {
		t.Fatalf("%d versions, want 100", n)
	}
}

// TestEtcdDownDuringFlush: with etcd stopped, flushes cannot publish
// checkpoints (none moves ahead of data) and a fatal error's report waits;
// when etcd is back, the checkpoint catches up with nothing lost and the
// report lands.
func TestEtcdDownDuringFlush(t *testing.T) {
	t.Parallel() // its own cluster, mostly waiting: runs beside the other long tests (see TestMain)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s3 := s3test.Start(t, "bk")
	h := newHarnessOwnEtcd(t, ctx, simcluster.Config{Stores: 1}, s3.URL("bk", "log"), 0, meta.WithRequestTimeout(time.Second))
	c, m, etcd, startTS, url := h.c, h.m, h.own, h.startTS, h.url
	reg := prometheus.NewRegistry()
	_, stop := h.agent(c.StoreIDs()[0], reg, func(cfg *streamagent.Config) {
		cfg.RetryBudget = streamagent.RetryBudget{Attempts: 1000, Duration: time.Hour}
	})
	defer stop()
	for i := 0; i < 30; i++ {
		c.Put(ctx, []byte(fmt.Sprintf("t%03d", i)), []byte("a"))
	}
	h.waitGlobal(startTS + 1)

	etcd.Stop(t)
	errs := metricSum(t, reg, "logbackup_agent_errors_total")
	for i := 0; i < 30; i++ {
		c.Put(ctx, []byte(fmt.Sprintf("t%03d", i)), []byte("b"))
	}
	eventually.True(t, 30*time.Second, func() bool { return metricSum(t, reg, "logbackup_agent_errors_total") >= errs+3 },
		"several failed attempts against a dead etcd")
	etcd.Restart(t)
	end, _ := c.TSO(ctx)
	global := h.waitGlobal(end)
	if n := assertBackedUp(t, ctx, url, c, startTS, global); n != 60 {
		t.Fatalf("%d versions, want 60", n)
	}

	// A fatal error while etcd is down: the report waits for etcd. (The
	// flush attempts fail on etcd first, as EtcdUnavailable, retried; the
	// denied upload turns fatal once etcd is back.)
	etcd.Stop(t)
	errs = metricSum(t, reg, "logbackup_agent_errors_total")
	s3.SetFault(s3test.Fault{Status: 403, Remaining: -1, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
	c.Put(ctx, []byte("t999"), []byte("c"))
	eventually.True(t, 30*time.Second, func() bool { return metricSum(t, reg, "logbackup_agent_errors_total") >= errs+3 },
		"several failed attempts against a dead etcd")
	etcd.Restart(t)
	eventually.True(t, 30*time.Second, func() bool {
		le, err := m.LastErrors(ctx, "pitr")
		return err == nil && len(le) == 1
	}, "the fatal error's report, held while etcd was down, to land")
}

// dyingStorage writes the first meta file, then never returns: the agent
// that wrote it is killed before any checkpoint could follow.
type dyingStorage struct {
	storage.Storage
	hit     *atomic.Int32
	crashed chan struct{}
}

func (d *dyingStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	if err := d.Storage.WriteFile(ctx, name, data); err != nil {
		return err
	}
	if strings.HasSuffix(name, ".meta") && d.hit.Add(1) == 1 {
		close(d.crashed)
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}
