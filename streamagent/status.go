package streamagent

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

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
	// State is the store's state for the task, as `br stream status`
	// shows it (HEALTHY, INITIALIZING, IDLE, RETRYING); LastError and
	// Attempts say why while RETRYING.
	State     string `json:"state,omitempty"`
	LastError string `json:"last_error,omitempty"`
	Attempts  int    `json:"attempts,omitempty"`
}

// The agent's own states in /status.
const (
	// AgentWaiting: started, but PD or its etcd does not answer yet, or
	// PD is not bootstrapped; Reason says which. Set by the command line,
	// which serves /status before the agent exists.
	AgentWaiting = "WAITING"
	AgentRunning = "RUNNING"
	// AgentStoreRemoved: PD says the store left the cluster; every task
	// stopped and the agent exits.
	AgentStoreRemoved = "STORE_REMOVED"
)

// Status is the agent's /status document.
type Status struct {
	StoreID uint64 `json:"store_id"`
	Version string `json:"version"`
	// State is AgentWaiting, AgentRunning or AgentStoreRemoved; Reason
	// says why when not running.
	State  string       `json:"state"`
	Reason string       `json:"reason,omitempty"`
	Tasks  []TaskStatus `json:"tasks"`
	// Spills counts how often any task went over the memory quota.
	Spills int64 `json:"spills"`
	// Retries counts failed flushes that were retried.
	Retries int64 `json:"retries"`
}

// Status reports what the agent is doing now.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Status{StoreID: a.cfg.StoreID, Version: a.cfg.Version, State: AgentRunning, Tasks: []TaskStatus{}, Spills: a.counters.Spills.Load(), Retries: a.counters.Retries.Load()}
	if g := a.gone.Load(); g != nil {
		st.State, st.Reason = AgentStoreRemoved, g.Error()
	}
	for name, h := range a.runners {
		s := h.r.Stats()
		ts := TaskStatus{Name: name, ObservedRegions: s.ObservedRegions.Load(), PendingRanges: s.PendingRanges.Load(), Scanning: s.Scanning.Load(),
			BufferedBytes: s.BufferedBytes.Load(), MemoryBytes: s.MemoryBytes.Load(), StoreCheckpoint: s.StoreCheckpoint.Load()}
		if r := s.Report.Load(); r != nil {
			ts.State, ts.LastError, ts.Attempts = r.State, r.LastErr, r.Attempts
		}
		if ms := s.LastFlushUnixMs.Load(); ms > 0 {
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
