package logfile

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/tikv/client-go/v2/oracle"
)

// Meta file flags (TiKV utils::BACKUP_META_FLAG_*).
const (
	FlagNoMetaFiles uint64 = 1 << 0 // the flush lists no schema-meta group
	FlagEmpty       uint64 = 1 << 1 // the flush lists no group at all
)

// Storage prefixes of a log backup.
const (
	MetaDir             = "v1/backupmeta/"
	GlobalCheckpointDir = "v1/global_checkpoint/"
	metaSuffix          = ".meta"
)

// Tags of the tagged meta file name: TiKV's (utils::BACKUP_META_*_PREFIX)
// and the lineage tags this agent adds, which TiKV's
// parse_backupmeta_filename and BR's backupmetas.ParseName skip as unknown.
const (
	tagMinBeginTS = 'd'
	tagMinTS      = 'l'
	tagMaxTS      = 'u'
	tagFlags      = 'p'
	tagPrevFlush  = 'b' // the store's previous durable flush ts in the task
	tagClusterID  = 'c' // PD's cluster id
	tagTaskStart  = 's' // the task's start ts
	tagChecksum   = 'h' // checksum of the name's other fields and the body
	tagLen        = 17  // tag letter + 16 hex digits
)

// MetaName is the parsed name of a metadata file.
type MetaName struct {
	FlushTS, StoreID, MinBeginTS, MinTS, MaxTS, Flags uint64
	// HasFlags: the name carries the p tag (TiKV has since the tagged
	// form; Format always writes it).
	HasFlags bool
	// Linked: the name carries the lineage tags b, c and s (all three:
	// Format writes them together). See Lineage.
	Linked bool
	Lineage
	// HasChecksum: the name carries the h tag, Checksum, which must equal
	// MetaChecksum of the name and the file's body.
	HasChecksum bool
	Checksum    uint64
	// Tags are the tag letters the parsed name carried, in order
	// (unknown ones included); empty for a legacy name.
	Tags string
	// Legacy marks the older {flush}-{min_begin}-{min}-{max} form, which
	// carries no store id and no flags.
	Legacy bool
}

// Lineage is what this agent's meta file names say beyond TiKV's tags,
// so that `br stream verify` can prove each store's flushes form an
// unbroken chain from the task start and come from one cluster and task.
type Lineage struct {
	// PrevFlushTS is the flush ts of the store's previous durable meta
	// file in this task (b); 0 for the store's first flush of the task.
	PrevFlushTS uint64
	// ClusterID is PD's cluster id (c); 0 when unknown.
	ClusterID uint64
	// TaskStartTS is the task's start ts (s).
	TaskStartTS uint64
}

// Format renders the tagged name, under MetaDir.
func (m MetaName) Format() string { return FormatMetaName(m) }

// FormatMetaName renders the tagged name current TiKV writes,
// v1/backupmeta/{flush_ts:016X}{store_id:016X}-d{min_begin_ts:016X}l{min_ts:016X}u{max_ts:016X}p{flags:016X}.meta,
// with b{prev_flush_ts}c{cluster_id}s{task_start_ts} before .meta when
// Linked, then h{checksum} when HasChecksum.
func FormatMetaName(m MetaName) string {
	name := fmt.Sprintf("%s%016X%016X-%c%016X%c%016X%c%016X%c%016X", MetaDir, m.FlushTS, m.StoreID,
		tagMinBeginTS, m.MinBeginTS, tagMinTS, m.MinTS, tagMaxTS, m.MaxTS, tagFlags, m.Flags)
	if m.Linked {
		name += fmt.Sprintf("%c%016X%c%016X%c%016X", tagPrevFlush, m.PrevFlushTS, tagClusterID, m.ClusterID, tagTaskStart, m.TaskStartTS)
	}
	if m.HasChecksum {
		name += fmt.Sprintf("%c%016X", tagChecksum, m.Checksum)
	}
	return name + metaSuffix
}

