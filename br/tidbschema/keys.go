// Package tidbschema reads TiDB's schema — databases, tables and partitions —
// from the meta keys TiDB keeps in TiKV, at a timestamp, and knows the key
// layout of table data. It is what `br stream start` needs to turn a table
// filter into key ranges, without linking TiDB.
//
// # Layout (TiDB pkg/meta, pkg/structure, pkg/tablecodec)
//
// Every meta key starts with "m". TiDB's structure layer stores strings and
// hashes under it, with the parts in memcomparable form:
//
//	string data: "m" + EncodeBytes(key) + EncodeUint('s')                       value: bytes
//	hash data:   "m" + EncodeBytes(key) + EncodeUint('h') + EncodeBytes(field)  value: bytes
//	hash meta:   "m" + EncodeBytes(key) + EncodeUint('H')   (written only by TiDB ≤ 5.1)
//
// EncodeBytes is the 8-byte-group memcomparable encoding, EncodeUint an 8-byte
// big-endian integer, so the type flag is seven zero bytes then the letter.
// The schema lives in two kinds of hash:
//
//	hash "DBs",     field "DB:<id>"     → DBInfo JSON    (one per database)
//	hash "DB:<id>", field "Table:<id>"  → TableInfo JSON (one per table, view or sequence)
//
// A database's hash also holds "TID:<id>", "IID:<id>", "TARID:<id>",
// "SID:<id>" (auto-id and sequence counters, decimal text), which are not
// tables. Table data lives under "t" + EncodeInt(physical id): rows at
// "_r" + EncodeInt(handle) (int handles), indexes at "_i" + EncodeInt(index id)
// + the index values. A partitioned table's rows and local indexes live under
// its partitions' ids, its global indexes under the table's own id.
package tidbschema

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/tikv/client-go/v2/util/codec"
)

// TiDB's structure type flags: the byte after the encoded key says what
// kind of entry a meta key is.
const (
	flagStringData = 's'
	flagHashMeta   = 'H'
	flagHashData   = 'h'
)

// MetaPrefix is the first byte of every TiDB meta key; MetaEnd ends the meta
// key space. [MetaPrefix, MetaEnd) is the range BR always observes.
var (
	MetaPrefix = []byte("m")
	MetaEnd    = []byte("n")
)

// TablePrefixAll and TableEnd bound every table's data: [t, u).
var (
	TablePrefixAll = []byte("t")
	TableEnd       = []byte("u")
)

// Keys and fields of TiDB's meta structure (pkg/meta).
var (
	dbsKey = []byte("DBs") // hash: DB:<id> → DBInfo
)

const (
	dbFieldPrefix    = "DB:"
	tableFieldPrefix = "Table" // TiDB's IterTables tests the prefix without the colon
)

// DatabasesKey is the key of the hash holding one field per database.
func DatabasesKey() []byte { return bytes.Clone(dbsKey) }

// DatabaseKey is "DB:<id>": a field of DatabasesKey, and the key of the hash
// holding the database's tables.
func DatabaseKey(dbID int64) []byte { return []byte(dbFieldPrefix + strconv.FormatInt(dbID, 10)) }

// TableField is "Table:<id>", a table's field in its database's hash.
func TableField(tableID int64) []byte { return []byte("Table:" + strconv.FormatInt(tableID, 10)) }

// AutoTableIDField is "TID:<id>", the row-id allocator of a table.
func AutoTableIDField(tableID int64) []byte { return []byte("TID:" + strconv.FormatInt(tableID, 10)) }

// StringKey is the raw key of a string entry of TiDB's meta structure (such
// as "NextGlobalID" or "SchemaVersionKey").
func StringKey(key []byte) []byte {
	out := append(bytes.Clone(MetaPrefix), codec.EncodeBytes(nil, key)...)
	return codec.EncodeUint(out, flagStringData)
}

