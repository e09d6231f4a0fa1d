package br

import (
	"context"
	"errors"
	"fmt"
	"io"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// One storage, one cluster. A storage belongs to the cluster its owner
// record (logfile.OwnerFile) names, or, without one (TiDB's BR or TiKV
// started it), the cluster its root backupmeta names. `start` on another
// cluster is refused before anything is written, unless --take-over says
// it is deliberate: then the owner record names the new cluster and task,
// keeps the old owner with the takeover's ts (so verify can tell its
// files from a second writer's), and the old cluster's agents, which read
// the record before every meta file, stop writing there.

// ownership is what start found about the storage's owner.
type ownership struct {
	// record is the storage's owner record; nil when it has none or it
	// cannot be decoded (corrupt).
	record  *logfile.Owner
	corrupt error
	// rootCluster is the root backupmeta's cluster id (0: none, or no
	// backupmeta).
	rootCluster uint64
	// foreign is the owning cluster when it is not ours (0: ours or
	// nobody's).
	foreign uint64
}

// readOwnership reads the owner record and the root backupmeta's cluster
// id, writing nothing.
func readOwnership(ctx context.Context, st storage.Storage, clusterID uint64) (*ownership, error) {
	o := &ownership{}
	rec, err := logfile.ReadOwner(ctx, st)
	switch {
	case errors.Is(err, storage.ErrNotExist):
	case errors.Is(err, logfile.ErrOwnerCorrupt):
		o.corrupt = err
	case err != nil:
		return nil, err
	default:
		o.record = rec
	}
	raw, err := st.ReadFile(ctx, BackupMetaFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", BackupMetaFile, err)
	default:
		var bm brpb.BackupMeta
		// An undecodable backupmeta, or a full backup's, is reported by
		// the restart path (ReadLogInfo) as what it is.
		if bm.Unmarshal(raw) == nil && bm.EndVersion == 0 {
			o.rootCluster = bm.ClusterId
		}
	}
	owner := o.rootCluster
	if o.record != nil {
		// The record is written last, so it is the newer word: a takeover
		// interrupted before it leaves the old owner in charge.
		owner = o.record.ClusterID
	}
	if owner != 0 && clusterID != 0 && owner != clusterID {
		o.foreign = owner
	}
	return o, nil
}

// describe names the owner for messages.
func (o *ownership) describe() string {
	if o.record != nil {
		return o.record.Describe()
	}
	return fmt.Sprintf("cluster %d (the root %s's cluster id)", o.rootCluster, BackupMetaFile)
}

// checkOwnership refuses a storage another cluster owns, or whose owner
// record cannot be read, unless takeOver.
func checkOwnership(o *ownership, loc fmt.Stringer, clusterID uint64, takeOver bool) error {
	if takeOver {
		return nil
	}
	if o.corrupt != nil {
		return userError("check who writes this storage; if no other cluster's task does, start with --take-over to replace the record",
			o.corrupt, "cannot tell who owns the storage %s", loc)
	}
	if o.foreign != 0 {
		return userError(fmt.Sprintf("choose another storage path; if cluster %d's task no longer writes here (stopped, or the cluster is gone), "+
			"start with --take-over: cluster %d's agents then stop writing to it", o.foreign, o.foreign),
			nil, "the storage %s belongs to another cluster: %s; this cluster is %d", loc, o.describe(), clusterID)
	}
	return nil
}

// claimStorage writes the owner record naming this cluster and task; on a
// takeover it first rewrites the root backupmeta's cluster id, keeps the
// old owner in the record's history and prints a warning. The record is
// written last: it is what fences the old owner's agents.
//
// The takeover's ts must not be earlier than any meta file the old owner
// still writes: its agents check the record before each meta file, whose
// flush ts they took before that check, so every such file's flush ts is
// below a ts taken once the record is written. So the record is written
// twice on a takeover: first to fence, then with a ts taken after that
// write. (The two clusters' PDs each tell their own time: the boundary is
// as exact as their clocks agree.)
func claimStorage(ctx context.Context, st storage.Storage, o *ownership, clusterID uint64, task string, taskStart uint64,
	tso func(context.Context) (uint64, error), w io.Writer) error {
	nowTS, err := tso(ctx)
	if err != nil {
		return err
	}
	rec := &logfile.Owner{Version: logfile.OwnerVersion, ClusterID: clusterID, Task: task, TaskStartTS: taskStart,
		SinceTS: nowTS, Since: formatClaimTS(nowTS)}
	if o.record != nil {
		rec.Previous = o.record.Previous
	}
	takenFrom := o.foreign
	if o.corrupt != nil {
		fmt.Fprintf(w, "warning: replacing the undecodable owner record %s (%v)\n", logfile.OwnerFile, o.corrupt)
		takenFrom = o.rootCluster
		if takenFrom == clusterID {
			takenFrom = 0
		}
	}
	// A foreign id in the root backupmeta is replaced (a takeover, or one
	// interrupted before its record); none is left alone, as BR left it.
	if clusterID != 0 && o.rootCluster != 0 && o.rootCluster != clusterID {
		if err := setRootClusterID(ctx, st, clusterID); err != nil {
			return err
		}
	}
	if takenFrom == 0 {
		return logfile.WriteOwner(ctx, st, rec)
	}
	prev := logfile.PreviousOwner{ClusterID: takenFrom, TakenOverTS: nowTS, TakenOverAt: rec.Since, TakenOverBy: clusterID}
	if o.record != nil {
		prev.Task, prev.TaskStartTS = o.record.Task, o.record.TaskStartTS
	}
	rec.Previous = append(rec.Previous, prev)
	if err := logfile.WriteOwner(ctx, st, rec); err != nil {
		return err
	}
	fmt.Fprintf(w, "warning: taking the storage over from %s; its agents stop writing here\n", o.describe())
	fencedTS, err := tso(ctx)
	if err != nil {
		return err
	}
	last := &rec.Previous[len(rec.Previous)-1]
	last.TakenOverTS, last.TakenOverAt = fencedTS, formatClaimTS(fencedTS)
	return logfile.WriteOwner(ctx, st, rec)
}

func formatClaimTS(ts uint64) string {
	return PhysicalTime(ts).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// setRootClusterID rewrites the root backupmeta's cluster id, keeping the
// rest of it.
func setRootClusterID(ctx context.Context, st storage.Storage, clusterID uint64) error {
	raw, err := st.ReadFile(ctx, BackupMetaFile)
	if err != nil {
		return fmt.Errorf("read %s: %w", BackupMetaFile, err)
	}
	var bm brpb.BackupMeta
	if err := bm.Unmarshal(raw); err != nil {
		return fmt.Errorf("decode %s: %w", BackupMetaFile, err)
	}
	bm.ClusterId = clusterID
	if raw, err = bm.Marshal(); err != nil {
		return fmt.Errorf("encode %s: %w", BackupMetaFile, err)
	}
	if err := st.WriteFile(ctx, BackupMetaFile, raw); err != nil {
		return fmt.Errorf("write %s: %w", BackupMetaFile, err)
	}
	return nil
}