// MetaChecksum is the h tag of a meta file: the first 8 bytes (big-endian)
// of the SHA-256 of the canonical name without its h tag — every other
// field of the name, however it was spelled — followed by the body. Any
// change to a name field or a body byte changes it, including changes no
// other check can see (a region id, an unknown field).
func MetaChecksum(m MetaName, body []byte) uint64 {
	m.HasChecksum, m.Checksum = false, 0
	h := sha256.New()
	h.Write([]byte(FormatMetaName(m)))
	h.Write(body)
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// ParseMetaName reads a metadata file name (with or without its
// directory) as BR's backupmetas.ParseName does: the tagged form (32 hex
// digits, '-', then tag letter + 16 hex digits segments in any order;
// d, l and u required, p optional, other tags ignored, duplicates
// rejected; hex of either case) or the legacy four-part form.
func ParseMetaName(name string) (MetaName, error) {
	base := path.Base(name)
	if !strings.HasSuffix(base, metaSuffix) {
		return MetaName{}, fmt.Errorf("backupmeta name %q: no %s suffix", name, metaSuffix)
	}
	base = strings.TrimSuffix(base, metaSuffix)
	prefix, suffix, ok := strings.Cut(base, "-")
	if !ok {
		return MetaName{}, fmt.Errorf("backupmeta name %q: no '-'", name)
	}
	if len(prefix) == 16 {
		return parseLegacyMetaName(name, base)
	}
	if len(prefix) != 32 {
		return MetaName{}, fmt.Errorf("backupmeta name %q: want 32 hex digits of flush ts and store id before '-'", name)
	}
	var m MetaName
	var err error
	if m.FlushTS, err = parseHex16(prefix[:16]); err != nil {
		return MetaName{}, fmt.Errorf("backupmeta name %q: flush ts: %w", name, err)
	}
	if m.StoreID, err = parseHex16(prefix[16:]); err != nil {
		return MetaName{}, fmt.Errorf("backupmeta name %q: store id: %w", name, err)
	}
	var seen [256]bool
	for pos := 0; pos < len(suffix); pos += tagLen {
		if len(suffix)-pos < tagLen {
			return MetaName{}, fmt.Errorf("backupmeta name %q: incomplete tag at %q", name, suffix[pos:])
		}
		tag := suffix[pos]
		if !isAlnum(tag) {
			return MetaName{}, fmt.Errorf("backupmeta name %q: invalid tag %q", name, tag)
		}
		if seen[tag] {
			return MetaName{}, fmt.Errorf("backupmeta name %q: duplicate tag %q", name, tag)
		}
		seen[tag] = true
		m.Tags += string(tag)
		v, err := parseHex16(suffix[pos+1 : pos+tagLen])
		if err != nil {
			return MetaName{}, fmt.Errorf("backupmeta name %q: tag %q: %w", name, tag, err)
		}
		switch tag {
		case tagMinBeginTS:
			m.MinBeginTS = v
		case tagMinTS:
			m.MinTS = v
		case tagMaxTS:
			m.MaxTS = v
		case tagFlags:
			m.Flags, m.HasFlags = v, true
		case tagPrevFlush:
			m.PrevFlushTS = v
		case tagClusterID:
			m.ClusterID = v
		case tagTaskStart:
			m.TaskStartTS = v
		case tagChecksum:
			m.Checksum, m.HasChecksum = v, true
		}
	}
	for _, need := range []byte{tagMinBeginTS, tagMinTS, tagMaxTS} {
		if !seen[need] {
			return MetaName{}, fmt.Errorf("backupmeta name %q: missing tag %q", name, need)
		}
	}
	// Lineage counts only when whole; a name with part of it is judged
	// by the checks (see CheckMeta), as BR would still read it.
	m.Linked = seen[tagPrevFlush] && seen[tagClusterID] && seen[tagTaskStart]
	if !m.Linked {
		m.Lineage = Lineage{}
	}
	return m, nil
}

func parseLegacyMetaName(name, base string) (MetaName, error) {
	parts := strings.Split(base, "-")
	if len(parts) != 4 {
		return MetaName{}, fmt.Errorf("backupmeta name %q: want flush-minbegin-min-max", name)
	}
	var v [4]uint64
	for i, p := range parts {
		var err error
		if v[i], err = parseHex16(p); err != nil {
			return MetaName{}, fmt.Errorf("backupmeta name %q: part %d: %w", name, i+1, err)
		}
	}
	return MetaName{FlushTS: v[0], MinBeginTS: v[1], MinTS: v[2], MaxTS: v[3], Legacy: true}, nil
}

// parseHex16 reads exactly 16 hex digits of either case.
func parseHex16(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("%q is not 16 hex digits", s)
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("%q is not 16 hex digits", s)
		}
		v = v<<4 | uint64(d)
	}
	return v, nil
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// DataName is the parsed name of a merged data object.
type DataName struct {
	StoreID uint64
	MinTS   uint64
	// MaxTS gives the date and hour directory. Parsing recovers only the
	// hour: the TSO of its first millisecond.
	MaxTS  uint64
	Schema bool   // a schema-meta object (meta keys)
	ID     string // unique part, a UUID in TiKV
}

