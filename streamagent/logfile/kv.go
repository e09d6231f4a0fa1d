// Package logfile reads and writes the change-log files of TiKV's built-in
// log backup (PITR), so BR's restore can read what the agent writes:
//
//   - each committed change becomes the column-family entries TiKV applies:
//     a write-CF entry keyed by memcomparable(user key) + big-endian
//     ^commit_ts whose value is TiKV's Write record (type, varint start_ts,
//     and the value inline when it is at most 255 bytes), plus, for longer
//     values, a default-CF entry keyed by memcomparable(user key) +
//     ^start_ts holding the value. Keys carry no 'z' data prefix: TiKV's
//     backup-stream router takes them from raft commands, before the engine
//     adds it (components/backup-stream/src/router.rs, ApplyEvent).
//   - entries are framed as u32-LE key length | key | u32-LE value length |
//     value (tikv_util::codec::stream_event, BR's stream.DecodeKVEntry);
//   - entries are grouped into files by {table id, region, cf, put/delete,
//     meta key}; each file is one zstd stream with a sha256 and crc64-xor of
//     its plain bytes; one flush concatenates the files into objects
//     v1/<yyyymmdd>/<hh>/<store>/<min_ts>-<uuid>.log (date and hour in UTC
//     from the group's max ts; meta keys under .../schema-meta/...);
//   - a brpb.Metadata (V2, file groups) describes the flush, written to
//     v1/backupmeta/<flush_ts><store>-d<min_begin_ts>l<min_ts>u<max_ts>p<flags>.meta
//     (16 upper-case hex digits each, as current TiKV names them);
//   - v1/global_checkpoint/<store>.ts holds a little-endian u64.
//
// Verified against tikv/tikv components/backup-stream/src/{router,utils}.rs
// and pingcap/tidb br/pkg/stream (EncodeKVEntry/DecodeKVEntry).
package logfile

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tikv/client-go/v2/util/codec"
)

// Column families.
const (
	CFDefault = "default"
	CFWrite   = "write"
)

// ShortValueMaxLen is TiKV's limit for values stored inside the Write record.
const ShortValueMaxLen = 255

// Write record types (txn_types::WriteType).
const (
	WritePut      byte = 'P'
	WriteDelete   byte = 'D'
	WriteLock     byte = 'L'
	WriteRollback byte = 'R'
)

const shortValuePrefix byte = 'v'

// Op is what a change did to a key.
type Op uint8

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

// Change is one committed change of a user key.
type Change struct {
	Key      []byte // raw user key
	Value    []byte
	StartTS  uint64
	CommitTS uint64
	Op       Op
}

// KV is one column-family entry as TiKV records it.
type KV struct {
	CF         string
	Key, Value []byte
}

// ErrCorrupt marks undecodable file content.
var ErrCorrupt = errors.New("corrupt log backup data")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// EncodeMVCCKey is TiKV's Key::from_raw(k).append_ts(ts).
func EncodeMVCCKey(raw []byte, ts uint64) []byte {
	k := codec.EncodeBytes(make([]byte, 0, len(raw)+len(raw)/8+9+8), raw)
	return binary.BigEndian.AppendUint64(k, ^ts)
}

// DecodeMVCCKey splits an MVCC key into the raw user key and its ts.
func DecodeMVCCKey(k []byte) ([]byte, uint64, error) {
	if len(k) < 8 {
		return nil, 0, corrupt("mvcc key of %d bytes", len(k))
	}
	rest, raw, err := codec.DecodeBytes(k[:len(k)-8], nil)
	if err != nil || len(rest) != 0 {
		return nil, 0, corrupt("mvcc key %x is not memcomparable", k)
	}
	return raw, ^binary.BigEndian.Uint64(k[len(k)-8:]), nil
}

// EncodeWrite serializes a Write record.
func EncodeWrite(typ byte, startTS uint64, shortValue []byte, hasShort bool) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+2+len(shortValue))
	b = append(b, typ)
	b = binary.AppendUvarint(b, startTS)
	if hasShort {
		b = append(b, shortValuePrefix, byte(len(shortValue)))
		b = append(b, shortValue...)
	}
	return b
}

// Write is a decoded Write record.
type Write struct {
	Type       byte
	StartTS    uint64
	ShortValue []byte
	HasShort   bool
}

// DecodeWrite parses a Write record. Optional trailing fields newer TiKV
// versions add (overlapped rollback, gc fence, last change, txn source) are
// not needed to restore and are ignored.
func DecodeWrite(v []byte) (Write, error) {
	if len(v) < 2 {
		return Write{}, corrupt("write record of %d bytes", len(v))
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
	rest := v[1+n:]
	if len(rest) > 0 && rest[0] == shortValuePrefix {
		if len(rest) < 2 || len(rest) < 2+int(rest[1]) {
			return Write{}, corrupt("truncated short value")
		}
		w.ShortValue, w.HasShort = rest[2:2+int(rest[1])], true
	}
	return w, nil
}

// EncodeChange appends the entries TiKV would record for c.
func EncodeChange(dst []KV, c Change) []KV {
	if c.Op == OpDelete {
		return append(dst, KV{CF: CFWrite, Key: EncodeMVCCKey(c.Key, c.CommitTS), Value: EncodeWrite(WriteDelete, c.StartTS, nil, false)})
	}
	if len(c.Value) <= ShortValueMaxLen {
		return append(dst, KV{CF: CFWrite, Key: EncodeMVCCKey(c.Key, c.CommitTS), Value: EncodeWrite(WritePut, c.StartTS, c.Value, true)})
	}
	return append(dst,
		KV{CF: CFDefault, Key: EncodeMVCCKey(c.Key, c.StartTS), Value: c.Value},
		KV{CF: CFWrite, Key: EncodeMVCCKey(c.Key, c.CommitTS), Value: EncodeWrite(WritePut, c.StartTS, nil, false)})
}

// AppendFrame appends one framed entry.
func AppendFrame(dst, key, value []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(key)))
	dst = append(dst, key...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(value)))
	return append(dst, value...)
}

// NextFrame reads one framed entry from b.
func NextFrame(b []byte) (key, value, rest []byte, err error) {
	if len(b) < 4 {
		return nil, nil, nil, corrupt("truncated frame")
	}
	kl := binary.LittleEndian.Uint32(b)
	if uint64(len(b)) < 8+uint64(kl) {
		return nil, nil, nil, corrupt("truncated frame key")
	}
	key = b[4 : 4+kl]
	vl := binary.LittleEndian.Uint32(b[4+kl:])
	if uint64(len(b)) < 8+uint64(kl)+uint64(vl) {
		return nil, nil, nil, corrupt("truncated frame value")
	}
	value = b[8+kl : 8+kl+vl]
	return key, value, b[8+kl+vl:], nil
}

// TableID is TiDB's table id of a raw key "t<8-byte comparable int64>...",
// or 0 for other keys, as TiKV groups files.
func TableID(raw []byte) int64 {
	if len(raw) < 9 || raw[0] != 't' {
		return 0
	}
	return int64(binary.BigEndian.Uint64(raw[1:9]) ^ (1 << 63))
}

// IsMetaKey reports a TiDB meta (schema) key; TiKV checks the encoded key's
// first byte, which memcomparable encoding leaves unchanged.
func IsMetaKey(raw []byte) bool { return len(raw) > 0 && raw[0] == 'm' }
