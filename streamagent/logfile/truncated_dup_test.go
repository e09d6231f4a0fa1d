package logfile

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// twoGroupFlush is one flush of store 3 with a data group and a
// schema-meta group.
func twoGroupFlush(t *testing.T, flushTS uint64, value string, base uint64, newID func() string) *Flush {
	t.Helper()
	b := NewBuilder(BuilderConfig{StoreID: 3, NewID: newID})
	for i := int64(0); i < 3; i++ {
		if err := b.Add(RegionInfo{ID: 1}, Change{Key: tableKey(1, i), Value: []byte(value), StartTS: base + uint64(2*i), CommitTS: base + 1 + uint64(2*i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Add(RegionInfo{ID: 2}, Change{Key: []byte("mDB:1\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00h"), Value: []byte(`{"id":1}`), StartTS: base + 10, CommitTS: base + 11}); err != nil {
		t.Fatal(err)
	}
	f, err := b.Finish(flushTS, flushTS-1)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Metadata.FileGroups) != 2 {
		t.Fatalf("%d groups, want a data and a schema-meta group", len(f.Metadata.FileGroups))
	}
	return f
}

// TestInterruptedTruncateRewrite: a truncate crashed between writing a
// rewritten meta file (under the name its content gives) and deleting the
// original leaves two meta files of one store with one flush ts, the
// rewrite listing a subset of the original's groups. The storage still
// decodes, every change once, with a warning naming the rewrite. (Failed
// before: "flush ts must grow" made the storage undecodable — seen in
// TestTruncateCrashAndRerun.) Two unrelated meta files with one flush ts
// still fail.
func TestInterruptedTruncateRewrite(t *testing.T) {
	ctx := context.Background()
	f := twoGroupFlush(t, 1000, "v", 100, seqIDs())
	r := newMapReader()
	r.upload(f)
	md := *f.Metadata
	md.FileGroups = md.FileGroups[:1]
	g := md.FileGroups[0]
	md.MinTs, md.MaxTs, md.ResolvedTs = g.MinTs, g.MaxTs, g.MinResolvedTs // as truncate recomputes them
	raw, err := md.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rewritten := NameFor(f.Name, &md, raw).Format()
	if rewritten == f.Meta.Name {
		t.Fatal("the rewrite kept the name; the test needs two meta files")
	}
	r.put(Object{Name: rewritten, Data: raw})

	res, err := Audit(ctx, r, func(Decoded) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	warned := false
	for _, fd := range res.Findings {
		if !fd.Warning {
			t.Fatalf("a problem: %s: %v", fd.Object, fd.Err)
		}
		warned = warned || fd.Object == rewritten && strings.Contains(fd.Err.Error(), "truncate")
	}
	if !warned {
		t.Fatalf("no warning names the rewrite: %+v", res.Findings)
	}
	if res.Changes != 4 || res.MetaFiles != 1 {
		t.Fatalf("%d changes from %d meta files, want the original's 4 from 1", res.Changes, res.MetaFiles)
	}

	n := 0
	other := twoGroupFlush(t, 1000, "w", 200, func() string { n++; return fmt.Sprintf("00000000-0000-4000-8000-9000000000%02d", n) })
	r2 := newMapReader()
	r2.upload(f)
	r2.upload(other)
	if _, err := Walk(ctx, r2, func(Decoded) error { return nil }); err == nil || !strings.Contains(err.Error(), "flush ts must grow") {
		t.Fatalf("two unrelated flushes with one flush ts: %v", err)
	}
}
