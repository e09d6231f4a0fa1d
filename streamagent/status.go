package streamagent

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// taskStats are written by a task's loop and read by /status.
type taskStats struct {
	observedRegions atomic.Int64
	bufferedBytes   atomic.Int64
	memoryBytes     atomic.Int64
	lastFlushUnixMs atomic.Int64
	storeCheckpoint atomic.Uint64
	pendingRanges   atomic.Int64
	scanning        atomic.Int64
}

// TaskStatus is one task in the agent's /status.
type TaskStatus struct {
	Name            string    `json:"name"`
	ObservedRegions int64     `json:"observed_regions"`
	PendingRanges   int64     `json:"pending_ranges"`
	Scanning        int64     `json:"scanning"`       // subscriptions whose initial scan has not finished
	BufferedBytes   int64     `json:"buffered_bytes"` // in memory and spilled
	MemoryBytes     int64     `json:"memory_bytes"`   // in memory, bounded by the quota
	LastFlush       time.Time `json:"last_flush,omitempty"`
	StoreCheckpoint uint64    `json:"store_checkpoint"`
}

// Status is the agent's /status document.
type Status struct {
	StoreID uint64       `json:"store_id"`
	Version string       `json:"version"`
	Tasks   []TaskStatus `json:"tasks"`
	// Spills counts how often any task went over the memory quota.
	Spills int64 `json:"spills"`
	// Retries counts failed flushes that were retried.
	Retries int64 `json:"retries"`
}

// Status reports what the agent is doing now.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Status{StoreID: a.cfg.StoreID, Version: a.cfg.Version, Tasks: []TaskStatus{}, Spills: a.spills.Load(), Retries: a.retries.Load()}
	for name, h := range a.runners {
		s := &h.r.stats
		ts := TaskStatus{Name: name, ObservedRegions: s.observedRegions.Load(), PendingRanges: s.pendingRanges.Load(), Scanning: s.scanning.Load(),
			BufferedBytes: s.bufferedBytes.Load(), MemoryBytes: s.memoryBytes.Load(), StoreCheckpoint: s.storeCheckpoint.Load()}
		if ms := s.lastFlushUnixMs.Load(); ms > 0 {
			ts.LastFlush = time.UnixMilli(ms)
		}
		st.Tasks = append(st.Tasks, ts)
	}
	sort.Slice(st.Tasks, func(i, j int) bool { return st.Tasks[i].Name < st.Tasks[j].Name })
	return st
}

// Handler serves /metrics from gatherer, /status as JSON and Go's
// profiles under /debug/pprof/ (as TiKV's status address does), so an
// operator can see where an agent's memory and CPU go. The command line
// (/debug/pprof/cmdline) is left out: it could carry what only the host
// should see.
func (a *Agent) Handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Status())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index) // heap, goroutine, allocs, block, mutex, threadcreate
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/cmdline", http.NotFound)
	return mux
}
