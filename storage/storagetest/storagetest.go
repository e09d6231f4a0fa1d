// Package storagetest is one conformance suite that every storage backend
// must pass, run against real backends (local files, memory, S3 on
// loopback). Each case gets a fresh, empty storage from open.
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/gcerrors"

	"logbackup/storage"
)

// Run runs the suite; open must return an empty storage for each call.
func Run(t *testing.T, open func(t *testing.T) storage.Storage) {
	cases := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, s storage.Storage)
	}{
		{"WriteRead", testWriteRead},
		{"Overwrite", testOverwrite},
		{"Missing", testMissing},
		{"ReadRange", testReadRange},
		{"ListOrderAndPrefix", testList},
		{"Delete", testDelete},
		{"Multipart", testMultipart},
		{"ConcurrentWriters", testConcurrentWriters},
		{"ReadersSeeWholeObjects", testAtomicOverwrite},
		{"BadNames", testBadNames},
		{"CheckWritable", testCheckWritable},
		{"Close", testClose},
		{"Stream", testStream},
		{"StreamSourceFails", testStreamSourceFails},
		{"StreamRetried", testStreamRetried},
		{"StreamWrongLength", testStreamWrongLength},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Generous: a 12 MiB upload under -race on a busy machine.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			s := open(t)
			defer s.Close()
			c.fn(t, ctx, s)
		})
	}
}

func testWriteRead(t *testing.T, ctx context.Context, s storage.Storage) {
	for name, data := range map[string]string{
		"top":                                 "hello",
		"a/b/c/d/e/deep.log":                  "nested dirs are created",
		"v1/backupmeta/0000000000000001.meta": "\x00\x01binary\xff",
		"dir with space/ü-ñ+x=1&y.log":        "odd characters",
	} {
		mustWrite(t, ctx, s, name, []byte(data))
		got, err := s.ReadFile(ctx, name)
		if err != nil || string(got) != data {
			t.Fatalf("read back %s: %q, %v; want %q", name, got, err, data)
		}
		if ok, err := s.Exists(ctx, name); !ok || err != nil {
			t.Fatalf("Exists(%s) = %v, %v after write", name, ok, err)
		}
	}
	// A "directory" is not an object on any backend.
	if ok, err := s.Exists(ctx, "a/b"); ok || err != nil {
		t.Fatalf("Exists of a directory: %v, %v", ok, err)
	}
	if _, err := s.ReadFile(ctx, "a/b"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("ReadFile of a directory: %v", err)
	}
	if _, err := s.ReadRange(ctx, "a/b", 0, 1); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("ReadRange of a directory: %v", err)
	}
	if err := s.Delete(ctx, "a/b"); err != nil {
		t.Fatalf("Delete of a directory: %v", err)
	}
	if got, err := s.ReadFile(ctx, "a/b/c/d/e/deep.log"); err != nil || len(got) == 0 {
		t.Fatalf("Delete of a directory removed what is in it: %v", err)
	}
	mustWrite(t, ctx, s, "empty", nil)
	if got, err := s.ReadFile(ctx, "empty"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty object: %q (nil %v), %v", got, got == nil, err)
	}
	if got := list(t, ctx, s, "dir with space/"); got != "dir with space/ü-ñ+x=1&y.log" {
		t.Fatalf("odd name listed as %q", got)
	}
}

func testOverwrite(t *testing.T, ctx context.Context, s storage.Storage) {
	for _, v := range []string{"one", "a much longer second value", "3"} {
		mustWrite(t, ctx, s, "x", []byte(v))
		if got, err := s.ReadFile(ctx, "x"); err != nil || string(got) != v {
			t.Fatalf("after overwrite with %q: %q, %v", v, got, err)
		}
	}
	if got := list(t, ctx, s, ""); got != "x" {
		t.Fatalf("overwrites left %q", got)
	}
}

func testMissing(t *testing.T, ctx context.Context, s storage.Storage) {
	_, err := s.ReadFile(ctx, "nope/missing")
	if !errors.Is(err, storage.ErrNotExist) || gcerrors.Code(err) != gcerrors.NotFound {
		t.Fatalf("ReadFile missing: %v (code %v)", err, gcerrors.Code(err))
	}
	if !strings.Contains(err.Error(), "nope/missing") {
		t.Fatalf("error does not name the object: %v", err)
	}
	if _, err := s.ReadRange(ctx, "nope", 0, 1); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("ReadRange missing: %v", err)
	}
	if _, err := s.ReadRange(ctx, "nope", 5, 0); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("ReadRange missing, length 0: %v", err)
	}
	if ok, err := s.Exists(ctx, "nope"); ok || err != nil {
		t.Fatalf("Exists missing: %v %v", ok, err)
	}
	n := 0
	if err := s.List(ctx, "nope/", func(storage.ObjectInfo) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("List of nothing: %d objects, %v", n, err)
	}
}

