package logfile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/storage"
)

// Decoded is one committed change read back from storage.
type Decoded struct {
	Change
	RegionID int64
	Meta     string // the metadata file that lists it
	Object   string // the data object holding its write record
}

// Summary describes what Walk or Audit read.
type Summary struct {
	MetaFiles, DataObjects, DataFiles int
	Entries                           int64 // KV entries in all files
	// Skipped counts entries that are no change of a value: lock and
	// rollback records, and entries of Delete-type files.
	Skipped int64
	Changes int // joined changes (puts and deletes)
	// MinTS and MaxTS bound the commit ts of the changes.
	MinTS, MaxTS uint64
	// MinResolvedTS and MaxResolvedTS bound the resolved ts the metadata
	// files declare: a flush's resolved ts promises its store's data up
	// to it is listed by that file or an earlier one.
	MinResolvedTS, MaxResolvedTS uint64
}

// AuditResult is what Audit found.
type AuditResult struct {
	Summary
	// Metas are the meta files whose names parse, in flush order (flush
	// ts, store, path); Metadata is nil where the body could not be read
	// or decoded.
	Metas []*MetaFile
	// Findings say what is wrong, or for warnings unprovable, each naming
	// its object, in the order found.
	Findings []Finding
	// Listed holds every data object a meta file lists.
	Listed map[string]bool
}

// Failed reports whether any finding is a failure.
func (r *AuditResult) Failed() bool {
	for _, f := range r.Findings {
		if !f.Warning {
			return true
		}
	}
	return false
}

type auditOptions struct {
	// stopAtFailure ends the audit at the first failure (Walk).
	stopAtFailure bool
	// maxPlain bounds a file's plain bytes; 0 means maxPlainFile.
	maxPlain uint64
	// ignoreChecksum skips the h tag, for tests that measure what the
	// other checks catch on their own.
	ignoreChecksum bool
}

// errStop ends an audit at its first failure.
var errStop = errors.New("stop at the first failure")

// Audit reads back everything the metadata files of a log backup storage
// list, as `br stream verify` does, and checks every field: each meta file
// against its name and itself (checkMeta), each data object's length and
// layout, each file's zstd frame, length and sha256, and its entries
// against what the meta file says of them (checkData). Damage never stops
// it: each problem becomes a Finding naming the object, and a flush with
// any failure hands out none of its changes. fn gets the committed changes
// of the intact flushes, in flush order; its error ends the audit. err is
// for failures to read the storage and fn's errors, never for damage.
func Audit(ctx context.Context, r Reader, fn func(Decoded) error) (*AuditResult, error) {
	return audit(ctx, r, auditOptions{}, fn)
}

// Walk is Audit that ends at the first failure and returns it as an error
// naming the object (ErrCorrupt for damage); warnings do not stop it. It
// is the oracle of the no-loss tests.
func Walk(ctx context.Context, r Reader, fn func(Decoded) error) (Summary, error) {
	res, err := audit(ctx, r, auditOptions{stopAtFailure: true}, fn)
	if err != nil {
		return res.Summary, err
	}
	for _, f := range res.Findings {
		if !f.Warning {
			return res.Summary, fmt.Errorf("%s: %w", f.Object, f.Err)
		}
	}
	return res.Summary, nil
}