// HashDataPrefix is the prefix of every field of hash key: a scan of
// [HashDataPrefix(key), PrefixNext(HashDataPrefix(key))) returns exactly its
// fields, because EncodeBytes is prefix-free ("DB:1" never prefixes "DB:12").
func HashDataPrefix(key []byte) []byte {
	out := append(bytes.Clone(MetaPrefix), codec.EncodeBytes(nil, key)...)
	return codec.EncodeUint(out, flagHashData)
}

// HashDataKey is the raw key of one field of a hash.
func HashDataKey(key, field []byte) []byte {
	return codec.EncodeBytes(HashDataPrefix(key), field)
}

// ErrNotHashData says a meta key is well formed but not a hash field (a
// string entry, a list, or a pre-5.2 hash meta key).
var ErrNotHashData = errors.New("not a hash data key")

// DecodeHashDataKey splits a raw hash data key into its hash key and field.
// A key of another structure type returns ErrNotHashData; a malformed key
// returns another error.
func DecodeHashDataKey(raw []byte) (key, field []byte, err error) {
	if !bytes.HasPrefix(raw, MetaPrefix) {
		return nil, nil, fmt.Errorf("meta key %x: no %q prefix", raw, MetaPrefix)
	}
	rest, key, err := codec.DecodeBytes(raw[len(MetaPrefix):], nil)
	if err != nil {
		return nil, nil, fmt.Errorf("meta key %x: %w", raw, err)
	}
	rest, flag, err := codec.DecodeUint(rest)
	if err != nil {
		return nil, nil, fmt.Errorf("meta key %x: type flag: %w", raw, err)
	}
	if flag != flagHashData {
		return nil, nil, fmt.Errorf("meta key %x: type flag %#x: %w", raw, flag, ErrNotHashData)
	}
	rest, field, err = codec.DecodeBytes(rest, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("meta key %x: field: %w", raw, err)
	}
	if len(rest) > 0 {
		return nil, nil, fmt.Errorf("meta key %x: %d trailing bytes", raw, len(rest))
	}
	return key, field, nil
}

// TablePrefix is "t" + EncodeInt(id): every key of a physical table (rows
// and indexes) starts with it.
func TablePrefix(physicalID int64) []byte {
	return codec.EncodeInt(bytes.Clone(TablePrefixAll), physicalID)
}

// RecordPrefix is TablePrefix + "_r": the rows of a physical table.
func RecordPrefix(physicalID int64) []byte {
	return append(TablePrefix(physicalID), '_', 'r')
}

// RowKey is the key of the row with an integer handle.
func RowKey(physicalID, handle int64) []byte {
	return codec.EncodeInt(RecordPrefix(physicalID), handle)
}

// IndexPrefix is TablePrefix + "_i" + EncodeInt(indexID): one index's entries.
func IndexPrefix(tableID, indexID int64) []byte {
	return codec.EncodeInt(append(TablePrefix(tableID), '_', 'i'), indexID)
}

// datumIntFlag is TiDB's datum codec flag of a signed integer.
const datumIntFlag = 0x03

// IndexKeyInt is the key of a non-unique index entry over one integer
// column: the index prefix, the value as a datum, then the handle as a
// datum (TiDB's layout for int handles).
func IndexKeyInt(tableID, indexID, value, handle int64) []byte {
	k := append(IndexPrefix(tableID, indexID), datumIntFlag)
	k = codec.EncodeInt(k, value)
	k = append(k, datumIntFlag)
	return codec.EncodeInt(k, handle)
}

// PrefixNext is the smallest key greater than every key with the prefix p
// (TiDB's kv.Key.PrefixNext): the last byte below 0xff is incremented and
// the 0xff bytes after it wrap to zero, keeping the length; an all-0xff
// prefix has no such key, and gets p with a zero byte appended, as TiDB
// does (never the case for "m" and "t" keys).
func PrefixNext(p []byte) []byte {
	out := bytes.Clone(p)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out
		}
	}
	// Every byte was 0xff and has wrapped to zero: TiDB then returns the
	// prefix followed by a zero byte.
	return append(bytes.Clone(p), 0)
}