func testReadRange(t *testing.T, ctx context.Context, s storage.Storage) {
	mustWrite(t, ctx, s, "r", []byte("0123456789"))
	mustWrite(t, ctx, s, "e", nil)
	for _, c := range []struct {
		name   string
		off, n int64
		want   string
	}{
		{"r", 0, 3, "012"}, {"r", 4, 2, "45"}, {"r", 9, 1, "9"}, {"r", 0, 10, "0123456789"},
		{"r", 8, 10, "89"}, // crosses the end: fewer bytes
		{"r", 10, 5, ""},   // starts at the end
		{"r", 25, 5, ""},   // starts past the end
		{"r", 3, 0, ""},    // nothing asked
		{"e", 0, 4, ""},    // empty object
	} {
		got, err := s.ReadRange(ctx, c.name, c.off, c.n)
		if err != nil || string(got) != c.want {
			t.Fatalf("ReadRange(%s, %d, %d) = %q, %v; want %q", c.name, c.off, c.n, got, err, c.want)
		}
	}
	for _, bad := range [][2]int64{{-1, 2}, {0, -1}} {
		if _, err := s.ReadRange(ctx, "r", bad[0], bad[1]); err == nil {
			t.Fatalf("ReadRange(%d, %d) accepted", bad[0], bad[1])
		}
	}
}

func testList(t *testing.T, ctx context.Context, s storage.Storage) {
	// "a.b" sorts before "a/x" ('.' < '/') although a directory walk meets
	// "a/" first; "ab" must not leak into "a/".
	for _, n := range []string{"v1/b/2.log", "v1/a/1.log", "v1/a/0.log", "ab", "a/x", "a.b", "a-c", "v1x", "v1/a.meta"} {
		mustWrite(t, ctx, s, n, []byte(n))
	}
	if got := list(t, ctx, s, ""); got != "a-c a.b a/x ab v1/a.meta v1/a/0.log v1/a/1.log v1/b/2.log v1x" {
		t.Fatalf("List(\"\") not in lexical order: %s", got)
	}
	if got := list(t, ctx, s, "v1/"); got != "v1/a.meta v1/a/0.log v1/a/1.log v1/b/2.log" {
		t.Fatalf("List(v1/) = %s", got)
	}
	if got := list(t, ctx, s, "a/"); got != "a/x" {
		t.Fatalf("List(a/) must hold a/x only: %s", got)
	}
	if got := list(t, ctx, s, "v1/a/0"); got != "v1/a/0.log" {
		t.Fatalf("List of a partial name: %s", got)
	}
	stop := errors.New("stop")
	n := 0
	if err := s.List(ctx, "", func(storage.ObjectInfo) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("fn error did not stop the listing as is: %v after %d calls", err, n)
	}
	var size int64 = -1
	if err := s.List(ctx, "v1/a/0", func(o storage.ObjectInfo) error { size = o.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	if size != int64(len("v1/a/0.log")) {
		t.Fatalf("listed size %d", size)
	}
}

func testDelete(t *testing.T, ctx context.Context, s storage.Storage) {
	mustWrite(t, ctx, s, "d/one", []byte("x"))
	mustWrite(t, ctx, s, "d/two", []byte("y"))
	if err := s.Delete(ctx, "d/one"); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Exists(ctx, "d/one"); ok || err != nil {
		t.Fatalf("Exists after Delete: %v, %v", ok, err)
	}
	if _, err := s.ReadFile(ctx, "d/one"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("read after Delete: %v", err)
	}
	if err := s.Delete(ctx, "d/one"); err != nil {
		t.Fatalf("Delete of a deleted object: %v", err)
	}
	if err := s.Delete(ctx, "never/written"); err != nil {
		t.Fatalf("Delete of a never-written object: %v", err)
	}
	if got := list(t, ctx, s, ""); got != "d/two" {
		t.Fatalf("after Delete, List = %q", got)
	}
}

func testMultipart(t *testing.T, ctx context.Context, s storage.Storage) {
	// Over the S3 transfer manager's 16 MiB multipart threshold (8 MiB
	// parts), so the upload really is in parts.
	big := make([]byte, 16<<20+12345)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, ctx, s, "big/object.log", big)
	got, err := s.ReadFile(ctx, "big/object.log")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("16 MiB object differs (len %d of %d, %v)", len(got), len(big), err)
	}
	part, err := s.ReadRange(ctx, "big/object.log", 5<<20-7, 6<<20)
	if err != nil || !bytes.Equal(part, big[5<<20-7:11<<20-7]) {
		t.Fatalf("range across parts differs: len %d, %v", len(part), err)
	}
	var size int64
	if err := s.List(ctx, "big/", func(o storage.ObjectInfo) error { size = o.Size; return nil }); err != nil || size != int64(len(big)) {
		t.Fatalf("listed size %d, %v", size, err)
	}
}

