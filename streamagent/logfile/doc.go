// Package logfile writes and reads the change-log files of TiKV's built-in
// log backup (PITR), byte for byte as TiKV writes them, so BR's restore
// reads what the agent writes and the decoder here can serve as the oracle
// for `br stream verify` and the no-loss tests.
//
// The package does no network IO and reads no clock; it touches the file
// system only when a builder spills. Object names get their unique part
// from an injected id source.
//
// # Use
//
// A flusher adds each committed change to a Builder (Add), spills it to
// temp files under memory pressure (Spill), and at flush time calls
// FinishLinked(flushTS, resolvedTS, lineage) (Finish names the meta file
// exactly as TiKV would): the Flush it returns holds the data objects to
// upload first — streamed from the flush's own temp files (DataObject.Open),
// never whole in memory; Flush.Close frees them — then the meta file that
// lists them; after that the store publishes GlobalCheckpointObject. Builders can share a ChunkPool so
// flushes recycle buffer memory; Close gives it back and removes temp
// files. Audit reads a storage back and checks every field of every meta
// file against its name, itself and the entries it lists, reporting each
// problem as a Finding that names the object; it yields the committed
// changes of intact flushes and is what `br stream verify` runs. Walk is
// Audit stopping at the first failure, the oracle of the no-loss tests;
// ReadMetas and ReadDataFile read single files.
//
// # Format
//
// Each committed change (raw user key, start_ts, commit_ts, put/delete,
// value) becomes the column-family entries TiKV's raftstore applies:
//
//   - write CF: key = memcomparable(user key) ‖ BE64(^commit_ts); value =
//     TiKV's Write record: type byte ('P' put, 'D' delete, 'L' lock, 'R'
//     rollback) ‖ LEB128 varint start_ts ‖ optional 'v' ‖ u8 len ‖ value
//     when the value has at most 255 bytes (SHORT_VALUE_MAX_LEN). Newer
//     TiKV may append optional fields ('R' overlapped rollback, 'F' gc
//     fence u64 BE, 'l' last change u64 BE + varint, 'S' txn source
//     varint); the decoder reads them the way TiKV does and stops at an
//     unknown byte (forward compatibility).
//   - default CF, only for puts whose value is longer than 255 bytes:
//     key = memcomparable(user key) ‖ BE64(^start_ts); value = the value.
//
// Keys carry NO 'z' data prefix. kvproto's comment on DataFileInfo
// start_key/end_key says "Encoded and starts with 'z'", but the code
// disagrees: TiKV's router takes keys from raft commands
// (utils::request_to_triple) and from the initial scan's region snapshot,
// both without the data prefix; it classifies meta keys with
// key.starts_with(b"m") and decodes table ids with
// Key::from_encoded_slice(key).into_raw(), both of which only work on
// unprefixed keys; BR parses meta keys with codec.DecodeBytes(key) directly
// (br/pkg/stream ParseTxnMetaKeyFrom) and TiKV's importer matches rewrite
// prefixes against memcomparable table prefixes (sst_importer
// do_apply_kv_file). DataFileInfo start_key/end_key are therefore the
// smallest and largest MVCC key in the file, unprefixed, and
// region_start_key/region_end_key are the region's (memcomparable) keys.
//
// Entries of one cmd type, CF, region, table (t + 8-byte comparable int64,
// else 0) and "meta-ness" (user key starts with 'm'; table id forced to 0)
// form one file. Every change CDC delivers is a raft Put (a committed
// delete is a Put of a 'D' record), so files have type Put; Delete-type
// files (raft deletes, e.g. from GC) can still be read back. A file is
// the entries framed back to back as u32 LE key_len ‖ key ‖ u32 LE
// value_len ‖ value, with no header. Per file: sha256 of those plain
// bytes; crc64xor = XOR over entries of CRC-64/XZ(key ‖ value) (TiKV uses
// the crc64fast crate, "CRC-64/XZ a.k.a. CRC-64/GO-ECMA", which is Go's
// hash/crc64 with the ECMA table; pinned by a test vector); min_ts/max_ts
// of the ts in the keys; min_begin_ts_in_default_cf = the smallest start_ts
// of the write-CF records, else min_ts; start_key/end_key; entry count;
// length (plain bytes); one zstd frame (compression_type ZSTD, TiKV uses
// Level::Fastest).
//
// A flush concatenates the compressed files into objects, data files first
// and schema (meta-key) files after, never mixed; a new object starts once
// the plain length already in the current one reaches file-size-limit
// (TiKV's merge_and_flush_log: the check runs before adding a file).
// Objects are named v1/{YYYYMMDD}/{HH}/{store}/{min_ts}-{uuid}.log or
// v1/{YYYYMMDD}/{HH}/{store}/schema-meta/{min_ts}-{uuid}.log, date and hour
// in UTC from the physical part of the group's max_ts, min_ts in decimal.
// DataFileInfo.path stays empty (the path lives in the DataFileGroup);
// range_offset/range_length locate the compressed file in the object.
//
// The flush's brpb.Metadata (file_groups, store_id, resolved_ts, min_ts,
// max_ts, meta_version V2; gogo Marshal, uncompressed) goes to
// v1/backupmeta/{flush_ts:016X}{store_id:016X}-d{min_begin_ts:016X}l{min_ts:016X}u{max_ts:016X}p{flags:016X}.meta
// with flags bit 0 NO_META_FILES (no schema-meta group) and bit 1 EMPTY
// (no group at all); an empty flush still writes one, so flush_ts
// advances. min_begin_ts is the smallest min_begin_ts_in_default_cf, else
// 0. BR's parser (br/pkg/stream/backupmetas) accepts hex of either case,
// any alphanumeric tag in any order, rejects duplicate tags and requires
// d, l and u; ParseMetaName does the same and also reads the older
// {flush}-{min_begin}-{min}-{max} form.
//
// v1/global_checkpoint/{store_id}.ts holds a little-endian u64.
//
// # Lineage: what the agent adds to the name
//
// TiKV's format carries no sequence number, so a deleted meta file leaves
// no trace. The agent's meta file names carry four more tags, after p:
//
//	b{prev_flush_ts:016X} the flush ts of this store's previous meta file
//	                      made durable in this task; 0 for its first
//	c{cluster_id:016X}    PD's cluster id (0 if unknown)
//	s{task_start_ts:016X} the task's start ts
//	h{checksum:016X}      the first 8 bytes (big-endian) of SHA-256 over the
//	                      canonical name without h (as FormatMetaName
//	                      writes it) followed by the body
//
// BR's backupmetas.ParseName and TiKV's parse_backupmeta_filename (used by
// its tests and by compact-log-backup) both skip tags they do not know
// (TiKV's test_parse_backupmeta_filename_accepts_reordered_and_new_tags),
// so both read these names. The name grows to 174 characters, well within
// every backend's limit and a file system's 255 per component.
//
// b makes each store's meta files a chain: every flush names its
// predecessor, so verify finds a deleted one from the flush after it. The
// agent keeps the flush ts of its last durable meta file in memory and
// sets it once the meta file is written (never before: a failed upload is
// retried under the same name, with the same b). A restarted agent starts
// from the flush ts its store last recorded in etcd (the FlushTs of
// lbpb.SpanCheckpoints, written after the meta file), and takes flush ts
// above it. If it crashed between writing a meta file and recording it,
// two flushes name the same predecessor: a fork, harmless because the
// unrecorded flush's checkpoints were never published and its data is
// scanned again. Chains are per store, so a region moving to another
// store does not affect them. Below the truncate safepoint a predecessor
// may be gone. c and s tell another cluster's or task's files apart from
// the root backupmeta's cluster id and start ts. h covers everything the
// fields cannot cross-check (a region id, an epoch, an unknown field, the
// flush ts). The newest meta file of each store is named by no later
// flush; only the task's records in etcd (verify --task-name) prove it.//
// # Verified against
//
//   - tikv/tikv components/backup-stream/src/router.rs: ApplyEvents,
//     ApplyEvent::is_meta/should_record, TempFileKey::of (table id, meta),
//     path_to_log_file/path_to_schema_file, format_date_time (UTC, max_ts),
//     DataFile::on_events (crc64fast over key then value, sha256 of framed
//     bytes, min/max ts from Key::decode_ts, min_begin_ts from
//     WriteRef::parse of write-CF values), generate_metadata,
//     merge_and_flush_log(_files_to) (batching, range offsets, group
//     min/max/min_resolved ts), MetadataInfo (flags, path_to_meta,
//     marshal_to), do_flush (resolved_ts = max(min file rts, flush rts)),
//     flush_global_checkpoint (to_le_bytes).
//   - tikv/tikv components/backup-stream/src/utils.rs:
//     BACKUP_META_FLAG_NO_META_FILES = 1, BACKUP_META_FLAG_EMPTY = 1<<1,
//     tag letters d/l/u/p, parse_backupmeta_filename, request_to_triple,
//     ZstdEncoder::with_quality(Level::Fastest).
//   - tikv/tikv components/backup-stream/src/event_loader.rs (initial scan
//     emits the same write/default CF events, keys from the snapshot).
//   - tikv/tikv components/tikv_util/src/codec/stream_event.rs
//     (EventEncoder::encode_event: u32 LE lengths) and codec/number.rs
//     (encode_u64_desc = BE of !v, encode_var_u64 = LEB128).
//   - tikv/tikv components/txn_types/src/types.rs (Key::from_raw,
//     append_ts, decode_ts_from, SHORT_VALUE_MAX_LEN = 255,
//     SHORT_VALUE_PREFIX = 'v') and write.rs (flags P/D/L/R, to_bytes,
//     parse).
//   - tikv/tikv components/tidb_query_datatype/src/codec/table.rs
//     (decode_table_id: 't' + comparable i64).
//   - pingcap/tidb br/pkg/stream/decode_kv.go (DecodeKVEntry),
//     br/pkg/stream/backupmetas/parser.go (ParseName), meta_kv.go
//     (ParseTxnMetaKeyFrom), br/pkg/restore/log_client (ReadFile of
//     [range_offset, +range_length), decompress, sha256 of the plain
//     bytes, getKeyTS from the last 8 bytes).
//   - pingcap/kvproto proto/brpb.proto: Metadata, DataFileGroup,
//     DataFileInfo (field numbers and comments), FileType, MetaVersion.
//   - crc64fast (docs.rs): "CRC-64/XZ (a.k.a. CRC-64/GO-ECMA)",
//     "hello world!" → 0x8483c0fa32607d61.
package logfile
