package logfile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"logbackup/storage"
)

// OwnerFile is the storage's owner record, at its root: the cluster and
// task that write the storage. `br stream start` writes it (before the
// task exists in etcd, so the task's agents always find their own task
// named in it); the agents read it before a task's first flush and before
// each meta file, and stop writing once it names someone else. TiKV and
// BR neither read nor write it: a storage without one (theirs, or an
// older agent's) belongs to whoever the root backupmeta's cluster id says.
const OwnerFile = "logbackup.owner"

// OwnerVersion is the owner record format this code reads and writes.
const OwnerVersion = 1

// maxOwnerSize bounds what is read as an owner record: a real one is a
// few hundred bytes; anything far larger is not one.
const maxOwnerSize = 1 << 20

// MaxPreviousOwners bounds the takeover history kept in the record.
const MaxPreviousOwners = 100

// ErrOwnerCorrupt marks an owner record that cannot be decoded.
var ErrOwnerCorrupt = errors.New("corrupt owner record")

// Owner is the owner record. The timestamps are TSOs of the owning
// cluster's PD.
type Owner struct {
	Version int `json:"version"`
	// ClusterID is PD's cluster id of the owning cluster (0: unknown).
	ClusterID uint64 `json:"cluster_id"`
	// Task and TaskStartTS identify the task writing the storage: one
	// task per cluster, and a task started again on the storage gets a
	// start ts no earlier than the one before it.
	Task        string `json:"task"`
	TaskStartTS uint64 `json:"task_start_ts"`
	// SinceTS / Since: when the start that wrote this record ran (a TSO
	// and, for people, the time in RFC 3339).
	SinceTS uint64 `json:"since_ts"`
	Since   string `json:"since"`
	// Previous are the owners the storage was taken over from, oldest
	// first.
	Previous []PreviousOwner `json:"previous,omitempty"`
}

// PreviousOwner is an owner the storage was taken over from.
type PreviousOwner struct {
	ClusterID   uint64 `json:"cluster_id"`
	Task        string `json:"task,omitempty"`
	TaskStartTS uint64 `json:"task_start_ts,omitempty"`
	// TakenOverTS / TakenOverAt: when the takeover ran, as the new
	// owner's PD told the time. The previous owner's meta files flushed
	// before it are its own history, not a second writer.
	TakenOverTS uint64 `json:"taken_over_ts"`
	TakenOverAt string `json:"taken_over_at"`
	// TakenOverBy is the cluster that took the storage over.
	TakenOverBy uint64 `json:"taken_over_by"`
}

// Describe names the owner for messages.
func (o *Owner) Describe() string {
	s := fmt.Sprintf("cluster %d", o.ClusterID)
	if o.Task != "" {
		s += fmt.Sprintf(", task %q (start ts %d)", o.Task, o.TaskStartTS)
	}
	if o.Since != "" {
		s += ", since " + o.Since
	}
	return s
}

// EncodeOwner is the record's body.
func EncodeOwner(o *Owner) ([]byte, error) {
	c := *o
	if len(c.Previous) > MaxPreviousOwners {
		c.Previous = c.Previous[len(c.Previous)-MaxPreviousOwners:]
	}
	b, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", OwnerFile, err)
	}
	return append(b, '\n'), nil
}

// DecodeOwner reads a record's body; anything but a record of this
// version is ErrOwnerCorrupt, naming the object.
func DecodeOwner(raw []byte) (*Owner, error) {
	if len(raw) > maxOwnerSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, not an owner record", ErrOwnerCorrupt, OwnerFile, len(raw))
	}
	var o Owner
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, fmt.Errorf("%w: %s cannot be decoded: %v", ErrOwnerCorrupt, OwnerFile, err)
	}
	switch {
	case o.Version != OwnerVersion:
		return nil, fmt.Errorf("%w: %s has version %d, this program reads version %d", ErrOwnerCorrupt, OwnerFile, o.Version, OwnerVersion)
	case o.Task == "":
		return nil, fmt.Errorf("%w: %s names no task", ErrOwnerCorrupt, OwnerFile)
	}
	if len(o.Previous) == 0 {
		o.Previous = nil // "previous": [] and none are one
	}
	return &o, nil
}

// ReadOwner reads the storage's owner record: storage.ErrNotExist when
// there is none, ErrOwnerCorrupt when it cannot be decoded.
func ReadOwner(ctx context.Context, st storage.Storage) (*Owner, error) {
	raw, err := st.ReadFile(ctx, OwnerFile)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", OwnerFile, err)
	}
	return DecodeOwner(raw)
}

// WriteOwner writes the storage's owner record.
func WriteOwner(ctx context.Context, st storage.Storage, o *Owner) error {
	raw, err := EncodeOwner(o)
	if err != nil {
		return err
	}
	if err := st.WriteFile(ctx, OwnerFile, raw); err != nil {
		return fmt.Errorf("write %s: %w", OwnerFile, err)
	}
	return nil
}

// TakenOverBefore reports whether a meta file the given cluster flushed at
// flushTS was written while that cluster still owned the storage: the
// record names it as a previous owner taken over after flushTS. It
// returns that previous owner.
func (o *Owner) TakenOverBefore(clusterID, flushTS uint64) (PreviousOwner, bool) {
	// The latest takeover from that cluster decides: it may have owned
	// the storage more than once.
	for i := len(o.Previous) - 1; i >= 0; i-- {
		p := o.Previous[i]
		if p.ClusterID == clusterID && flushTS < p.TakenOverTS {
			return p, true
		}
	}
	return PreviousOwner{}, false
}
