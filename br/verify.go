package br

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// VerifyReport is what `br stream verify` finds in a storage.
type VerifyReport struct {
	Storage     string `json:"storage"`
	MetaFiles   int    `json:"meta_files"`
	DataObjects int    `json:"data_objects"`
	DataFiles   int    `json:"data_files"`
	Entries     int64  `json:"entries"`
	Changes     int    `json:"changes"`
	Keys        int    `json:"keys"`
	MinCommitTS uint64 `json:"min_commit_ts"`
	MaxCommitTS uint64 `json:"max_commit_ts"`
	// StartTS is the root backupmeta's start; GlobalCheckpoint the highest
	// v1/global_checkpoint/<store>.ts: restore can reach any point between.
	StartTS          uint64 `json:"start_ts"`
	GlobalCheckpoint uint64 `json:"global_checkpoint"`
	// ClusterID is the root backupmeta's cluster id (0 if it has none).
	ClusterID uint64 `json:"cluster_id"`
	// TruncatedUntil is the truncate safepoint: meta files wholly below it
	// may have been removed by `br log truncate`.
	TruncatedUntil uint64 `json:"truncated_until"`
	// RestorableFrom is where the storage really restores from: the task
	// start, raised to the truncate safepoint and, after a takeover, to the
	// current owner's task start and the takeover (before it the log is
	// another cluster's).
	RestorableFrom uint64         `json:"restorable_from"`
	Stores         []StoreFlushes `json:"stores"`
	// Problems are failures, each naming its object: something is wrong
	// or missing. Warnings name what cannot be proven.
	Problems []string          `json:"problems"`
	Warnings []string          `json:"warnings"`
	changes  []logfile.Decoded // for tests and callers that want them
}

// StoreFlushes summarises one store's metadata files.
type StoreFlushes struct {
	StoreID       uint64 `json:"store_id"`
	MetaFiles     int    `json:"meta_files"`
	MaxResolvedTS uint64 `json:"max_resolved_ts"`
	LastFlushTS   uint64 `json:"last_flush_ts"`
	// Linked is how many of its meta files carry the lineage tags that
	// prove the chain of flushes unbroken; the others (TiKV's, an older
	// agent's) can only be checked one by one.
	Linked int `json:"linked"`
	// Forks counts flushes that follow a flush another one already
	// follows: an agent that crashed between writing a meta file and
	// recording it in etcd starts again from the recorded one. Harmless:
	// the unrecorded flush's checkpoint was never published.
	Forks int `json:"forks"`
	// GlobalCheckpoint is its v1/global_checkpoint/<store>.ts (0: none).
	GlobalCheckpoint uint64 `json:"global_checkpoint"`
}

// Decoded returns the decoded changes (kept only when asked for).
func (r *VerifyReport) Decoded() []logfile.Decoded { return r.changes }

// DefaultMaxClockSkew is how far past the verifier's clock a timestamp in
// storage may lie before it is called one from the future.
const DefaultMaxClockSkew = 10 * time.Minute

// VerifyConfig tunes Verify.
type VerifyConfig struct {
	// Keep retains the decoded changes in the report.
	Keep bool
	// Now is the verifier's clock (nil: time.Now).
	Now func() time.Time
	// MaxClockSkew: see DefaultMaxClockSkew (0 means it).
	MaxClockSkew time.Duration
	// Recorded is, per store, the flush ts of the newest flush whose
	// checkpoints the task's etcd records (span-checkpoint/<task>/<store>):
	// every checkpoint published rests on flushes up to it, so its meta
	// file must be in storage. The newest meta file of a store is what
	// nothing in storage names; nil leaves it unproven (a warning). Read
	// it before the storage, so that the flushes it names were durable.
	Recorded map[uint64]uint64
	// Task names the task Recorded comes from, for messages.
	Task string
	// EtcdGlobal reads the task's global checkpoint in etcd
	// (central_global, floored at the task start: a task started again on
	// this storage starts at its highest global checkpoint), which only
	// grows: no store's global checkpoint in storage may exceed it. Called
	// after those are read, so that one written meanwhile is still below
	// it. nil: unknown.
	EtcdGlobal func(context.Context) (uint64, error)
}

