package logfile

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/tikv/client-go/v2/util/codec"
)

// Finding is one thing a check found about an object of a log backup
// storage: wrong (a failure) or only unprovable (a warning).
type Finding struct {
	// Object is the storage object the finding is about.
	Object string
	// Warning marks something that cannot be proven rather than
	// something wrong: nothing is known to be lost.
	Warning bool
	Err     error
}

func (f Finding) String() string { return f.Object + ": " + f.Err.Error() }

// findings collects what the checks of one audit find.
type findings struct {
	list   []Finding
	failed int
}

func (fs *findings) add(f Finding) {
	fs.list = append(fs.list, f)
	if !f.Warning {
		fs.failed++
	}
}

// fail records damage; the message is wrapped in ErrCorrupt.
func (fs *findings) fail(object, format string, args ...any) {
	fs.add(Finding{Object: object, Err: corrupt(format, args...)})
}

func (fs *findings) warn(object, format string, args ...any) {
	fs.add(Finding{Object: object, Warning: true, Err: fmt.Errorf(format, args...)})
}

// ours reports whether a meta file name carries any of the tags this agent
// adds: then every check applies in full (see checkMeta), since the agent
// writes each field exactly one way.
func ours(n MetaName) bool { return strings.ContainsAny(n.Tags, "bcsh") }

// knownTags are the tags an agent-written name may carry.
const knownTags = "dlupbcsh"

