package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Agent states a store reports for a task (`br stream status`, `resume
// --wait`). PAUSED and ERROR are not reported: they follow from the task's
// pause record and the stores' LastErrors.
const (
	StateInitializing = "INITIALIZING" // initial scans running
	StateHealthy      = "HEALTHY"
	StateIdle         = "IDLE"     // no leader region of the task on this store
	StateRetrying     = "RETRYING" // within the retry budget
)

// Progress is what one store's agent reports about one incarnation of a
// task, about once a second, at stream-agent/progress/<task>/<inc>/<store>
// (JSON: read by people and scripts as much as by the CLI).
type Progress struct {
	StoreID uint64 `json:"store_id"`
	State   string `json:"state"`
	// SinceUnixMs is when the store entered State.
	SinceUnixMs int64 `json:"since_unix_ms"`
	// UpdatedUnixMs is when this record was written; a record older than a
	// few seconds is from an agent that is gone.
	UpdatedUnixMs int64 `json:"updated_unix_ms"`
	// ObservedRegions are the regions subscribed; Scanning of them have not
	// finished their initial scan; PendingRanges wait to be placed.
	ObservedRegions int64 `json:"observed_regions"`
	Scanning        int64 `json:"scanning"`
	PendingRanges   int64 `json:"pending_ranges"`
	// StoreCheckpoint is the store's checkpoint after its last flush.
	StoreCheckpoint uint64 `json:"store_checkpoint"`
	LastFlushUnixMs int64  `json:"last_flush_unix_ms,omitempty"`
	// RowsPerSec and BytesPerSec are the changes received, averaged over
	// the last seconds.
	RowsPerSec  float64 `json:"rows_per_sec"`
	BytesPerSec float64 `json:"bytes_per_sec"`
	// LastError and Attempts describe a flush being retried (RETRYING).
	LastError string `json:"last_error,omitempty"`
	Attempts  int    `json:"attempts,omitempty"`
}

// ProgressPrefix holds the stores' reports of one incarnation of a task.
func ProgressPrefix(task string, inc int64) string { return incarnationPrefix("progress/", task, inc) }

// ProgressKey is one store's report.
func ProgressKey(task string, inc int64, store uint64) string {
	return ProgressPrefix(task, inc) + strconv.FormatUint(store, 10)
}

// PutProgress writes a store's report, fenced like every agent write.
func (c *Client) PutProgress(ctx context.Context, task string, inc int64, p *Progress) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode progress: %w", err)
	}
	if err := c.put(ctx, task, ProgressKey(task, inc, p.StoreID), string(raw)); err != nil {
		return fmt.Errorf("put progress of store %d: %w", p.StoreID, err)
	}
	return nil
}

// Progresses returns every store's report of one incarnation of a task.
func (c *Client) Progresses(ctx context.Context, task string, inc int64) (map[uint64]*Progress, error) {
	prefix := ProgressPrefix(task, inc)
	out := map[uint64]*Progress{}
	err := c.scan(ctx, prefix, func(k, v []byte) error {
		store, err := strconv.ParseUint(strings.TrimPrefix(string(k), prefix), 10, 64)
		if err != nil {
			return malformed(string(k), fmt.Errorf("store id: %w", err))
		}
		p := &Progress{}
		if err := json.Unmarshal(v, p); err != nil {
			return malformed(string(k), err)
		}
		if p.StoreID != store {
			return malformed(string(k), fmt.Errorf("progress of store %d filed under store %d", p.StoreID, store))
		}
		out[store] = p
		return nil
	})
	return out, err
}