// Format renders the name TiKV writes.
func (d DataName) Format() string { return FormatDataName(d) }

// FormatDataName renders v1/{YYYYMMDD}/{HH}/{store}/[schema-meta/]{min_ts}-{id}.log
// with the date and hour in UTC from the physical part of MaxTS.
func FormatDataName(d DataName) string {
	t := tsoTime(d.MaxTS)
	schema := ""
	if d.Schema {
		schema = "schema-meta/"
	}
	return fmt.Sprintf("v1/%s/%s/%d/%s%d-%s.log", t.Format("20060102"), t.Format("15"), d.StoreID, schema, d.MinTS, d.ID)
}

// tsoTime is the physical part of a TSO in UTC (client-go's oracle, the
// project's one TSO ↔ time conversion).
func tsoTime(ts uint64) time.Time { return oracle.GetTimeFromTS(ts).UTC() }

// ParseDataName reads a data object name.
func ParseDataName(name string) (DataName, error) {
	parts := strings.Split(name, "/")
	if len(parts) != 5 && len(parts) != 6 || parts[0] != "v1" {
		return DataName{}, fmt.Errorf("%q is not a log data object name", name)
	}
	var d DataName
	if len(parts) == 6 {
		if parts[4] != "schema-meta" {
			return DataName{}, fmt.Errorf("%q is not a log data object name", name)
		}
		d.Schema = true
	}
	date, hour := parts[1], parts[2]
	if len(date) != 8 || len(hour) != 2 || !allDigits(date) || !allDigits(hour) {
		return DataName{}, fmt.Errorf("data object %q: bad date or hour", name)
	}
	at, err := time.Parse("2006010215", date+hour)
	if err != nil {
		return DataName{}, fmt.Errorf("data object %q: %w", name, err)
	}
	ms := at.UnixMilli()
	if ms < 0 {
		return DataName{}, fmt.Errorf("data object %q: date before 1970", name)
	}
	if ms >= 1<<46 { // a TSO is 46 bits of milliseconds over 18 logical ones
		return DataName{}, fmt.Errorf("data object %q: date past what a TSO can hold", name)
	}
	// Milliseconds straight into the TSO: oracle.GoTimeToTS goes through
	// UnixNano, which wraps after 2262 (the fuzzer found 2270 parsing to
	// a ts of 3916).
	d.MaxTS = oracle.ComposeTS(ms, 0)
	if d.StoreID, err = parseDecimal(parts[3]); err != nil {
		return DataName{}, fmt.Errorf("data object %q: store id: %w", name, err)
	}
	file, ok := strings.CutSuffix(parts[len(parts)-1], ".log")
	if !ok {
		return DataName{}, fmt.Errorf("data object %q: no .log suffix", name)
	}
	minTS, id, ok := strings.Cut(file, "-")
	if !ok || id == "" {
		return DataName{}, fmt.Errorf("data object %q: want {min_ts}-{id}.log", name)
	}
	if d.MinTS, err = parseDecimal(minTS); err != nil {
		return DataName{}, fmt.Errorf("data object %q: min ts: %w", name, err)
	}
	for i := 0; i < len(id); i++ {
		if !isAlnum(id[i]) && id[i] != '-' {
			return DataName{}, fmt.Errorf("data object %q: id %q is not a uuid", name, id)
		}
	}
	d.ID = id
	return d, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseDecimal reads a canonical unsigned decimal (no sign, no leading
// zeros), so every name has one spelling.
func parseDecimal(s string) (uint64, error) {
	if s == "" || !allDigits(s) || len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("%q is not a canonical decimal", s)
	}
	return strconv.ParseUint(s, 10, 64)
}

// GlobalCheckpointName is where a store records its global checkpoint.
func GlobalCheckpointName(storeID uint64) string {
	return fmt.Sprintf("%s%d.ts", GlobalCheckpointDir, storeID)
}

// ParseGlobalCheckpointName returns the store id of a global checkpoint
// object name.
func ParseGlobalCheckpointName(name string) (uint64, error) {
	id, ok := strings.CutPrefix(name, GlobalCheckpointDir)
	if ok {
		id, ok = strings.CutSuffix(id, ".ts")
	}
	if !ok {
		return 0, fmt.Errorf("%q is not a global checkpoint name", name)
	}
	store, err := parseDecimal(id)
	if err != nil {
		return 0, fmt.Errorf("global checkpoint %q: %w", name, err)
	}
	return store, nil
}

// EncodeGlobalCheckpoint is the object body: a little-endian u64.
func EncodeGlobalCheckpoint(ts uint64) []byte { return binary.LittleEndian.AppendUint64(nil, ts) }

// DecodeGlobalCheckpoint reads the object body.
func DecodeGlobalCheckpoint(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, corrupt("global checkpoint of %d bytes, want 8", len(b))
	}
	return binary.LittleEndian.Uint64(b), nil
}