// checkMeta checks a decoded meta file against its name and itself: every
// field that the file's other fields or its name determine must agree.
// What only the data can confirm (keys, ts, counts, checksums of the
// entries) is checkData's. body is the file as stored, for the checksum
// tag.
func checkMeta(fs *findings, mf *MetaFile, body []byte, ignoreChecksum bool) {
	p, n, md := mf.Path, mf.Name, mf.Metadata
	strict := ours(n)
	if strict {
		if !n.Linked || !n.HasChecksum || !n.HasFlags {
			fs.fail(p, "the name carries only some of the tags p, b, c, s and h the agent writes (tags %q): renamed or damaged", n.Tags)
		}
		for _, t := range n.Tags {
			if !strings.ContainsRune(knownTags, t) {
				fs.fail(p, "unknown tag %q in a name the agent wrote", t)
			}
		}
	}
	if n.HasChecksum && !ignoreChecksum {
		if sum := MetaChecksum(n, body); sum != n.Checksum {
			fs.fail(p, "checksum tag h%016X does not match the name and body (they give %016X): the file or its name changed after it was written", n.Checksum, sum)
		}
	}
	if n.Linked {
		if n.PrevFlushTS >= n.FlushTS {
			fs.fail(p, "previous flush ts %d (tag b) is not below the flush ts %d", n.PrevFlushTS, n.FlushTS)
		}
		if n.TaskStartTS > n.FlushTS {
			fs.fail(p, "task start ts %d (tag s) is after the flush ts %d", n.TaskStartTS, n.FlushTS)
		}
	}
	if md.MetaVersion != brpb.MetaVersion_V2 || len(md.Files) > 0 {
		fs.add(Finding{Object: p, Err: fmt.Errorf("metadata version %v (V1 file list of %d) is not supported", md.MetaVersion, len(md.Files))})
		return
	}
	if md.StoreId <= 0 {
		fs.fail(p, "store id %d", md.StoreId)
	}
	if !n.Legacy && uint64(md.StoreId) != n.StoreID {
		fs.fail(p, "the name says store %d, the content store %d", n.StoreID, md.StoreId)
	}
	if unknownFields(md) {
		if strict {
			fs.fail(p, "fields the agent never writes (unknown field numbers): damaged")
		} else {
			fs.warn(p, "fields unknown to this tool; they were not checked")
		}
	}

	var minTS, maxTS, minBegin, minGroupRTS uint64
	hasSchema := false
	paths := map[string]int{}
	type fileKey struct {
		isMeta        bool
		cf            string
		typ           brpb.FileType
		table, region int64
	}
	fileKeys := map[fileKey]string{}
	for gi, g := range md.FileGroups {
		gl := fmt.Sprintf("group %d (%s)", gi, g.Path)
		if gi == 0 {
			minTS, maxTS, minGroupRTS = g.MinTs, g.MaxTs, g.MinResolvedTs
		}
		minTS, maxTS, minGroupRTS = min(minTS, g.MinTs), max(maxTS, g.MaxTs), min(minGroupRTS, g.MinResolvedTs)
		if prev, dup := paths[g.Path]; dup {
			fs.fail(p, "%s is also group %d: one object listed twice", gl, prev)
		}
		paths[g.Path] = gi
		if len(g.DataFilesInfo) == 0 {
			fs.fail(p, "%s lists no file", gl)
			continue
		}
		schema := g.DataFilesInfo[0].IsMeta
		hasSchema = hasSchema || schema
		dn, err := ParseDataName(g.Path)
		switch {
		case err != nil:
			fs.fail(p, "%s: %v", gl, err)
		default:
			if dn.StoreID != uint64(md.StoreId) {
				fs.fail(p, "%s: the path says store %d, the meta file store %d", gl, dn.StoreID, md.StoreId)
			}
			if dn.Schema != schema {
				fs.fail(p, "%s: schema-meta path %v, but its files have is_meta %v", gl, dn.Schema, schema)
			}
			if dn.MinTS != g.MinTs {
				fs.fail(p, "%s: the path says min ts %d, the group %d", gl, dn.MinTS, g.MinTs)
			}
			if hour := tsoTime(g.MaxTs).Truncate(time.Hour); !hour.Equal(tsoTime(dn.MaxTS)) {
				fs.fail(p, "%s: the path's hour is not that of the group's max ts %d (%s)", gl, g.MaxTs, hour.Format("2006-01-02 15h"))
			}
		}
		var fMin, fMax, fRTS, off uint64
		for fj, fi := range g.DataFilesInfo {
			fl := fmt.Sprintf("%s file %d", gl, fj)
			if fj == 0 {
				fMin, fMax, fRTS = fi.MinTs, fi.MaxTs, fi.ResolvedTs
			}
			fMin, fMax, fRTS = min(fMin, fi.MinTs), max(fMax, fi.MaxTs), min(fRTS, fi.ResolvedTs)
			if minBegin == 0 || fi.MinBeginTsInDefaultCf < minBegin {
				minBegin = fi.MinBeginTsInDefaultCf // as TiKV: 0 means "none yet"
			}
			if fi.IsMeta != schema {
				fs.fail(p, "%s: is_meta %v in a group of is_meta %v", fl, fi.IsMeta, schema)
			}
			// Files lie back to back from offset 0 (TiKV's merge).
			switch {
			case fi.RangeOffset != off:
				fs.fail(p, "%s at offset %d, want %d: files must lie back to back, without gaps or overlaps", fl, fi.RangeOffset, off)
			case fi.RangeLength == 0 || fi.RangeLength > g.Length-min(off, g.Length):
				fs.fail(p, "%s: range %d+%d is past the object's %d bytes (or empty)", fl, fi.RangeOffset, fi.RangeLength, g.Length)
			}
			off += fi.RangeLength
			checkFileInfo(fs, p, fl, g, fi, strict, md.ResolvedTs)
			if strict {
				k := fileKey{fi.IsMeta, fi.Cf, fi.Type, fi.TableId, fi.RegionId}
				if other, dup := fileKeys[k]; dup {
					fs.fail(p, "%s has the column family, type, table and region of %s: the agent writes one file for them", fl, other)
				}
				fileKeys[k] = fl
			}
		}
		if off != g.Length {
			fs.fail(p, "%s: its files cover %d bytes, the object has %d", gl, off, g.Length)
		}
		if fMin != g.MinTs || fMax != g.MaxTs {
			fs.fail(p, "%s: min/max ts %d/%d, its files give %d/%d", gl, g.MinTs, g.MaxTs, fMin, fMax)
		}
		if fRTS != g.MinResolvedTs {
			fs.fail(p, "%s: min resolved ts %d, its files give %d", gl, g.MinResolvedTs, fRTS)
		}
	}
	if md.MinTs != minTS || md.MaxTs != maxTS {
		fs.fail(p, "min/max ts %d/%d, the groups give %d/%d", md.MinTs, md.MaxTs, minTS, maxTS)
	}
	if len(md.FileGroups) > 0 && md.ResolvedTs < minGroupRTS {
		// TiKV: max(min resolved ts of the groups, the flush's).
		fs.fail(p, "resolved ts %d is below the groups' minimum %d", md.ResolvedTs, minGroupRTS)
	}
	if n.MinTS != md.MinTs || n.MaxTS != md.MaxTs {
		fs.fail(p, "the name says min/max ts %d/%d (tags l/u), the content %d/%d", n.MinTS, n.MaxTS, md.MinTs, md.MaxTs)
	}
	if n.MinBeginTS != minBegin {
		fs.fail(p, "the name says min begin ts %d (tag d), the files give %d", n.MinBeginTS, minBegin)
	}
	if n.HasFlags {
		var want uint64
		if !hasSchema {
			want |= FlagNoMetaFiles
		}
		if len(md.FileGroups) == 0 {
			want |= FlagEmpty
		}
		if n.Flags != want {
			fs.fail(p, "the name says flags %#x (tag p), the content gives %#x", n.Flags, want)
		}
	}
	if strict {
		// The agent's resolved ts is its subscriptions' minimum, frozen
		// before the flush ts was taken, and no lower than the task start;
		// every change it holds committed before the flush ts.
		if md.ResolvedTs > n.FlushTS || md.ResolvedTs < n.TaskStartTS {
			fs.fail(p, "resolved ts %d outside the task start %d .. flush ts %d", md.ResolvedTs, n.TaskStartTS, n.FlushTS)
		}
		if md.MaxTs >= n.FlushTS {
			fs.fail(p, "max ts %d is not below the flush ts %d", md.MaxTs, n.FlushTS)
		}
	}
}

