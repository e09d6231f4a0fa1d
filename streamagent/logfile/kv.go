package logfile

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tikv/client-go/v2/util/codec"
)

// Column families TiKV records for log backup.
const (
	CFDefault = "default"
	CFWrite   = "write"
)

// ShortValueMaxLen is TiKV's SHORT_VALUE_MAX_LEN: values up to this length
// live inside the write record, longer ones in the default CF.
const ShortValueMaxLen = 255

// Write record types (txn_types::WriteType).
const (
	WritePut      byte = 'P'
	WriteDelete   byte = 'D'
	WriteLock     byte = 'L'
	WriteRollback byte = 'R'
)

// Optional write record fields (txn_types::write), in the order TiKV
// writes them.
const (
	shortValuePrefix       byte = 'v'
	overlappedRollbackFlag byte = 'R'
	gcFencePrefix          byte = 'F'
	lastChangePrefix       byte = 'l'
	txnSourcePrefix        byte = 'S'
)

// Op is what a change did to a key.
type Op uint8

// Operations. The zero Op is treated as a put.
const (
	OpPut Op = iota + 1
	OpDelete
)

func (o Op) String() string {
	if o == OpDelete {
		return "delete"
	}
	return "put"
}

// Change is one committed change of a user key, as TiKV CDC delivers it.
type Change struct {
	Key      []byte // raw user key
	Value    []byte // empty for deletes
	StartTS  uint64
	CommitTS uint64
	Op       Op
}

// KV is one column-family entry as TiKV records it.
type KV struct {
	CF         string
	Key, Value []byte
}

// ErrCorrupt marks content that cannot be decoded or fails a check.
var ErrCorrupt = errors.New("corrupt log backup data")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// memcomparableLen is the length codec.EncodeBytes gives n raw bytes:
// 9 bytes for every started group of 8, and one more group when n is a
// multiple of 8.
func memcomparableLen(n int) int { return (n/8 + 1) * 9 }

// EncodeMVCCKey is TiKV's Key::from_raw(raw).append_ts(ts):
// memcomparable(raw) followed by the big-endian bitwise NOT of ts, so newer
// versions sort first.
func EncodeMVCCKey(raw []byte, ts uint64) []byte {
	k := codec.EncodeBytes(make([]byte, 0, memcomparableLen(len(raw))+8), raw)
	return binary.BigEndian.AppendUint64(k, ^ts)
}

// DecodeMVCCKey splits an MVCC key into the raw user key and its ts.
func DecodeMVCCKey(k []byte) (raw []byte, ts uint64, err error) {
	if len(k) < 8 {
		return nil, 0, corrupt("mvcc key of %d bytes has no ts", len(k))
	}
	rest, raw, err := codec.DecodeBytes(k[:len(k)-8], nil)
	if err != nil {
		return nil, 0, corrupt("mvcc key %x: %v", k, err)
	}
	if len(rest) != 0 {
		return nil, 0, corrupt("mvcc key %x: %d bytes between the user key and the ts", k, len(rest))
	}
	return raw, ^binary.BigEndian.Uint64(k[len(k)-8:]), nil
}

// Write is a decoded TiKV write record.
type Write struct {
	Type       byte
	StartTS    uint64
	ShortValue []byte
	HasShort   bool
	// Optional fields newer TiKV versions append; restore does not need
	// them, but they are kept so a record re-encodes to the same bytes.
	OverlappedRollback   bool
	GCFence              uint64
	HasGCFence           bool
	LastChangeTS         uint64
	VersionsToLastChange uint64
	HasLastChange        bool
	TxnSource            uint64
}

// EncodeWrite serializes a write record with an optional short value.
func EncodeWrite(typ byte, startTS uint64, shortValue []byte, hasShort bool) []byte {
	return Write{Type: typ, StartTS: startTS, ShortValue: shortValue, HasShort: hasShort}.Append(nil)
}