func testConcurrentWriters(t *testing.T, ctx context.Context, s storage.Storage) {
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := s.WriteFile(ctx, fmt.Sprintf("c/%02d", i), bytes.Repeat([]byte{byte(i)}, 1000+i)); err != nil {
				t.Error(err)
			}
		}()
		go func() { // everyone also writes one shared name
			defer wg.Done()
			if err := s.WriteFile(ctx, "shared", bytes.Repeat([]byte{byte(i)}, 4096)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	i := 0
	if err := s.List(ctx, "c/", func(o storage.ObjectInfo) error {
		if o.Name != fmt.Sprintf("c/%02d", i) || o.Size != int64(1000+i) {
			t.Errorf("object %d is %s with size %d", i, o.Name, o.Size)
		}
		i++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if i != n {
		t.Fatalf("listed %d of %d", i, n)
	}
	got, err := s.ReadFile(ctx, "shared")
	if err != nil || len(got) != 4096 || !bytes.Equal(got, bytes.Repeat(got[:1], 4096)) {
		t.Fatalf("shared object is not one writer's whole value: len %d, %v", len(got), err)
	}
}

// testAtomicOverwrite reads an object while it is being overwritten:
// every read must be one version, whole.
func testAtomicOverwrite(t *testing.T, ctx context.Context, s storage.Storage) {
	const size = 256 << 10
	version := func(v byte) []byte { return bytes.Repeat([]byte{v}, size) }
	mustWrite(t, ctx, s, "hot", version(0))
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	// A failed read below must not end the test while the writer still
	// runs (and reports).
	defer wg.Wait()
	go func() {
		defer wg.Done()
		defer close(done)
		for v := byte(1); v <= 10; v++ {
			if err := s.WriteFile(ctx, "hot", version(v)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	reads := 0
	for {
		select {
		case <-done:
			wg.Wait()
			if reads == 0 {
				t.Log("writer finished before the first read")
			}
			return
		default:
		}
		got, err := s.ReadFile(ctx, "hot")
		if err != nil {
			t.Fatalf("read during overwrite: %v", err)
		}
		if len(got) != size || !bytes.Equal(got, version(got[0])) {
			t.Fatalf("read a torn object: len %d", len(got))
		}
		reads++
	}
}

func testBadNames(t *testing.T, ctx context.Context, s storage.Storage) {
	for _, n := range []string{"", "/abs", "a/../b", "..", "a//b", "a/", "./a", "bad\x00nul", "bad\xffutf8"} {
		if err := s.WriteFile(ctx, n, []byte("x")); err == nil {
			t.Errorf("WriteFile accepted name %q", n)
		}
		if _, err := s.ReadFile(ctx, n); err == nil || errors.Is(err, storage.ErrNotExist) {
			t.Errorf("ReadFile of name %q: %v, want a name error", n, err)
		}
	}
	if got := list(t, ctx, s, ""); got != "" {
		t.Fatalf("bad names left objects: %s", got)
	}
	for _, p := range []string{"../", "/abs/", "a/../", "a//", "bad\x00/"} {
		if err := s.List(ctx, p, func(storage.ObjectInfo) error { return nil }); err == nil {
			t.Errorf("List accepted prefix %q", p)
		}
	}
}

func testCheckWritable(t *testing.T, ctx context.Context, s storage.Storage) {
	var wg sync.WaitGroup
	for range 4 { // agents probing the same storage at once
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := storage.CheckWritable(ctx, s); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := list(t, ctx, s, ""); got != "" {
		t.Fatalf("probes left objects: %s", got)
	}
}

func testClose(t *testing.T, ctx context.Context, s storage.Storage) {
	mustWrite(t, ctx, s, "x", []byte("x"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.ReadFile(ctx, "x"); err == nil {
		t.Fatal("ReadFile after Close succeeded")
	}
}

func mustWrite(t *testing.T, ctx context.Context, s storage.Storage, name string, data []byte) {
	t.Helper()
	if err := s.WriteFile(ctx, name, data); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
}

func list(t *testing.T, ctx context.Context, s storage.Storage, prefix string) string {
	t.Helper()
	var names []string
	if err := s.List(ctx, prefix, func(o storage.ObjectInfo) error {
		names = append(names, o.Name)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return strings.Join(names, " ")
}