// GlobalCheckpointObject is the object a store uploads to publish its
// global checkpoint.
func GlobalCheckpointObject(storeID, ts uint64) Object {
	return Object{Name: GlobalCheckpointName(storeID), Data: EncodeGlobalCheckpoint(ts)}
}

// NameFor is base with the tags that follow from a meta file's content
// recomputed — d (min begin ts of the default CF, TiKV's 0 = none), l and
// u (min and max ts), p (no schema files, no groups) — and, when base
// carries one, the checksum over the result and body (the encoded md).
// Flush ts, store and lineage are base's. A flush is named with it, and so
// is a meta file `br stream truncate` rewrites with fewer groups.
func NameFor(base MetaName, md *brpb.Metadata, body []byte) MetaName {
	n := base
	n.MinBeginTS, n.MinTS, n.MaxTS, n.Flags = 0, md.MinTs, md.MaxTs, 0
	hasSchema := false
	for _, g := range md.FileGroups {
		for _, fi := range g.DataFilesInfo {
			// As TiKV's flush_backup_metadata: 0 means "none yet".
			if n.MinBeginTS == 0 || fi.MinBeginTsInDefaultCf < n.MinBeginTS {
				n.MinBeginTS = fi.MinBeginTsInDefaultCf
			}
			hasSchema = hasSchema || fi.IsMeta
		}
	}
	if !hasSchema {
		n.Flags |= FlagNoMetaFiles
	}
	if len(md.FileGroups) == 0 {
		n.Flags |= FlagEmpty
	}
	if n.HasChecksum {
		n.Checksum = MetaChecksum(n, body)
	}
	return n
}