// writeLen is the encoded length of a record with only a start ts and an
// optional short value: the only shapes the builder writes.
func writeLen(startTS uint64, shortLen int, hasShort bool) int {
	n := 1 + uvarintLen(startTS)
	if hasShort {
		n += 2 + shortLen
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// Append appends the record as txn_types::Write::to_bytes does. A short
// value longer than 255 bytes cannot be represented; it is truncated to
// its low length byte exactly as TiKV's `v.len() as u8` would, which is why
// the builder never puts one there.
func (w Write) Append(dst []byte) []byte {
	dst = append(dst, w.Type)
	dst = binary.AppendUvarint(dst, w.StartTS)
	if w.HasShort {
		dst = append(dst, shortValuePrefix, byte(len(w.ShortValue)))
		dst = append(dst, w.ShortValue[:int(byte(len(w.ShortValue)))]...)
	}
	if w.OverlappedRollback {
		dst = append(dst, overlappedRollbackFlag)
	}
	if w.HasGCFence {
		dst = append(dst, gcFencePrefix)
		dst = binary.BigEndian.AppendUint64(dst, w.GCFence)
	}
	if w.HasLastChange {
		dst = append(dst, lastChangePrefix)
		dst = binary.BigEndian.AppendUint64(dst, w.LastChangeTS)
		dst = binary.AppendUvarint(dst, w.VersionsToLastChange)
	}
	if w.TxnSource != 0 {
		dst = append(dst, txnSourcePrefix)
		dst = binary.AppendUvarint(dst, w.TxnSource)
	}
	return dst
}

// DecodeWrite parses a write record the way TiKV's WriteRef::parse does:
// type, varint start ts, then tagged optional fields until the end or an
// unknown byte (ignored, for forward compatibility). A truncated field is
// an error (TiKV panics on a truncated short value; we never do).
// ShortValue aliases v.
func DecodeWrite(v []byte) (Write, error) {
	if len(v) == 0 {
		return Write{}, corrupt("empty write record")
	}
	w := Write{Type: v[0]}
	switch w.Type {
	case WritePut, WriteDelete, WriteLock, WriteRollback:
	default:
		return Write{}, corrupt("unknown write type %q", v[0])
	}
	ts, n := binary.Uvarint(v[1:])
	if n <= 0 {
		return Write{}, corrupt("write record start ts")
	}
	w.StartTS = ts
	b := v[1+n:]
	for len(b) > 0 {
		tag := b[0]
		b = b[1:]
		switch tag {
		case shortValuePrefix:
			if len(b) < 1 || len(b) < 1+int(b[0]) {
				return Write{}, corrupt("truncated short value")
			}
			w.ShortValue, w.HasShort = b[1:1+int(b[0])], true
			b = b[1+int(b[0]):]
		case overlappedRollbackFlag:
			w.OverlappedRollback = true
		case gcFencePrefix:
			if len(b) < 8 {
				return Write{}, corrupt("truncated gc fence")
			}
			w.GCFence, w.HasGCFence = binary.BigEndian.Uint64(b), true
			b = b[8:]
		case lastChangePrefix:
			if len(b) < 8 {
				return Write{}, corrupt("truncated last change ts")
			}
			w.LastChangeTS, w.HasLastChange = binary.BigEndian.Uint64(b), true
			versions, n := binary.Uvarint(b[8:])
			if n <= 0 {
				return Write{}, corrupt("truncated last change versions")
			}
			w.VersionsToLastChange = versions
			b = b[8+n:]
		case txnSourcePrefix:
			src, n := binary.Uvarint(b)
			if n <= 0 {
				return Write{}, corrupt("truncated txn source")
			}
			w.TxnSource = src
			b = b[n:]
		default:
			return w, nil
		}
	}
	return w, nil
}

// EncodeChange appends the entries TiKV records for a committed change:
// one write-CF entry, preceded by a default-CF entry when the value is too
// long to live in the write record.
func EncodeChange(dst []KV, c Change) []KV {
	switch {
	case c.Op == OpDelete:
		return append(dst, KV{CF: CFWrite, Key: EncodeMVCCKey(c.Key, c.CommitTS), Value: EncodeWrite(WriteDelete, c.StartTS, nil, false)})
	case len(c.Value) <= ShortValueMaxLen:
		return append(dst, KV{CF: CFWrite, Key: EncodeMVCCKey(c.Key, c.CommitTS), Value: EncodeWrite(WritePut, c.StartTS, c.Value, true)})
	default:
		return append(dst,
			KV{CF: CFDefault, Key: EncodeMVCCKey(c.Key, c.StartTS), Value: c.Value},
			KV{CF: CFWrite, Key: EncodeMVCCKey(c.Key, c.CommitTS), Value: EncodeWrite(WritePut, c.StartTS, nil, false)})
	}
}

// Entry is one decoded column-family entry.
type Entry struct {
	CF  string
	Key []byte // raw user key
	// TS is the commit ts of a write-CF entry and the start ts of a
	// default-CF entry.
	TS    uint64
	Write Write  // write CF only
	Value []byte // default CF only; aliases the input
}

// DecodeKV decodes one entry of a put-type file: the inverse of
// EncodeChange for each entry.
func DecodeKV(cf string, key, value []byte) (Entry, error) {
	raw, ts, err := DecodeMVCCKey(key)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{CF: cf, Key: raw, TS: ts}
	switch cf {
	case CFDefault:
		e.Value = value
	case CFWrite:
		if e.Write, err = DecodeWrite(value); err != nil {
			return Entry{}, fmt.Errorf("key %x: %w", key, err)
		}
	default:
		return Entry{}, corrupt("unknown column family %q", cf)
	}
	return e, nil
}

// AppendFrame appends one framed entry: u32 LE key length, key, u32 LE
// value length, value (tikv_util::codec::stream_event::EventEncoder).
func AppendFrame(dst, key, value []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(key)))
	dst = append(dst, key...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(value)))
	return append(dst, value...)
}

// NextFrame reads one framed entry from b; key and value alias b.
func NextFrame(b []byte) (key, value, rest []byte, err error) {
	if len(b) < 8 {
		return nil, nil, nil, corrupt("truncated frame: %d bytes left", len(b))
	}
	kl := uint64(binary.LittleEndian.Uint32(b))
	if uint64(len(b)) < 8+kl {
		return nil, nil, nil, corrupt("truncated frame: key of %d bytes, %d left", kl, len(b)-4)
	}
	key = b[4 : 4+kl]
	vl := uint64(binary.LittleEndian.Uint32(b[4+kl:]))
	if uint64(len(b)) < 8+kl+vl {
		return nil, nil, nil, corrupt("truncated frame: value of %d bytes, %d left", vl, uint64(len(b))-8-kl)
	}
	return key, b[8+kl : 8+kl+vl], b[8+kl+vl:], nil
}

// TableID is TiDB's table id of a raw key "t" + 8-byte comparable int64 +
// ..., or 0 for any other key, as TiKV's TempFileKey::of derives it.
func TableID(raw []byte) int64 {
	if len(raw) < 9 || raw[0] != 't' {
		return 0
	}
	return int64(binary.BigEndian.Uint64(raw[1:9]) ^ (1 << 63))
}

// IsMetaKey reports a TiDB meta (schema) key. TiKV tests the first byte of
// the memcomparable key, which is the raw key's first byte.
func IsMetaKey(raw []byte) bool { return len(raw) > 0 && raw[0] == 'm' }
