package task

import (
	"context"
	"time"

	"logbackup/meta"
)

// PD service safepoints the agents hold, named as TiKV names its own, so
// an operator (and PD's tooling) sees the same ids whichever writes.
const (
	// flushSafePointTTL is how long a store's flush safepoint outlives its
	// last refresh (TiKV: 2 h). A store whose agent is gone for longer no
	// longer holds GC back; its ranges then rescan from what is durable,
	// and a start below the GC safepoint is refused.
	flushSafePointTTL = 2 * time.Hour
)

// keepFlushSafePoint moves this store's flush safepoint to checkpoint − 1.
// Best effort, as in TiKV: a failure is counted and logged; the next flush
// tries again, and the TTL covers the gap.
func keepFlushSafePoint(ctx context.Context, env *Env, task string, checkpoint uint64) {
	if checkpoint == 0 {
		return
	}
	rctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	defer cancel()
	id := meta.FlushSafePointID(task, env.Settings.StoreID)
	if _, err := env.PD.UpdateServiceGCSafePoint(rctx, id, int64(flushSafePointTTL/time.Second), checkpoint-1); err != nil {
		env.Metrics.CountError("KV:LogBackup:Pd")
		env.Log.Warn("cannot refresh the flush GC safepoint", "id", id, "err", err)
	}
}
