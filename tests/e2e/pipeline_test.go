package e2e

import (
	"bytes"
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

	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/simcluster"
)

// gatedUploads holds every data object upload while closed.
type gatedUploads struct {
	storage.Storage
	mu   sync.Mutex
	gate chan struct{}
	held atomic.Int32 // data object writes waiting at the gate
}

func (g *gatedUploads) WriteFile(ctx context.Context, name string, data []byte) error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil && strings.HasSuffix(name, ".log") {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Storage.WriteFile(ctx, name, data)
}

// WriteFrom is how the agent uploads data objects: held like WriteFile.
func (g *gatedUploads) WriteFrom(ctx context.Context, name string, size int64, open func() (io.ReadCloser, error)) error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil && strings.HasSuffix(name, ".log") {
		g.held.Add(1)
		defer g.held.Add(-1)
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Storage.WriteFrom(ctx, name, size, open)
}

// TestIntakeFlowsDuringUpload: while a flush is uploading (here: held),
// the agent keeps receiving and buffering changes — the task loop no
// longer waits for storage — and once the upload goes through, everything
// is backed up in order.
func TestIntakeFlowsDuringUpload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1, ResolvedTsInterval: 20 * time.Millisecond}, "local://"+dir, 0)
	g := &gatedUploads{}
	reg := prometheus.NewRegistry()
	a, stop := h.agent(1, reg, func(cfg *streamagent.Config) {
		cfg.FlushInterval = time.Hour
		cfg.OpenStorage = func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error) {
			s, err := storage.OpenBackend(ctx, b)
			g.Storage = s
			return g, err
		}
	})
	defer stop()
	put := func(from, n int) {
		for i := from; i < from+n; i++ {
			if _, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%04d", i)), []byte("v")); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(0, 20)
	eventually.True(t, 20*time.Second, func() bool {
		v, _ := scrape(t, reg, "logbackup_agent_events_total", "")
		return v >= 20
	}, "the first 20 rows to arrive")
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	flushed := make(chan error, 1)
	go func() { flushed <- a.Testing().FlushWithAllRegionCheckpoints(ctx) }()
	eventually.True(t, 20*time.Second, func() bool { return g.held.Load() > 0 }, "the flush to reach its upload")
	put(20, 30)
	eventually.NoError(t, 20*time.Second, func(context.Context) error {
		if v, _ := scrape(t, reg, "logbackup_agent_events_total", ""); v < 50 {
			return fmt.Errorf("%v of 50 rows received", v)
		}
		return nil
	}, "intake to go on behind the held upload")
	select {
	case err := <-flushed:
		t.Fatalf("the held flush finished: %v", err)
	default:
	}
	close(gate)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	end, _ := h.c.TSO(ctx)
	var global uint64
	eventually.True(t, 30*time.Second, func() bool {
		if err := a.Testing().FlushWithAllRegionCheckpoints(ctx); err != nil {
			t.Fatal(err)
		}
		g, ok, _ := h.m.GlobalCheckpoint(ctx, "pitr")
		global = g
		return ok && g >= end
	}, "the global checkpoint to reach %d", end)
	if n := assertBackedUp(t, ctx, "local://"+dir, h.c, h.startTS, global); n != 50 {
		t.Fatalf("%d versions, want 50", n)
	}
}

// TestQuotaFreedWhileUploading: once a flush is built its objects stream
// from temp files, so the memory quota no longer counts the builder it
// came from: changes arriving while the upload is held fill a fresh
// builder up to the whole quota without spilling. (Before, the in-flight
// builder's memory counted until the upload ended, and this spilled.)
func TestQuotaFreedWhileUploading(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "b")
	h := newHarness(t, ctx, simcluster.Config{Stores: 1, ResolvedTsInterval: 20 * time.Millisecond}, "local://"+dir, 0)
	g := &gatedUploads{}
	reg := prometheus.NewRegistry()
	const quota = 1 << 20
	a, stop := h.agent(1, reg, func(cfg *streamagent.Config) {
		cfg.FlushInterval = time.Hour
		cfg.MemoryQuota = quota
		cfg.OpenStorage = func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error) {
			s, err := storage.OpenBackend(ctx, b)
			g.Storage = s
			return g, err
		}
	})
	defer stop()
	value := bytes.Repeat([]byte("x"), 8<<10)
	put := func(from, n int) {
		for i := from; i < from+n; i++ {
			if _, err := h.c.Put(ctx, []byte(fmt.Sprintf("t%04d", i)), value); err != nil {
				t.Fatal(err)
			}
		}
		eventually.True(t, 20*time.Second, func() bool {
			v, _ := scrape(t, reg, "logbackup_agent_events_total", "")
			return v >= float64(from+n)
		}, "rows %d..%d to arrive", from, from+n)
	}
	memory := func() int64 {
		var m int64
		for _, ts := range a.Status().Tasks {
			m += ts.MemoryBytes
		}
		return m
	}
	put(0, 50)
	first := memory()
	if first < quota/2 || first >= quota {
		t.Fatalf("the first builder holds %d bytes; the test needs between half the quota and the quota", first)
	}
	gate := make(chan struct{})
	var release sync.Once
	defer release.Do(func() { close(gate) }) // before stop, should the test fail
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	flushed := make(chan error, 1)
	go func() { flushed <- a.Testing().FlushWithAllRegionCheckpoints(ctx) }()
	eventually.True(t, 20*time.Second, func() bool { return g.held.Load() > 0 }, "the flush to reach its upload")
	put(50, 50)
	if v, _ := scrape(t, reg, "logbackup_agent_spills_total", ""); v != 0 {
		t.Fatalf("%v spills while the built flush uploaded: its builder's memory still counted", v)
	}
	if second := memory(); second < quota/2 {
		t.Fatalf("the second builder holds %d bytes, under half the quota: the test proves nothing", second)
	}
	release.Do(func() { close(gate) })
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
}