func audit(ctx context.Context, r Reader, o auditOptions, fn func(Decoded) error) (*AuditResult, error) {
	res := &AuditResult{Listed: map[string]bool{}}
	fs := &findings{}
	defer func() { res.Findings = fs.list }()
	err := r.List(ctx, MetaDir, func(obj storage.ObjectInfo) error {
		if !strings.HasSuffix(obj.Name, metaSuffix) {
			fs.warn(obj.Name, "not a meta file: restore ignores it")
			return nil
		}
		name, err := ParseMetaName(obj.Name)
		if err != nil {
			fs.fail(obj.Name, "%v", err)
			return nil
		}
		res.Metas = append(res.Metas, &MetaFile{Path: obj.Name, Name: name})
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("list %s: %w", MetaDir, err)
	}
	sort.Slice(res.Metas, func(i, j int) bool {
		a, b := res.Metas[i].Name, res.Metas[j].Name
		if a.FlushTS != b.FlushTS {
			return a.FlushTS < b.FlushTS
		}
		if a.StoreID != b.StoreID {
			return a.StoreID < b.StoreID
		}
		return res.Metas[i].Path < res.Metas[j].Path
	})
	res.MetaFiles = len(res.Metas)
	if o.stopAtFailure && fs.failed > 0 {
		return res, nil
	}

	// Every meta file on its own, then against each other.
	damaged := map[*MetaFile]bool{}
	type flushID struct{ store, flushTS uint64 }
	flushes := map[flushID]*MetaFile{}
	superseded := map[*MetaFile]bool{}
	owner := map[string]string{} // data object → the meta file listing it
	for _, mf := range res.Metas {
		before := fs.failed
		raw, err := r.ReadFile(ctx, mf.Path)
		switch {
		case errors.Is(err, storage.ErrNotExist):
			fs.fail(mf.Path, "listed, then gone: deleted while verifying?")
			continue
		case err != nil:
			return res, fmt.Errorf("read %s: %w", mf.Path, err)
		}
		md, err := DecodeMetadata(raw)
		if err != nil {
			fs.add(Finding{Object: mf.Path, Err: err})
			continue
		}
		mf.Metadata = md
		checkMeta(fs, mf, raw, o.ignoreChecksum)
		if !mf.Name.Legacy {
			id := flushID{mf.Name.StoreID, mf.Name.FlushTS}
			if other, dup := flushes[id]; dup {
				// A truncate writes a rewritten meta file under its new
				// name before deleting the old one: a crash in between
				// leaves both, one listing a subset of the other's groups.
				// The fuller one is read; the other is a warning.
				switch {
				case other.Metadata != nil && groupsWithin(md, other.Metadata):
					superseded[mf] = true
					fs.warn(mf.Path, "a truncate's rewrite of %s, which is still there (a truncate was interrupted: run it again)", other.Path)
					continue
				case other.Metadata != nil && groupsWithin(other.Metadata, md):
					superseded[other] = true
					fs.warn(other.Path, "a truncate's rewrite of %s, which is still there (a truncate was interrupted: run it again)", mf.Path)
					for _, g := range other.Metadata.FileGroups {
						delete(owner, g.Path)
					}
				default:
					fs.fail(mf.Path, "store %d's flush ts %d is also that of %s: flush ts must grow", id.store, id.flushTS, other.Path)
				}
			}
			flushes[id] = mf
		}
		for _, g := range md.FileGroups {
			if other, dup := owner[g.Path]; dup && other != mf.Path {
				fs.fail(mf.Path, "lists %s, which %s lists too: objects are never shared", g.Path, other)
			}
			owner[g.Path] = mf.Path
			res.Listed[g.Path] = true
		}
		damaged[mf] = fs.failed > before
		if o.stopAtFailure && fs.failed > 0 {
			return res, nil
		}
	}

	if len(superseded) > 0 {
		res.Metas = slices.DeleteFunc(res.Metas, func(mf *MetaFile) bool { return superseded[mf] })
		res.MetaFiles = len(res.Metas)
	}

	maxPlain := o.maxPlain
	if maxPlain == 0 {
		maxPlain = maxPlainFile
	}
	dec, err := newDecoder(maxPlain)
	if err != nil {
		return res, err
	}
	defer dec.Close()
	// Long values by raw key and start ts. Kept for the whole audit: a
	// value is written once at prewrite and may serve a commit listed by a
	// later flush.
	defaults := map[string][]byte{}
	first := true
	for _, mf := range res.Metas {
		md := mf.Metadata
		if md == nil {
			continue
		}
		if first {
			res.MinResolvedTS, first = md.ResolvedTs, false
		}
		res.MinResolvedTS = min(res.MinResolvedTS, md.ResolvedTs)
		res.MaxResolvedTS = max(res.MaxResolvedTS, md.ResolvedTs)
		before := fs.failed
		writes, err := auditData(ctx, r, fs, dec, mf, defaults, &res.Summary, o.stopAtFailure)
		if err != nil {
			if errors.Is(err, errStop) {
				return res, nil
			}
			return res, err
		}
		// Join first, hand out after: a flush with any damage yields
		// nothing rather than a part.
		changes := make([]Decoded, 0, len(writes))
		for _, pw := range writes {
			c := Change{Key: pw.raw, StartTS: pw.w.StartTS, CommitTS: pw.commitTS, Op: OpPut}
			switch {
			case pw.w.Type == WriteDelete:
				c.Op = OpDelete
			case pw.w.HasShort:
				c.Value = pw.w.ShortValue
			default:
				v, ok := defaults[defaultKey(pw.raw, pw.w.StartTS)]
				if !ok {
					fs.fail(pw.object, "key %x committed at %d (listed by %s) has no default-cf value (start ts %d) in this or an earlier flush",
						pw.raw, pw.commitTS, mf.Path, pw.w.StartTS)
					continue
				}
				c.Value = v
			}
			changes = append(changes, Decoded{Change: c, RegionID: pw.region, Meta: mf.Path, Object: pw.object})
		}
		if fs.failed > before || damaged[mf] {
			if o.stopAtFailure {
				return res, nil
			}
			continue
		}
		for _, d := range changes {
			if res.Changes == 0 || d.CommitTS < res.MinTS {
				res.MinTS = d.CommitTS
			}
			res.MaxTS = max(res.MaxTS, d.CommitTS)
			res.Changes++
			if err := fn(d); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

// auditData reads and checks the data objects one meta file lists and
// returns its write records. Default-CF values go to defaults.
func auditData(ctx context.Context, r Reader, fs *findings, dec *Decoder, mf *MetaFile, defaults map[string][]byte, sum *Summary, stopAtFailure bool) ([]pendingWrite, error) {
	strict := ours(mf.Name)
	var writes []pendingWrite
	stop := func() bool { return stopAtFailure && fs.failed > 0 }
	for _, g := range mf.Metadata.FileGroups {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, err := ParseDataName(g.Path); err != nil {
			continue // checkMeta said so; not a name to ask storage for
		}
		obj, err := r.ReadFile(ctx, g.Path)
		switch {
		case errors.Is(err, storage.ErrNotExist):
			fs.fail(g.Path, "missing: listed by %s", mf.Path)
			if stop() {
				return nil, errStop
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("read %s (listed by %s): %w", g.Path, mf.Path, err)
		}
		sum.DataObjects++
		if uint64(len(obj)) != g.Length {
			fs.fail(g.Path, "is %d bytes, %s says %d", len(obj), mf.Path, g.Length)
			if stop() {
				return nil, errStop
			}
			continue
		}
		for _, fi := range g.DataFilesInfo {
			sum.DataFiles++
			if fi.RangeOffset > uint64(len(obj)) || fi.RangeLength > uint64(len(obj))-fi.RangeOffset {
				fs.fail(g.Path, "range %d+%d (listed by %s) is past its %d bytes", fi.RangeOffset, fi.RangeLength, mf.Path, len(obj))
				if stop() {
					return nil, errStop
				}
				continue
			}
			plain, err := dec.Plain(obj[fi.RangeOffset:fi.RangeOffset+fi.RangeLength], fi)
			if err == nil {
				var d *fileData
				if d, err = checkData(plain, g.Path, fi, strict); err == nil {
					sum.Entries += d.entries
					sum.Skipped += d.skipped
					for k, v := range d.defaults {
						defaults[k] = v
					}
					writes = append(writes, d.writes...)
					continue
				}
			}
			fs.add(Finding{Object: g.Path, Err: fmt.Errorf("file at %d (listed by %s): %w", fi.RangeOffset, mf.Path, err)})
			if stop() {
				return nil, errStop
			}
		}
	}
	return writes, nil
}

// groupsWithin reports whether every data object a lists, b lists too.
func groupsWithin(a, b *brpb.Metadata) bool {
	in := make(map[string]bool, len(b.FileGroups))
	for _, g := range b.FileGroups {
		in[g.Path] = true
	}
	for _, g := range a.FileGroups {
		if !in[g.Path] {
			return false
		}
	}
	return true
}
