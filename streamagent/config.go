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
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
	"logbackup/streamagent/recovery"
	"logbackup/streamagent/retry"
)

// The agent's defaults, one source for each: withDefaults fills an unset
// Config field with them, and the agent's command line
// (streamagent/agentrun) shows and uses the same values as its flags'
// defaults (a test there holds the two together).
const (
	// DefaultFlushInterval is TiKV's log-backup flush interval.
	DefaultFlushInterval = 3 * time.Minute
	// DefaultFileSizeLimit is TiKV's file-size-limit, which logfile owns:
	// it also bounds one merged object there.
	DefaultFileSizeLimit = logfile.DefaultFileSizeLimit
	// DefaultMemoryQuota is what a task buffers in memory before spilling.
	DefaultMemoryQuota = 256 << 20
	// DefaultReconcileInterval is how often PD is asked for leaders that
	// moved onto the store.
	DefaultReconcileInterval = 10 * time.Second
	// DefaultCoordinatorInterval is how often the coordinator publishes the
	// global checkpoint.
	DefaultCoordinatorInterval = 12 * time.Second
	// DefaultFinalFlushTimeout lets a stopping agent exit within a 30 s
	// grace period such as Kubernetes' default.
	DefaultFinalFlushTimeout = 20 * time.Second
	// DefaultRegionCheckpointInterval is how often every region checkpoint
	// is written to etcd.
	DefaultRegionCheckpointInterval = time.Minute
	// DefaultRetryAttempts and DefaultRetryDuration are the retry budget
	// (TiKV: 30 failed flushes).
	DefaultRetryAttempts = 30
	DefaultRetryDuration = 10 * time.Minute
	// DefaultLagLimit is BR's advancer's (48 h): a task lagging more is
	// paused.
	DefaultLagLimit = 48 * time.Hour
	// DefaultAutoResumeAttempts and DefaultAutoResumeBackoff bound the
	// automatic resumes of a task paused by a recoverable error.
	DefaultAutoResumeAttempts = recovery.DefaultMaxAttempts
	DefaultAutoResumeBackoff  = recovery.DefaultBackoff
)

// DefaultTempDir is where an agent makes its directory for spilled
// buffers unless told otherwise.
func DefaultTempDir() string { return filepath.Join(os.TempDir(), "logbackup-agent") }

// RetryBudget bounds how long a retryable error may persist (retry.Budget).
type RetryBudget = retry.Budget

// AutoResume says whether and how the coordinator recovers tasks paused by
// a recoverable error (recovery.AutoResume).
type AutoResume = recovery.AutoResume

// RecoverableCodes lists the codes recovered automatically and the
// dependencies probed for each (recovery.RecoverableCodes).
func RecoverableCodes() map[errs.Code][]string { return recovery.RecoverableCodes() }

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

	// FlushInterval is how often buffered changes are flushed
	// (DefaultFlushInterval, TiKV's).
	FlushInterval time.Duration
	// FileSizeLimit flushes early once this many bytes are buffered and
	// bounds one data object (DefaultFileSizeLimit, TiKV's).
	FileSizeLimit int
	// ReconcileInterval is how often PD is asked for leaders that moved
	// onto this store (DefaultReconcileInterval).
	ReconcileInterval time.Duration
	// CoordinatorInterval is how often the elected coordinator publishes
	// the global checkpoint (DefaultCoordinatorInterval).
	CoordinatorInterval time.Duration
	// FinalFlushTimeout bounds the flush a pause or a shutdown makes of
	// what is buffered (DefaultFinalFlushTimeout); what it does not make
	// durable is rescanned by the next owner of the ranges.
	FinalFlushTimeout time.Duration
	// RegionCheckpointInterval is how often every region checkpoint is
	// written to etcd (DefaultRegionCheckpointInterval); the final flush of a pause or a
	// stop writes them all too, and a region with none gets one at its
	// first flush. Writing them every flush cost etcd a read of all and a
	// write per region each time.
	RegionCheckpointInterval time.Duration
	// MemoryQuota bounds the buffered bytes a task holds in memory; past
	// it they spill to temp files under TempDir (DefaultMemoryQuota).
	MemoryQuota int
	// TempDir is where this agent makes its own directory for spilled
	// buffers (store-<id>-<random>, locked while the process lives, one
	// subdirectory per task incarnation, removed on a clean exit; see
	// workdir.go). Default DefaultTempDir().
	TempDir string
	// RetryBudget turns a persistent retryable error into a fatal one
	// (TiKV: 30 failed flushes). Default DefaultRetryAttempts or
	// DefaultRetryDuration.
	RetryBudget RetryBudget
	// LagLimit: the coordinator pauses a task whose global checkpoint lags
	// more than this (DefaultLagLimit), so a stuck task cannot hold GC back
	// forever. Negative disables.
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
	*c = c.WithDefaults()
	return nil
}

// WithDefaults returns c with every unset setting at its default: the
// settings New runs with. The identity (StoreID, PD, Meta) is left as it
// is; New refuses a Config without it.
func (c Config) WithDefaults() Config {
	if c.FlushInterval <= 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.FileSizeLimit <= 0 {
		c.FileSizeLimit = DefaultFileSizeLimit
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	if c.CoordinatorInterval <= 0 {
		c.CoordinatorInterval = DefaultCoordinatorInterval
	}
	if c.FinalFlushTimeout <= 0 {
		c.FinalFlushTimeout = DefaultFinalFlushTimeout
	}
	if c.RegionCheckpointInterval <= 0 {
		c.RegionCheckpointInterval = DefaultRegionCheckpointInterval
	}
	if c.RetryBudget.Attempts <= 0 {
		c.RetryBudget.Attempts = DefaultRetryAttempts
	}
	if c.RetryBudget.Duration <= 0 {
		c.RetryBudget.Duration = DefaultRetryDuration
	}
	if c.LagLimit == 0 {
		c.LagLimit = DefaultLagLimit
	}
	if c.AutoResume.MaxAttempts <= 0 {
		c.AutoResume.MaxAttempts = DefaultAutoResumeAttempts
	}
	if c.AutoResume.Backoff <= 0 {
		c.AutoResume.Backoff = DefaultAutoResumeBackoff
	}
	if c.MemoryQuota <= 0 {
		c.MemoryQuota = DefaultMemoryQuota
	}
	if c.TempDir == "" {
		c.TempDir = DefaultTempDir()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return c
}
