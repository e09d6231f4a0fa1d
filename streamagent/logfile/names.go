package logfile

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Meta file flags (TiKV utils::BACKUP_META_FLAG_*).
const (
	FlagNoMetaFiles uint64 = 1 << 0 // no schema-meta group in this flush
	FlagEmpty       uint64 = 1 << 1 // no file group at all
)

// MetaDir holds one metadata file per flush.
const MetaDir = "v1/backupmeta/"

// GlobalCheckpointDir holds each store's global checkpoint.
const GlobalCheckpointDir = "v1/global_checkpoint/"

// MetaName is the parsed name of a metadata file.
type MetaName struct {
	FlushTS, StoreID, MinBeginTS, MinTS, MaxTS, Flags uint64
}

// Format renders the name TiKV writes.
func (m MetaName) Format() string {
	return fmt.Sprintf("%s%016X%016X-d%016Xl%016Xu%016Xp%016X.meta", MetaDir, m.FlushTS, m.StoreID, m.MinBeginTS, m.MinTS, m.MaxTS, m.Flags)
}

var metaNameRE = regexp.MustCompile(`^v1/backupmeta/([0-9A-F]{16})([0-9A-F]{16})-((?:[a-z][0-9A-F]{16})+)\.meta$`)
var tagRE = regexp.MustCompile(`([a-z])([0-9A-F]{16})`)

// ParseMetaName reads a tagged metadata name; d, l and u are required,
// unknown tags are ignored (as BR does).
func ParseMetaName(name string) (MetaName, error) {
	m := metaNameRE.FindStringSubmatch(name)
	if m == nil {
		return MetaName{}, fmt.Errorf("%q is not a tagged backupmeta name", name)
	}
	var out MetaName
	out.FlushTS, _ = strconv.ParseUint(m[1], 16, 64)
	out.StoreID, _ = strconv.ParseUint(m[2], 16, 64)
	seen := map[byte]bool{}
	for _, t := range tagRE.FindAllStringSubmatch(m[3], -1) {
		v, _ := strconv.ParseUint(t[2], 16, 64)
		seen[t[1][0]] = true
		switch t[1][0] {
		case 'd':
			out.MinBeginTS = v
		case 'l':
			out.MinTS = v
		case 'u':
			out.MaxTS = v
		case 'p':
			out.Flags = v
		}
	}
	for _, need := range []byte{'d', 'l', 'u'} {
		if !seen[need] {
			return MetaName{}, fmt.Errorf("backupmeta name %q lacks the %c tag", name, need)
		}
	}
	return out, nil
}

// DataName is the parsed name of a merged data object.
type DataName struct {
	StoreID uint64
	MinTS   uint64
	MaxTS   uint64 // only the date and hour survive in the name
	Schema  bool
	ID      string
}

// Format renders v1/<yyyymmdd>/<hh>/<store>/[schema-meta/]<min_ts>-<id>.log,
// with the date and hour in UTC from the physical part of MaxTS.
func (d DataName) Format() string {
	t := time.UnixMilli(int64(d.MaxTS >> 18)).UTC()
	dir := fmt.Sprintf("v1/%s/%s/%d/", t.Format("20060102"), t.Format("15"), d.StoreID)
	if d.Schema {
		dir += "schema-meta/"
	}
	return fmt.Sprintf("%s%d-%s.log", dir, d.MinTS, d.ID)
}

var dataNameRE = regexp.MustCompile(`^v1/(\d{8})/(\d{2})/(\d+)/(schema-meta/)?(\d+)-([0-9a-zA-Z-]+)\.log$`)

// ParseDataName reads a data object name.
func ParseDataName(name string) (DataName, error) {
	m := dataNameRE.FindStringSubmatch(name)
	if m == nil {
		return DataName{}, fmt.Errorf("%q is not a log data object name", name)
	}
	store, err := strconv.ParseUint(m[3], 10, 64)
	if err != nil {
		return DataName{}, fmt.Errorf("store id in %q: %w", name, err)
	}
	minTS, err := strconv.ParseUint(m[5], 10, 64)
	if err != nil {
		return DataName{}, fmt.Errorf("min ts in %q: %w", name, err)
	}
	at, err := time.Parse("2006010215", m[1]+m[2])
	if err != nil {
		return DataName{}, fmt.Errorf("date in %q: %w", name, err)
	}
	return DataName{StoreID: store, MinTS: minTS, MaxTS: uint64(at.UnixMilli()) << 18, Schema: m[4] != "", ID: m[6]}, nil
}

// GlobalCheckpointName is where a store records its global checkpoint.
func GlobalCheckpointName(storeID uint64) string {
	return fmt.Sprintf("%s%d.ts", GlobalCheckpointDir, storeID)
}

// EncodeGlobalCheckpoint is the object body: a little-endian u64.
func EncodeGlobalCheckpoint(ts uint64) []byte { return binary.LittleEndian.AppendUint64(nil, ts) }

// DecodeGlobalCheckpoint reads the object body.
func DecodeGlobalCheckpoint(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, corrupt("global checkpoint of %d bytes", len(b))
	}
	return binary.LittleEndian.Uint64(b), nil
}
