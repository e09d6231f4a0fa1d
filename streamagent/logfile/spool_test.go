package logfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"logbackup/storage"
)

// pinnedFlush is a flush of many files over several objects (a 64 KiB
// limit), part of it spilled, compressed on two goroutines.
func pinnedFlush(t testing.TB, dir string) *Flush {
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	b := NewBuilder(BuilderConfig{StoreID: 4, FileSizeLimit: 64 << 10, NewID: seqIDs(), SpillDir: dir, Concurrency: 2})
	for i, c := range randomChanges(rand.New(rand.NewSource(99)), 1500, base) {
		if err := b.Add(RegionInfo{ID: uint64(1 + i%5)}, c); err != nil {
			t.Fatal(err)
		}
		if i == 700 {
			if err := b.Spill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	f, err := b.Finish(base+99999, base+99998)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestObjectBytesPinned: streaming the data objects from temp files
// stores exactly the bytes the in-memory builder did (the digests were
// taken from it at commit 9425cee), for the golden flush and for
// one of many multi-file objects, spilled and compressed in parallel.
// The second's object digest changed once since, when the zstd window
// went from 8 MiB to 1 MiB (TestFrameWindow): only the frame headers'
// window descriptors differ; its meta file, which records every file's
// compressed length, did not change.
func TestObjectBytesPinned(t *testing.T) {
	g, _ := goldenFlush(t)
	p := pinnedFlush(t, t.TempDir())
	for i, c := range []struct {
		f             *Flush
		objects, meta string
		n             int
	}{
		{g, "a333ac6ab693a7e1f9bc648d60930ce1c584896542726d08083acfa11dd7eafb", "294a990974acb4f26d19de5667ccabd1897fdfb28dab3bbc54117bda81027f84", 2},
		{p, "f3062d53919b4453655fc4a44a5d3484635c1f0f07dcf127778371cd1de1ef91", "474afbf3ea181a2b71c24b111efe375d98daa3ec15796db2b06f2554fa4ce14b", 13},
	} {
		h := sha256.New()
		for _, o := range c.f.Data {
			h.Write([]byte(o.Name))
			h.Write(mustBytes(o))
		}
		if got := fmt.Sprintf("%x", h.Sum(nil)); len(c.f.Data) != c.n || got != c.objects {
			t.Fatalf("flush %d: %d objects digest %s; want %d, %s", i, len(c.f.Data), got, c.n, c.objects)
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(c.f.Meta.Data)); got != c.meta {
			t.Fatalf("flush %d: meta digest %s, want %s", i, got, c.meta)
		}
		if err := c.f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// openTempFiles counts this process's open files in dir: the flush's
// temp files are unlinked, so only /proc shows them.
func openTempFiles(t *testing.T, dir string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(target, dir+string(filepath.Separator)) {
			n++
		}
	}
	return n
}

// TestFlushTempFiles: a flush's data objects live in temp files that
// never show in the directory (unlinked at once, so a crash leaves none)
// and are closed by Flush.Close; a retried Finish gets files of its own,
// and opening a closed flush's object is an error, not a panic.
func TestFlushTempFiles(t *testing.T) {
	dir := t.TempDir()
	base := tso(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	b := NewBuilder(BuilderConfig{StoreID: 1, FileSizeLimit: 64 << 10, SpillDir: dir, Concurrency: 2})
	for i, c := range randomChanges(rand.New(rand.NewSource(5)), 800, base) {
		b.Add(RegionInfo{ID: uint64(1 + i%3)}, c)
	}
	if n := openTempFiles(t, dir); n != 0 {
		t.Fatalf("%d files open before Finish", n)
	}
	first, err := b.Finish(base+9999, base+9998)
	if err != nil {
		t.Fatal(err)
	}
	opened := openTempFiles(t, dir)
	if opened < 1 || opened > 2 {
		t.Fatalf("%d temp files open for a flush compressed on 2 goroutines", opened)
	}
	again, err := b.Finish(base+10000, base+9998) // a failed upload's retry
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("temp files in the directory: %v", entries)
	}
	if n := openTempFiles(t, dir); n != 2*opened {
		t.Fatalf("%d temp files open for two flushes, want %d", n, 2*opened)
	}
	// The builder is closed; both flushes still read, alike.
	for i := range first.Data {
		if !bytes.Equal(mustBytes(first.Data[i]), mustBytes(again.Data[i])) {
			t.Fatalf("object %d differs between the two Finish calls", i)
		}
	}
	for _, f := range []*Flush{first, again} {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	if n := openTempFiles(t, dir); n != 0 {
		t.Fatalf("%d temp files still open after Close", n)
	}
	if _, err := first.Data[0].Open(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("open after Close: %v", err)
	}
	// Nothing to compress: no temp file at all.
	empty := NewBuilder(BuilderConfig{StoreID: 1, SpillDir: dir})
	f, err := empty.Finish(1, 1)
	if err != nil || len(f.Data) != 0 || openTempFiles(t, dir) != 0 {
		t.Fatalf("empty flush: %v, %d objects, %d files", err, len(f.Data), openTempFiles(t, dir))
	}
}

// TestFlushTempFileCorrupt: a data object whose temp file was damaged on
// disk after compression fails its upload with ErrSpillCorrupt, and the
// storage keeps no object.
func TestFlushTempFileCorrupt(t *testing.T) {
	ctx := context.Background()
	f := pinnedFlush(t, t.TempDir())
	defer f.Close()
	o := f.Data[len(f.Data)/2]
	last := o.parts[len(o.parts)-1]
	if _, err := last.f.f.WriteAt([]byte{0xde, 0xad}, last.off+last.n/2); err != nil {
		t.Fatal(err)
	}
	st, err := storage.OpenURL(ctx, "local://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	err = st.WriteFrom(ctx, o.Name, o.Size, o.Open)
	if !errors.Is(err, ErrSpillCorrupt) {
		t.Fatalf("upload of a damaged object: %v", err)
	}
	if ok, err := st.Exists(ctx, o.Name); ok || err != nil {
		t.Fatalf("the damaged object was stored (%v)", err)
	}
	if _, err := o.Bytes(); !errors.Is(err, ErrSpillCorrupt) {
		t.Fatalf("Bytes of a damaged object: %v", err)
	}
	// The other objects are intact.
	for _, other := range f.Data {
		if other.Name != o.Name {
			if err := st.WriteFrom(ctx, other.Name, other.Size, other.Open); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFinishTempDirUnwritable: a spill dir that cannot take the flush's
// temp file fails Finish with ErrTempWrite and leaves the builder whole,
// so Finish succeeds once the directory is back.
func TestFinishTempDirUnwritable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spill")
	b := NewBuilder(BuilderConfig{StoreID: 1, SpillDir: dir})
	defer b.Close()
	for _, c := range randomChanges(rand.New(rand.NewSource(8)), 50, 1000) {
		b.Add(RegionInfo{ID: 1}, c)
	}
	if _, err := b.Finish(5000, 4000); !errors.Is(err, ErrTempWrite) {
		t.Fatalf("Finish into a missing directory: %v", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := b.Finish(5001, 4000)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st := newMapReader()
	st.upload(f)
	if got, _ := walkAll(t, st); len(got) != 50 {
		t.Fatalf("%d changes back of 50", len(got))
	}
}

// TestObjectReaderStopsAtSize: the reader gives exactly Size bytes, then
// io.EOF, in any read size.
func TestObjectReaderStopsAtSize(t *testing.T) {
	f := pinnedFlush(t, t.TempDir())
	defer f.Close()
	for _, o := range f.Data {
		want := mustBytes(o)
		r, err := o.Open()
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, 777)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if int64(len(got)) != o.Size || !bytes.Equal(got, want) {
			t.Fatalf("%s: read %d bytes in 777-byte reads, want %d", o.Name, len(got), o.Size)
		}
	}
}
