package br

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

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
	StartTS          uint64            `json:"start_ts"`
	GlobalCheckpoint uint64            `json:"global_checkpoint"`
	Stores           []StoreFlushes    `json:"stores"`
	Problems         []string          `json:"problems"`
	changes          []logfile.Decoded // for tests and callers that want them
}

// StoreFlushes summarises one store's metadata files.
type StoreFlushes struct {
	StoreID       uint64 `json:"store_id"`
	MetaFiles     int    `json:"meta_files"`
	MaxResolvedTS uint64 `json:"max_resolved_ts"`
	LastFlushTS   uint64 `json:"last_flush_ts"`
}

// Decoded returns the decoded changes (kept only when asked for).
func (r *VerifyReport) Decoded() []logfile.Decoded { return r.changes }

// Verify reads a log backup storage back: meta files, then every data file
// they list, each checked against its sha256 and decoded into changes.
// It never writes. keep retains the decoded changes in the report.
func Verify(ctx context.Context, st storage.Storage, keep bool) (*VerifyReport, error) {
	rep := &VerifyReport{Storage: st.String(), Stores: []StoreFlushes{}, Problems: []string{}}
	if info, err := ReadLogInfo(ctx, st); err != nil {
		rep.Problems = append(rep.Problems, "no log backup root metadata: "+err.Error())
	} else {
		rep.StartTS, rep.GlobalCheckpoint = info.StartTS, info.MaxTS
	}
	metas, err := logfile.ReadMetas(ctx, st)
	if err != nil {
		return nil, fmt.Errorf("read metadata files: %w", err)
	}
	stores := map[uint64]*StoreFlushes{}
	for _, m := range metas {
		s := stores[m.Name.StoreID]
		if s == nil {
			s = &StoreFlushes{StoreID: m.Name.StoreID}
			stores[m.Name.StoreID] = s
		}
		s.MetaFiles++
		s.MaxResolvedTS = max(s.MaxResolvedTS, m.Metadata.ResolvedTs)
		if m.Name.FlushTS <= s.LastFlushTS {
			rep.Problems = append(rep.Problems, fmt.Sprintf("store %d: flush ts %d does not grow (after %d)", s.StoreID, m.Name.FlushTS, s.LastFlushTS))
		}
		s.LastFlushTS = m.Name.FlushTS
	}
	for _, s := range stores {
		rep.Stores = append(rep.Stores, *s)
	}
	sort.Slice(rep.Stores, func(i, j int) bool { return rep.Stores[i].StoreID < rep.Stores[j].StoreID })
	keys := map[string]struct{}{}
	sum, err := logfile.Walk(ctx, st, func(d logfile.Decoded) error {
		keys[string(d.Key)] = struct{}{}
		if keep {
			rep.changes = append(rep.changes, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify data: %w", err)
	}
	rep.MetaFiles, rep.DataObjects, rep.DataFiles = sum.MetaFiles, sum.DataObjects, sum.DataFiles
	rep.Entries, rep.Changes, rep.Keys = sum.Entries, sum.Changes, len(keys)
	rep.MinCommitTS, rep.MaxCommitTS = sum.MinTS, sum.MaxTS
	return rep, nil
}

// VerifyOptions are the flags of `br stream verify`.
type VerifyOptions struct {
	Storage string
	JSON    bool
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
	rep, err := Verify(ctx, st, false)
	if err != nil {
		return userError("the storage holds damaged or foreign files; see the message", err, "verify failed")
	}
	if opts.JSON {
		b, _ := json.Marshal(rep)
		fmt.Fprintf(w, "%s\n", b)
	} else {
		loc := env.loc()
		fmt.Fprintf(w, "storage: %s\n", rep.Storage)
		fmt.Fprintf(w, "meta files: %d, data objects: %d, data files: %d, entries: %d\n", rep.MetaFiles, rep.DataObjects, rep.DataFiles, rep.Entries)
		fmt.Fprintf(w, "changes: %d over %d keys\n", rep.Changes, rep.Keys)
		if rep.Changes > 0 {
			fmt.Fprintf(w, "commit ts: %s .. %s\n", FormatTS(rep.MinCommitTS, loc), FormatTS(rep.MaxCommitTS, loc))
		}
		if rep.StartTS > 0 {
			fmt.Fprintf(w, "restorable: %s .. %s (start .. global checkpoint)\n", FormatTS(rep.StartTS, loc), FormatTS(rep.GlobalCheckpoint, loc))
		}
		for _, s := range rep.Stores {
			fmt.Fprintf(w, "store %d: %d flushes, resolved up to %s\n", s.StoreID, s.MetaFiles, FormatTS(s.MaxResolvedTS, loc))
		}
		fmt.Fprintf(w, "checksums: all %d data files match\n", rep.DataFiles)
	}
	if len(rep.Problems) > 0 {
		return userError("see the problems listed", nil, "verify found problems: %s", strings.Join(rep.Problems, "; "))
	}
	return nil
}
