package e2e

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/prometheus/client_golang/prometheus"

	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/tests/simcluster"
)

// gatedUploads holds every data object upload while closed.
type gatedUploads struct {
	storage.Storage
	mu   sync.Mutex
	gate chan struct{}
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
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if v, _ := scrape(t, reg, "logbackup_agent_events_total", ""); v >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first rows never arrived")
		}
	}
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	flushed := make(chan error, 1)
	go func() { flushed <- a.FlushNow(ctx) }()
	time.Sleep(200 * time.Millisecond) // the flush is now held in its upload
	put(20, 30)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if v, _ := scrape(t, reg, "logbackup_agent_events_total", ""); v >= 50 {
			break
		}
		if time.Now().After(deadline) {
			v, _ := scrape(t, reg, "logbackup_agent_events_total", "")
			t.Fatalf("intake stalled behind the upload: %v of 50 rows received", v)
		}
	}
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
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := a.FlushNow(ctx); err != nil {
			t.Fatal(err)
		}
		if g, ok, _ := h.m.GlobalCheckpoint(ctx, "pitr"); ok && g >= end {
			global = g
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("global checkpoint never reached %d", end)
		}
	}
	if n := assertBackedUp(t, ctx, "local://"+dir, h.c, h.startTS, global); n != 50 {
		t.Fatalf("%d versions, want 50", n)
	}
}