// Verify reads a log backup storage back and checks it; keep retains the
// decoded changes in the report. See VerifyWith.
func Verify(ctx context.Context, st storage.Storage, keep bool) (*VerifyReport, error) {
	return VerifyWith(ctx, st, VerifyConfig{Keep: keep})
}

// VerifyWith reads a log backup storage back and checks everything it can
// prove, never writing: the root backupmeta; every meta file against its
// name and itself; every data file's frame, length, sha256 and entries
// against its meta file (logfile.Audit); each store's chain of flushes
// from the task start, so that a deleted meta file is found (see the
// lineage tags in streamagent/logfile); the global checkpoints against
// the clock and what the meta files cover; one cluster and task; and data
// objects no meta file lists. Problems name the object; err is only for a
// storage that cannot be read.
func VerifyWith(ctx context.Context, st storage.Storage, cfg VerifyConfig) (*VerifyReport, error) {
	v := newVerifier(st, cfg)
	if err := v.readRoot(ctx); err != nil {
		return nil, err
	}
	v.rep.RestorableFrom = v.restorableFrom()
	globals, err := v.readGlobalCheckpoints(ctx)
	if err != nil {
		return nil, err
	}
	keys := map[string]struct{}{}
	res, err := logfile.Audit(ctx, st, func(d logfile.Decoded) error {
		keys[string(d.Key)] = struct{}{}
		if cfg.Keep {
			v.rep.changes = append(v.rep.changes, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	for _, f := range res.Findings {
		v.add(f)
	}
	v.res = res
	rep := v.rep
	rep.MetaFiles, rep.DataObjects, rep.DataFiles = res.MetaFiles, res.DataObjects, res.DataFiles
	rep.Entries, rep.Changes, rep.Keys = res.Entries, res.Changes, len(keys)
	rep.MinCommitTS, rep.MaxCommitTS = res.MinTS, res.MaxTS

	v.summariseStores()
	v.checkOrigin()
	v.checkChains()
	v.checkRecorded()
	if err := v.checkGlobalCheckpoints(ctx, globals); err != nil {
		return nil, err
	}
	if err := v.checkUnlisted(ctx); err != nil {
		return nil, err
	}
	for _, s := range v.stores {
		rep.Stores = append(rep.Stores, *s)
	}
	sort.Slice(rep.Stores, func(i, j int) bool { return rep.Stores[i].StoreID < rep.Stores[j].StoreID })
	return rep, nil
}

// newVerifier starts a verification of st: no object read yet.
func newVerifier(st storage.Storage, cfg VerifyConfig) *verifier {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxClockSkew <= 0 {
		cfg.MaxClockSkew = DefaultMaxClockSkew
	}
	return &verifier{st: st, cfg: cfg, latest: ComposeTS(cfg.Now().Add(cfg.MaxClockSkew)),
		rep: &VerifyReport{Storage: st.String(), Stores: []StoreFlushes{}, Problems: []string{}, Warnings: []string{}}}
}

// restorableFrom: see VerifyReport.RestorableFrom; after readRoot.
func (v *verifier) restorableFrom() uint64 {
	from := max(v.rep.StartTS, v.rep.TruncatedUntil)
	if o := v.owner; o != nil && len(o.Previous) > 0 {
		from = max(from, o.TaskStartTS, o.Previous[len(o.Previous)-1].TakenOverTS)
	}
	return from
}

// verifier holds one verification's state; its checks live in
// verify_checks.go.
type verifier struct {
	st     storage.Storage
	cfg    VerifyConfig
	latest uint64 // the highest ts not from the future
	rep    *VerifyReport
	res    *logfile.AuditResult
	stores map[uint64]*StoreFlushes
	owner  *logfile.Owner // the storage's owner record, if it has a readable one
}

func (v *verifier) fail(object, format string, args ...any) {
	v.rep.Problems = append(v.rep.Problems, object+": "+fmt.Sprintf(format, args...))
}

func (v *verifier) warn(object, format string, args ...any) {
	v.rep.Warnings = append(v.rep.Warnings, object+": "+fmt.Sprintf(format, args...))
}

func (v *verifier) add(f logfile.Finding) {
	if f.Warning {
		v.rep.Warnings = append(v.rep.Warnings, f.String())
	} else {
		v.rep.Problems = append(v.rep.Problems, f.String())
	}
}

// VerifyOptions are the flags of `br stream verify`.
type VerifyOptions struct {
	Storage string
	JSON    bool
	// TaskName, when set, also reads the task's records in etcd (env.Meta)
	// to prove each store's newest recorded flush is in storage.
	TaskName string
}

// RunVerify opens the storage and prints the report. Problems make it fail.
func RunVerify(ctx context.Context, env *Env, opts VerifyOptions, w io.Writer) error {
	if opts.Storage == "" {
		return userError("pass --storage, the URL the task writes to", nil, "missing --storage")
	}
	st, err := storage.OpenURL(ctx, opts.Storage)
	if err != nil {
		return userError("check the --storage URL", err, "cannot open storage")
	}
	defer st.Close()
	cfg := VerifyConfig{Now: env.now}
	if opts.TaskName != "" {
		if env.Meta == nil {
			return userError("pass -u with the task's etcd endpoints", nil, "--task-name needs etcd")
		}
		task, err := env.Meta.GetTask(ctx, opts.TaskName)
		if err != nil {
			return userError("check --task-name and -u: the task must be running or paused", err, "cannot read task %q", opts.TaskName)
		}
		records, err := env.Meta.SpanCheckpoints(ctx, opts.TaskName, task.Incarnation)
		if err != nil {
			return fmt.Errorf("read the span checkpoints of %q: %w", opts.TaskName, err)
		}
		cfg.Task, cfg.Recorded = opts.TaskName, map[uint64]uint64{}
		for store, rec := range records {
			cfg.Recorded[store] = rec.FlushTs
		}
		cfg.EtcdGlobal = func(ctx context.Context) (uint64, error) {
			g, _, err := env.Meta.GlobalCheckpoint(ctx, opts.TaskName)
			if err != nil {
				return 0, fmt.Errorf("read the global checkpoint of %q: %w", opts.TaskName, err)
			}
			return max(g, task.Info.StartTs), nil
		}
	}
	rep, err := VerifyWith(ctx, st, cfg)
	if err != nil {
		return userError("check that the storage is reachable and readable", err, "verify failed")
	}
	if opts.JSON {
		b, _ := json.Marshal(rep)
		fmt.Fprintf(w, "%s\n", b)
	} else {
		printVerify(w, rep, env.loc())
	}
	if len(rep.Problems) > 0 {
		return userError("the storage holds damaged, missing or foreign files: see the problems listed; restore from it is not safe", nil,
			"verify failed: %d problems, first: %s", len(rep.Problems), rep.Problems[0])
	}
	return nil
}

func printVerify(w io.Writer, rep *VerifyReport, loc *time.Location) {
	fmt.Fprintf(w, "storage: %s\n", rep.Storage)
	fmt.Fprintf(w, "meta files: %d, data objects: %d, data files: %d, entries: %d\n", rep.MetaFiles, rep.DataObjects, rep.DataFiles, rep.Entries)
	fmt.Fprintf(w, "changes: %d over %d keys\n", rep.Changes, rep.Keys)
	if rep.Changes > 0 {
		fmt.Fprintf(w, "commit ts: %s .. %s\n", FormatTS(rep.MinCommitTS, loc), FormatTS(rep.MaxCommitTS, loc))
	}
	if rep.StartTS > 0 {
		from, why := max(rep.RestorableFrom, rep.StartTS), "start"
		switch {
		case from == rep.StartTS:
		case from == rep.TruncatedUntil:
			why = "truncated until"
		default:
			why = "taken over"
		}
		fmt.Fprintf(w, "restorable: %s .. %s (%s .. global checkpoint)\n", FormatTS(from, loc), FormatTS(max(rep.GlobalCheckpoint, from), loc), why)
	}
	for _, s := range rep.Stores {
		chain := "chain proven unbroken"
		if s.Linked < s.MetaFiles {
			chain = fmt.Sprintf("%d of them without lineage tags: chain not provable", s.MetaFiles-s.Linked)
		}
		fmt.Fprintf(w, "store %d: %d flushes, resolved up to %s, %s\n", s.StoreID, s.MetaFiles, FormatTS(s.MaxResolvedTS, loc), chain)
	}
	for _, p := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", p)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
	if len(rep.Problems) == 0 {
		fmt.Fprintf(w, "checksums: all %d data files match; every meta file agrees with its name and data\n", rep.DataFiles)
	}
}

// prefixed reports whether name lies under one of the prefixes.
func prefixed(name string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