// checkFileInfo checks what one DataFileInfo says on its own.
func checkFileInfo(fs *findings, p, fl string, g *brpb.DataFileGroup, fi *brpb.DataFileInfo, strict bool, resolved uint64) {
	if len(fi.Sha256) != 32 {
		fs.fail(p, "%s: sha256 of %d bytes", fl, len(fi.Sha256))
	}
	if fi.Path != "" && (strict || fi.Path != g.Path) {
		fs.fail(p, "%s: path %q (TiKV leaves it empty; the group names the object)", fl, fi.Path)
	}
	if fi.NumberOfEntries <= 0 || fi.Length == 0 {
		fs.fail(p, "%s: %d entries in %d plain bytes: TiKV writes no empty file", fl, fi.NumberOfEntries, fi.Length)
	}
	if fi.Cf != CFDefault && fi.Cf != CFWrite {
		fs.fail(p, "%s: unknown column family %q", fl, fi.Cf)
	}
	if fi.Type != brpb.FileType_Put && (fi.Type != brpb.FileType_Delete || strict) {
		fs.fail(p, "%s: file type %v", fl, fi.Type)
	}
	if fi.CompressionType != brpb.CompressionType_ZSTD && (fi.CompressionType != brpb.CompressionType_UNKNOWN || strict) {
		fs.add(Finding{Object: p, Err: fmt.Errorf("%s: compression %v is not supported", fl, fi.CompressionType)})
	}
	if fi.FileEncryptionInfo != nil {
		fs.add(Finding{Object: p, Err: fmt.Errorf("%s: encrypted log files are not supported", fl)})
	}
	if fi.MinTs > fi.MaxTs || fi.MinBeginTsInDefaultCf > fi.MinTs {
		fs.fail(p, "%s: min begin ts %d, min ts %d, max ts %d are out of order", fl, fi.MinBeginTsInDefaultCf, fi.MinTs, fi.MaxTs)
	}
	if fi.IsMeta && fi.TableId != 0 {
		fs.fail(p, "%s: table id %d on a schema-meta file (TiKV writes 0)", fl, fi.TableId)
	}
	if fi.RegionId <= 0 {
		fs.fail(p, "%s: region id %d", fl, fi.RegionId)
	}
	if strict {
		if fi.ResolvedTs != resolved {
			fs.fail(p, "%s: resolved ts %d, the flush's %d (the agent gives every file the flush's)", fl, fi.ResolvedTs, resolved)
		}
		if len(fi.RegionEndKey) > 0 && bytes.Compare(fi.RegionStartKey, fi.RegionEndKey) >= 0 {
			fs.fail(p, "%s: region range %x..%x is empty", fl, fi.RegionStartKey, fi.RegionEndKey)
		}
		// Region boundaries are memcomparable-encoded keys (PD's).
		for _, k := range [][]byte{fi.RegionStartKey, fi.RegionEndKey} {
			if len(k) == 0 {
				continue
			}
			if rest, _, err := codec.DecodeBytes(k, nil); err != nil || len(rest) > 0 {
				fs.fail(p, "%s: region key %x is not a memcomparable key", fl, k)
			}
		}
	}
}

