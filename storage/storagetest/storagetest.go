// Package storagetest is one conformance suite that every storage backend
// must pass, run against real backends (local files, memory, S3 on
// loopback).
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"logbackup/storage"
)

// Run runs the suite; open must return an empty storage.
func Run(t *testing.T, open func(t *testing.T) storage.Storage) {
	ctx := context.Background()
	cases := []struct {
		name string
		fn   func(t *testing.T, s storage.Storage)
	}{
		{"WriteRead", func(t *testing.T, s storage.Storage) {
			mustWrite(t, s, "a/b/c.log", []byte("hello"))
			got, err := s.ReadFile(ctx, "a/b/c.log")
			if err != nil || string(got) != "hello" {
				t.Fatalf("read back %q, %v", got, err)
			}
			mustWrite(t, s, "empty", nil)
			if got, err := s.ReadFile(ctx, "empty"); err != nil || len(got) != 0 {
				t.Fatalf("empty object: %q, %v", got, err)
			}
		}},
		{"Overwrite", func(t *testing.T, s storage.Storage) {
			mustWrite(t, s, "x", []byte("one"))
			mustWrite(t, s, "x", []byte("two!"))
			if got, _ := s.ReadFile(ctx, "x"); string(got) != "two!" {
				t.Fatalf("after overwrite %q", got)
			}
		}},
		{"Missing", func(t *testing.T, s storage.Storage) {
			if _, err := s.ReadFile(ctx, "nope"); !errors.Is(err, storage.ErrNotExist) {
				t.Fatalf("ReadFile missing: %v", err)
			}
			if _, err := s.ReadRange(ctx, "nope", 0, 1); !errors.Is(err, storage.ErrNotExist) {
				t.Fatalf("ReadRange missing: %v", err)
			}
			if ok, err := s.Exists(ctx, "nope"); ok || err != nil {
				t.Fatalf("Exists missing: %v %v", ok, err)
			}
		}},
		{"ReadRange", func(t *testing.T, s storage.Storage) {
			mustWrite(t, s, "r", []byte("0123456789"))
			for _, c := range []struct {
				off, n int64
				want   string
			}{{0, 3, "012"}, {4, 2, "45"}, {8, 10, "89"}, {0, 10, "0123456789"}} {
				got, err := s.ReadRange(ctx, "r", c.off, c.n)
				if err != nil || string(got) != c.want {
					t.Fatalf("ReadRange(%d,%d) = %q, %v; want %q", c.off, c.n, got, err, c.want)
				}
			}
		}},
		{"ListOrderAndPrefix", func(t *testing.T, s storage.Storage) {
			for _, n := range []string{"v1/b/2.log", "v1/a/1.log", "v1/a/0.log", "ab", "a/x", "v1x"} {
				mustWrite(t, s, n, []byte(n))
			}
			if got := list(t, s, "v1/"); got != "v1/a/0.log v1/a/1.log v1/b/2.log" {
				t.Fatalf("List(v1/) = %s", got)
			}
			if got := list(t, s, "a/"); got != "a/x" {
				t.Fatalf("List(a/) must not include ab: %s", got)
			}
			stop := errors.New("stop")
			n := 0
			err := s.List(ctx, "", func(storage.ObjectInfo) error { n++; return stop })
			if !errors.Is(err, stop) || n != 1 {
				t.Fatalf("fn error did not stop the listing: %v after %d", err, n)
			}
			var size int64
			s.List(ctx, "v1/a/0", func(o storage.ObjectInfo) error { size = o.Size; return nil })
			if size != int64(len("v1/a/0.log")) {
				t.Fatalf("listed size %d", size)
			}
		}},
		{"Delete", func(t *testing.T, s storage.Storage) {
			mustWrite(t, s, "d", []byte("x"))
			if err := s.Delete(ctx, "d"); err != nil {
				t.Fatal(err)
			}
			if ok, _ := s.Exists(ctx, "d"); ok {
				t.Fatal("still exists after Delete")
			}
			if err := s.Delete(ctx, "d"); err != nil {
				t.Fatalf("Delete of a missing object: %v", err)
			}
		}},
		{"Multipart", func(t *testing.T, s storage.Storage) {
			big := make([]byte, 12<<20+12345)
			rand.Read(big)
			mustWrite(t, s, "big/object.log", big)
			got, err := s.ReadFile(ctx, "big/object.log")
			if err != nil || !bytes.Equal(got, big) {
				t.Fatalf("12 MiB object differs (len %d, %v)", len(got), err)
			}
			part, err := s.ReadRange(ctx, "big/object.log", 5<<20, 1<<20)
			if err != nil || !bytes.Equal(part, big[5<<20:6<<20]) {
				t.Fatalf("range across parts differs: %v", err)
			}
		}},
		{"ConcurrentWriters", func(t *testing.T, s storage.Storage) {
			var wg sync.WaitGroup
			for i := 0; i < 16; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					name := fmt.Sprintf("c/%02d", i)
					if err := s.WriteFile(ctx, name, bytes.Repeat([]byte{byte(i)}, 1000+i)); err != nil {
						t.Error(err)
					}
				}(i)
			}
			wg.Wait()
			n := 0
			s.List(ctx, "c/", func(o storage.ObjectInfo) error {
				if o.Size != int64(1000+n) {
					t.Errorf("%s has size %d", o.Name, o.Size)
				}
				n++
				return nil
			})
			if n != 16 {
				t.Fatalf("listed %d of 16", n)
			}
		}},
		{"BadNames", func(t *testing.T, s storage.Storage) {
			for _, n := range []string{"", "/abs", "a/../b"} {
				if err := s.WriteFile(ctx, n, []byte("x")); err == nil {
					t.Errorf("name %q accepted", n)
				}
			}
		}},
		{"CheckWritable", func(t *testing.T, s storage.Storage) {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := storage.CheckWritable(cctx, s); err != nil {
				t.Fatal(err)
			}
			if got := list(t, s, ""); got != "" {
				t.Fatalf("probe left objects: %s", got)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			c.fn(t, s)
		})
	}
}

func mustWrite(t *testing.T, s storage.Storage, name string, data []byte) {
	t.Helper()
	if err := s.WriteFile(context.Background(), name, data); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
}

func list(t *testing.T, s storage.Storage, prefix string) string {
	t.Helper()
	var names []string
	if err := s.List(context.Background(), prefix, func(o storage.ObjectInfo) error {
		names = append(names, o.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(names)[1 : len(fmt.Sprint(names))-1]
}
