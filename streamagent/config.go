// Package streamagent is the per-store log-backup agent: it observes the
// regions whose leader is on its store through TiKV's CDC EventFeed,
// buffers committed changes, flushes them to external storage in TiKV's
// log-backup format, and advances checkpoints in etcd only after the data
// they cover is durable.
package streamagent

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	pd "github.com/tikv/pd/client"

	"logbackup/meta"
	"logbackup/storage"
)

// Config configures an Agent.
type Config struct {
	StoreID uint64
	PD      pd.Client
	Meta    *meta.Client
	// ClusterID is sent in CDC requests; TiKV refuses another cluster's.
	ClusterID uint64
	// TLS, when set, is used for the gRPC connection to the store's CDC
	// service (the PD client and etcd get theirs from their own dialers).
	// Without it the store is dialled in plaintext: a cluster that runs
	// with TLS refuses that, and the error says so.
	TLS *tls.Config

	// FlushInterval is how often buffered changes are flushed (TiKV: 3 min).
	FlushInterval time.Duration
	// FileSizeLimit flushes early once this many bytes are buffered and
	// bounds one data object (TiKV: 256 MiB).
	FileSizeLimit int
	// ReconcileInterval is how often PD is asked for leaders that moved
	// onto this store.
	ReconcileInterval time.Duration
	// CoordinatorInterval is how often the elected coordinator publishes
	// the global checkpoint.
	CoordinatorInterval time.Duration
	// FinalFlushTimeout bounds the flush a pause or a shutdown makes of
	// what is buffered (default 20 s, so that a stopping agent exits within
	// a 30 s grace period such as Kubernetes' default); what it does not
	// make durable is rescanned by the next owner of the ranges.
	FinalFlushTimeout time.Duration
	// RegionCheckpointInterval is how often every region checkpoint is
	// written to etcd (default 1 minute); the final flush of a pause or a
	// stop writes them all too, and a region with none gets one at its
	// first flush. Writing them every flush cost etcd a read of all and a
	// write per region each time.
	RegionCheckpointInterval time.Duration
	// MemoryQuota bounds the buffered bytes a task holds in memory; past
	// it they spill to temp files under TempDir (default 256 MiB).
	MemoryQuota int
	// TempDir is where this agent makes its own directory for spilled
	// buffers (store-<id>-<random>, locked while the process lives, one
	// subdirectory per task incarnation, removed on a clean exit; see
	// workdir.go). Default <os temp>/logbackup-agent.
	TempDir string
	// RetryBudget turns a persistent retryable error into a fatal one
	// (TiKV: 30 failed flushes). Default 30 attempts or 10 minutes.
	RetryBudget RetryBudget
	// LagLimit: the coordinator pauses a task whose global checkpoint lags
	// more than this (BR's advancer: 48 h), so a stuck task cannot hold GC
	// back forever. Negative disables.
	LagLimit time.Duration
	// AutoResume governs resuming tasks paused by recoverable errors.
	AutoResume AutoResume
	// StatusAddress is this agent's /metrics and /status address, shown
	// in its registration.
	StatusAddress string
	// TakeOver replaces the registration of another live agent of the
	// same store, which then stops; without it such an agent refuses to
	// start, since two agents of one store flush the same regions twice.
	TakeOver bool

	// OpenStorage opens a task's storage; default storage.OpenBackend.
	OpenStorage func(ctx context.Context, b *brpb.StorageBackend) (storage.Storage, error)
	Logger      *slog.Logger
	Version     string
}

func (c *Config) withDefaults() error {
	if c.StoreID == 0 || c.PD == nil || c.Meta == nil {
		return fmt.Errorf("agent config needs StoreID, PD and Meta")
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 3 * time.Minute
	}
	if c.FileSizeLimit <= 0 {
		c.FileSizeLimit = 256 << 20
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = 10 * time.Second
	}
	if c.CoordinatorInterval <= 0 {
		c.CoordinatorInterval = 12 * time.Second
	}
	if c.FinalFlushTimeout <= 0 {
		c.FinalFlushTimeout = 20 * time.Second
	}
	if c.RegionCheckpointInterval <= 0 {
		c.RegionCheckpointInterval = time.Minute
	}
	if c.RetryBudget.Attempts <= 0 {
		c.RetryBudget.Attempts = 30
	}
	if c.RetryBudget.Duration <= 0 {
		c.RetryBudget.Duration = 10 * time.Minute
	}
	if c.LagLimit == 0 {
		c.LagLimit = 48 * time.Hour
	}
	if c.AutoResume.MaxAttempts <= 0 {
		c.AutoResume.MaxAttempts = 5
	}
	if c.AutoResume.Backoff <= 0 {
		c.AutoResume.Backoff = 30 * time.Second
	}
	if c.MemoryQuota <= 0 {
		c.MemoryQuota = 256 << 20
	}
	if c.TempDir == "" {
		c.TempDir = filepath.Join(os.TempDir(), "logbackup-agent")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return nil
}
