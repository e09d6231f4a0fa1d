package br

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
	"logbackup/streamagent/logfile"
)

// Object names at the storage root, as BR and TiKV use them.
const (
	LockFile              = "backup.lock"
	BackupMetaFile        = "backupmeta"
	TruncateSafepointFile = "v1_stream_trancate_safepoint.txt" // sic: BR's spelling
	GlobalCheckpointDir   = "v1/global_checkpoint/"
)

const lockFileBody = "DO NOT DELETE\nThis file marks this storage as the target of a TiDB/TiKV log backup task.\n"

// LogInfo is what the storage alone says about the log backup in it, as
// `br log metadata` computes it.
type LogInfo struct {
	StartTS uint64 // root backupmeta start_version
	MinTS   uint64 // max(start, truncate safepoint)
	MaxTS   uint64 // max(MinTS, the stores' global checkpoints)
}

// ReadLogInfo reads the root backupmeta, the truncate safepoint and every
// v1/global_checkpoint/<store>.ts (little-endian u64).
func ReadLogInfo(ctx context.Context, s storage.Storage) (*LogInfo, error) {
	raw, err := s.ReadFile(ctx, BackupMetaFile)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", BackupMetaFile, err)
	}
	var bm brpb.BackupMeta
	if err := bm.Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("decode %s: %w", BackupMetaFile, err)
	}
	if bm.EndVersion > 0 {
		return nil, userError("choose an empty storage path for log backup", nil,
			"the storage %s has been used for a full (snapshot) backup", s)
	}
	info := &LogInfo{StartTS: bm.StartVersion, MinTS: bm.StartVersion}
	sp, err := s.ReadFile(ctx, TruncateSafepointFile)
	switch {
	case errors.Is(err, storage.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", TruncateSafepointFile, err)
	default:
		v, perr := strconv.ParseUint(strings.TrimSpace(string(sp)), 10, 64)
		if perr != nil {
			return nil, fmt.Errorf("decode %s: %w", TruncateSafepointFile, perr)
		}
		info.MinTS = max(info.MinTS, v)
	}
	info.MaxTS = info.MinTS
	err = s.List(ctx, GlobalCheckpointDir, func(o storage.ObjectInfo) error {
		if !strings.HasSuffix(o.Name, ".ts") {
			return nil
		}
		b, err := s.ReadFile(ctx, o.Name)
		if err != nil {
			return fmt.Errorf("read %s: %w", o.Name, err)
		}
		if len(b) != 8 {
			return fmt.Errorf("decode %s: want 8 bytes, got %d", o.Name, len(b))
		}
		info.MaxTS = max(info.MaxTS, binary.LittleEndian.Uint64(b))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return info, nil
}

// prepareStorage writes backup.lock and the root backupmeta on a fresh
// storage. On a storage that already holds a log backup it returns the
// start-ts to continue from (the storage's log-max-ts), as `br log start`
// does when restarting a task on the same path.
func prepareStorage(ctx context.Context, s storage.Storage, startTS, clusterID uint64) (uint64, bool, error) {
	exists, err := s.Exists(ctx, LockFile)
	if err != nil {
		return 0, false, fmt.Errorf("check %s: %w", LockFile, err)
	}
	if exists {
		info, err := ReadLogInfo(ctx, s)
		if err != nil {
			return 0, false, err
		}
		return max(info.MaxTS, info.StartTS), true, nil
	}
	bm := brpb.BackupMeta{StartVersion: startTS, ClusterId: clusterID, BrVersion: "logbackup"}
	raw, err := bm.Marshal()
	if err != nil {
		return 0, false, fmt.Errorf("encode %s: %w", BackupMetaFile, err)
	}
	// The root backupmeta goes first: a lock without it would make the next
	// start take the restart path and fail to read it.
	if err := s.WriteFile(ctx, BackupMetaFile, raw); err != nil {
		return 0, false, fmt.Errorf("write %s: %w", BackupMetaFile, err)
	}
	if err := s.WriteFile(ctx, LockFile, []byte(lockFileBody)); err != nil {
		return 0, false, fmt.Errorf("write %s: %w", LockFile, err)
	}
	return startTS, false, nil
}

// holdsLogData says whether a storage with backup.lock holds any log data:
// a meta file (a flush committed) or a truncate safepoint (data was there).
func holdsLogData(ctx context.Context, s storage.Storage) (bool, error) {
	if ok, err := s.Exists(ctx, TruncateSafepointFile); err != nil || ok {
		return ok, err
	}
	errFound := errors.New("found")
	err := s.List(ctx, logfile.MetaDir, func(storage.ObjectInfo) error { return errFound })
	if errors.Is(err, errFound) {
		return true, nil
	}
	return false, err
}

// restartEmptyStorage rewrites the root backupmeta of a storage that holds
// backup.lock but no log data, so its log backup starts at startTS: what a
// start that failed after writing them, or a task stopped before its first
// flush, left behind. Checked again here, as a flush may have landed since.
func restartEmptyStorage(ctx context.Context, s storage.Storage, startTS, clusterID uint64) (uint64, error) {
	holds, err := holdsLogData(ctx, s)
	if err != nil {
		return 0, err
	}
	if holds {
		return 0, fmt.Errorf("the storage %s received log data while the task was starting; run start again", s)
	}
	bm := brpb.BackupMeta{StartVersion: startTS, ClusterId: clusterID, BrVersion: "logbackup"}
	raw, err := bm.Marshal()
	if err != nil {
		return 0, fmt.Errorf("encode %s: %w", BackupMetaFile, err)
	}
	if err := s.WriteFile(ctx, BackupMetaFile, raw); err != nil {
		return 0, fmt.Errorf("write %s: %w", BackupMetaFile, err)
	}
	return startTS, nil
}
