// Package meta reads and writes log-backup task metadata in etcd with the
// exact key layout and encodings of TiDB BR and TiKV (/tidb/br-stream/...),
// so BR's CLI and TiKV-oriented tooling interoperate with ours.
package meta

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Prefix is the root of every log-backup key.
const Prefix = "/tidb/br-stream"

const (
	infoDir              = Prefix + "/info/"
	rangesDir            = Prefix + "/ranges/"
	pauseDir             = Prefix + "/pause/"
	checkpointDir        = Prefix + "/checkpoint/"
	storageCheckpointDir = Prefix + "/storage-checkpoint/"
	lastErrorDir         = Prefix + "/last-error/"
	centralGlobal        = "central_global"
)

// InfoPrefix is the prefix of every task's info key.
func InfoPrefix() string { return infoDir }

// InfoKey holds the task's protobuf StreamBackupTaskInfo.
func InfoKey(task string) string { return infoDir + task }

// RangesPrefix holds one key per observed range of the task. The trailing
// slash keeps task "pitr" from matching "pitr2".
func RangesPrefix(task string) string { return rangesDir + task + "/" }

// RangeKey is the key of the range starting at start (raw bytes, which may
// contain anything, so this is concatenation and not path.Join).
func RangeKey(task string, start []byte) string { return RangesPrefix(task) + string(start) }

// PausePrefix is the prefix of every pause key.
func PausePrefix() string { return pauseDir }

// PauseKey exists while the task is paused.
func PauseKey(task string) string { return pauseDir + task }

// CheckpointPrefix covers every checkpoint of the task.
func CheckpointPrefix(task string) string { return checkpointDir + task + "/" }

// StoreCheckpointKey is a store's "next backup ts".
func StoreCheckpointKey(task string, store uint64) string {
	return CheckpointPrefix(task) + "store/" + strconv.FormatUint(store, 10)
}

// RegionCheckpointKey is a region's checkpoint at an epoch version.
func RegionCheckpointKey(task string, region, epochVersion uint64) string {
	return CheckpointPrefix(task) + "region/" + strconv.FormatUint(region, 10) + "/" + strconv.FormatUint(epochVersion, 10)
}

// GlobalCheckpointKey is the coordinator's checkpoint over the whole task.
func GlobalCheckpointKey(task string) string { return CheckpointPrefix(task) + centralGlobal }

// StorageCheckpointPrefix covers every store's storage checkpoint. BR scans
// it without the trailing slash; we always add it.
func StorageCheckpointPrefix(task string) string { return storageCheckpointDir + task + "/" }

// StorageCheckpointKey is the checkpoint a store has durably written to
// storage (v1/global_checkpoint/<store>.ts).
func StorageCheckpointKey(task string, store uint64) string {
	return StorageCheckpointPrefix(task) + strconv.FormatUint(store, 10)
}

// LastErrorPrefix covers every store's last error of the task.
func LastErrorPrefix(task string) string { return lastErrorDir + task + "/" }

// LastErrorKey holds a store's protobuf StreamBackupError.
func LastErrorKey(task string, store uint64) string {
	return LastErrorPrefix(task) + strconv.FormatUint(store, 10)
}

var taskNameRE = regexp.MustCompile(`^[0-9a-zA-Z_]+$`)

// MaxTaskNameLen bounds a task name: it goes into etcd keys, PD service
// safepoint ids and metric labels, none of which should carry an essay.
const MaxTaskNameLen = 128

// ValidTaskName checks a task name as BR's TaskInfo.Check does. Names with
// '/' or other characters would make keys ambiguous.
func ValidTaskName(name string) error {
	if name == "" {
		return fmt.Errorf("task name is empty")
	}
	if len(name) > MaxTaskNameLen {
		return fmt.Errorf("task name is %d characters long; at most %d", len(name), MaxTaskNameLen)
	}
	if !taskNameRE.MatchString(name) {
		return fmt.Errorf("task name %q may only contain letters, digits and underscores", name)
	}
	return nil
}

// CheckpointKind tells which checkpoint a key under checkpoint/<task>/ is.
type CheckpointKind int

const (
	CheckpointGlobal CheckpointKind = iota + 1
	CheckpointStore
	CheckpointRegion
	// CheckpointTask is BR's ID==0 && Version==0 case, e.g. the legacy V1
	// binary key of store 0.
	CheckpointTask
)

func (k CheckpointKind) String() string {
	switch k {
	case CheckpointGlobal:
		return "global"
	case CheckpointStore:
		return "store"
	case CheckpointRegion:
		return "region"
	case CheckpointTask:
		return "task"
	}
	return "unknown"
}

// Checkpoint is one decoded key and value under checkpoint/<task>/.
type Checkpoint struct {
	Kind         CheckpointKind
	StoreID      uint64
	RegionID     uint64
	EpochVersion uint64
	TS           uint64
}

// ParseCheckpointKey reads the kind and ids from a checkpoint key of task.
// The legacy V1 layout (8 raw big-endian bytes of the store id) is accepted.
func ParseCheckpointKey(task, key string) (Checkpoint, error) {
	rest, ok := strings.CutPrefix(key, CheckpointPrefix(task))
	if !ok {
		return Checkpoint{}, fmt.Errorf("key %q is not under %q", key, CheckpointPrefix(task))
	}
	if rest == centralGlobal {
		return Checkpoint{Kind: CheckpointGlobal}, nil
	}
	if id, ok := strings.CutPrefix(rest, "store/"); ok {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			return Checkpoint{}, fmt.Errorf("store id in %q: %w", key, err)
		}
		return Checkpoint{Kind: CheckpointStore, StoreID: n}, nil
	}
	if ids, ok := strings.CutPrefix(rest, "region/"); ok {
		region, version, found := strings.Cut(ids, "/")
		if !found {
			return Checkpoint{}, fmt.Errorf("region checkpoint %q lacks an epoch version", key)
		}
		r, err := strconv.ParseUint(region, 10, 64)
		if err != nil {
			return Checkpoint{}, fmt.Errorf("region id in %q: %w", key, err)
		}
		v, err := strconv.ParseUint(version, 10, 64)
		if err != nil {
			return Checkpoint{}, fmt.Errorf("epoch version in %q: %w", key, err)
		}
		return Checkpoint{Kind: CheckpointRegion, RegionID: r, EpochVersion: v}, nil
	}
	if len(rest) == 8 && !printable(rest) {
		store := binary.BigEndian.Uint64([]byte(rest))
		if store == 0 {
			return Checkpoint{Kind: CheckpointTask}, nil
		}
		return Checkpoint{Kind: CheckpointStore, StoreID: store}, nil
	}
	return Checkpoint{}, fmt.Errorf("unrecognised checkpoint key %q", key)
}

// taskFromKey returns the task name after dir in key.
func taskFromKey(dir, key string) string { return strings.TrimPrefix(key, dir) }

// printable reports whether s is plain ASCII text. The legacy binary store
// id of a real store always has a zero high byte, so it never is; this keeps
// an 8-letter word from being read as a store id.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