// unknownFields reports fields that the decoder kept as unknown anywhere
// in the metadata.
func unknownFields(md *brpb.Metadata) bool {
	if len(md.XXX_unrecognized) > 0 {
		return true
	}
	for _, g := range md.FileGroups {
		if len(g.XXX_unrecognized) > 0 {
			return true
		}
		for _, fi := range g.DataFilesInfo {
			if len(fi.XXX_unrecognized) > 0 {
				return true
			}
			for _, e := range fi.RegionEpoch {
				if e != nil && len(e.XXX_unrecognized) > 0 {
					return true
				}
			}
		}
	}
	return false
}

// fileData is what one checked file contributes.
type fileData struct {
	entries, skipped int64
	defaults         map[string][]byte
	writes           []pendingWrite
}

// pendingWrite is a write record waiting for the end of its metadata file,
// when every default-CF value the flush holds is known.
type pendingWrite struct {
	raw      []byte
	commitTS uint64
	w        Write
	region   int64
	object   string
}

func defaultKey(raw []byte, startTS uint64) string {
	return string(binary.BigEndian.AppendUint64(append(make([]byte, 0, len(raw)+8), raw...), startTS))
}

// checkData decodes one file's entries and checks them against its
// DataFileInfo: entry count, crc64xor, and exactly the key range, ts
// range, min begin ts, schema-ness and table the entries give. For a file
// of the agent (strict) the crc64xor must match even when 0, and every key
// must lie in the file's region.
func checkData(plain []byte, object string, fi *brpb.DataFileInfo, strict bool) (*fileData, error) {
	if fi.Cf != CFDefault && fi.Cf != CFWrite {
		return nil, corrupt("unknown column family %q", fi.Cf)
	}
	d := &fileData{defaults: map[string][]byte{}}
	t := crcTables()
	var crc, minTS, maxTS, minStart uint64
	var minKey, maxKey []byte
	hasStart := false
	var n int64
	for rest := plain; len(rest) > 0; n++ {
		k, v, next, err := NextFrame(rest)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", n, err)
		}
		rest = next
		crc ^= crcUpdate(crcUpdate(0, t, k), t, v)
		if bytes.Compare(k, fi.StartKey) < 0 || bytes.Compare(k, fi.EndKey) > 0 {
			return nil, corrupt("entry %d: key %x outside the file's range %x..%x", n, k, fi.StartKey, fi.EndKey)
		}
		if n == 0 || bytes.Compare(k, minKey) < 0 {
			minKey = k
		}
		if n == 0 || bytes.Compare(k, maxKey) > 0 {
			maxKey = k
		}
		raw, ts, err := DecodeMVCCKey(k)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", n, err)
		}
		if ts < fi.MinTs || ts > fi.MaxTs {
			return nil, corrupt("entry %d: key %x has ts %d outside the file's %d..%d", n, raw, ts, fi.MinTs, fi.MaxTs)
		}
		if n == 0 {
			minTS, maxTS = ts, ts
		}
		minTS, maxTS = min(minTS, ts), max(maxTS, ts)
		if IsMetaKey(raw) != fi.IsMeta {
			return nil, corrupt("entry %d: key %x in a file of is_meta %v", n, raw, fi.IsMeta)
		}
		if !fi.IsMeta && TableID(raw) != fi.TableId {
			return nil, corrupt("entry %d: key %x of table %d in a file of table %d", n, raw, TableID(raw), fi.TableId)
		}
		if strict {
			enc := k[:len(k)-8]
			if bytes.Compare(enc, fi.RegionStartKey) < 0 || len(fi.RegionEndKey) > 0 && bytes.Compare(enc, fi.RegionEndKey) >= 0 {
				return nil, corrupt("entry %d: key %x outside the file's region %x..%x", n, raw, fi.RegionStartKey, fi.RegionEndKey)
			}
		}
		if fi.Type == brpb.FileType_Delete {
			// A raft delete (e.g. GC) removes a version; it is no change
			// and carries no value.
			if len(v) != 0 {
				return nil, corrupt("entry %d: delete of key %x with a %d-byte value", n, raw, len(v))
			}
			d.skipped++
			continue
		}
		if fi.Cf == CFDefault {
			d.defaults[defaultKey(raw, ts)] = bytes.Clone(v)
			continue
		}
		w, err := DecodeWrite(v)
		if err != nil {
			return nil, fmt.Errorf("entry %d: key %x: %w", n, raw, err)
		}
		if w.StartTS > ts {
			return nil, corrupt("entry %d: key %x committed at %d starts later, at %d", n, raw, ts, w.StartTS)
		}
		if w.StartTS < fi.MinBeginTsInDefaultCf {
			return nil, corrupt("entry %d: key %x starts at %d, before the file's min begin ts %d", n, raw, w.StartTS, fi.MinBeginTsInDefaultCf)
		}
		if !hasStart || w.StartTS < minStart {
			minStart, hasStart = w.StartTS, true
		}
		if w.Type != WritePut && w.Type != WriteDelete {
			d.skipped++ // locks and rollbacks change no value
			continue
		}
		if w.HasShort {
			w.ShortValue = bytes.Clone(w.ShortValue) // plain goes away
		}
		d.writes = append(d.writes, pendingWrite{raw: raw, commitTS: ts, w: w, region: fi.RegionId, object: object})
	}
	d.entries = n
	var errs []error
	if n != fi.NumberOfEntries {
		errs = append(errs, corrupt("%d entries, metadata says %d", n, fi.NumberOfEntries))
	}
	// Older TiKV left crc64xor empty; the agent always sets it.
	if (strict || fi.Crc64Xor != 0) && crc != fi.Crc64Xor {
		errs = append(errs, corrupt("crc64xor %016x, metadata says %016x", crc, fi.Crc64Xor))
	}
	if !bytes.Equal(minKey, fi.StartKey) || !bytes.Equal(maxKey, fi.EndKey) {
		errs = append(errs, corrupt("keys %x..%x, metadata says %x..%x", minKey, maxKey, fi.StartKey, fi.EndKey))
	}
	if minTS != fi.MinTs || maxTS != fi.MaxTs {
		errs = append(errs, corrupt("ts %d..%d, metadata says %d..%d", minTS, maxTS, fi.MinTs, fi.MaxTs))
	}
	// TiKV: the smallest start ts of the write records, else (default CF,
	// and deletes, whose values are empty) min ts.
	want := minTS
	if hasStart {
		want = minStart
	}
	if fi.MinBeginTsInDefaultCf != want {
		errs = append(errs, corrupt("min begin ts %d, the entries give %d", fi.MinBeginTsInDefaultCf, want))
	}
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = strings.TrimPrefix(e.Error(), ErrCorrupt.Error()+": ")
		}
		return nil, corrupt("%s", strings.Join(msgs, "; "))
	}
	return d, nil
}
