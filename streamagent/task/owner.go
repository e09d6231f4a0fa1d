package task

import (
	"context"
	"errors"
	"fmt"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/logfile"
)

// checkOwner reads the storage's owner record (logfile.OwnerFile) before a
// task's first flush and before each meta file, and refuses, with the
// fatal StorageOwnedElsewhere, a storage that someone took over: the
// record names another cluster, or a task of this cluster started later
// than this one. The record is read afresh every time (one small object):
// `br stream start --take-over` on another cluster fences this writer only
// through it. A storage without a record (TiKV's, TiDB's BR's, an older
// agent's) is accepted.
func checkOwner(ctx context.Context, st storage.Storage, clusterID uint64, info *brpb.StreamBackupTaskInfo) error {
	rec, err := logfile.ReadOwner(ctx, st)
	switch {
	case errors.Is(err, storage.ErrNotExist):
		return nil
	case errors.Is(err, logfile.ErrOwnerCorrupt):
		return errs.Wrap(errs.CodeStorageOwned, fmt.Errorf("%w: who owns the storage %s cannot be told, so task %q writes nothing more to it", err, st, info.Name))
	case err != nil:
		return fmt.Errorf("check the owner of the storage: %w", err)
	}
	if clusterID != 0 && rec.ClusterID != 0 && rec.ClusterID != clusterID {
		return errs.Wrap(errs.CodeStorageOwned, fmt.Errorf("the storage %s now belongs to %s (its %s), not to this cluster %d: it was taken over, so task %q writes nothing more to it",
			st, rec.Describe(), logfile.OwnerFile, clusterID, info.Name))
	}
	if rec.TaskStartTS > info.StartTs {
		return errs.Wrap(errs.CodeStorageOwned, fmt.Errorf("the storage %s now belongs to a later task: %s (its %s); task %q (start ts %d) writes nothing more to it",
			st, rec.Describe(), logfile.OwnerFile, info.Name, info.StartTs))
	}
	return nil
}
