package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"

	"logbackup/storage"
)

// Source serves Data to WriteFrom, counting the readers it opens and
// closes. The first FailOpens readers fail with FailErr once FailAt bytes
// have been read.
type Source struct {
	Data      []byte
	FailAt    int
	FailErr   error
	FailOpens int

	opens, closes atomic.Int32
}

// Open is WriteFrom's open.
func (s *Source) Open() (io.ReadCloser, error) {
	n := int(s.opens.Add(1))
	r := &sourceReader{s: s, failAt: -1}
	if n <= s.FailOpens {
		r.failAt = s.FailAt
	}
	return r, nil
}

// Opens is how many readers were opened, Closes how many closed.
func (s *Source) Opens() int  { return int(s.opens.Load()) }
func (s *Source) Closes() int { return int(s.closes.Load()) }

type sourceReader struct {
	s      *Source
	off    int
	failAt int
	closed bool
}

func (r *sourceReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("read after close")
	}
	end := len(r.s.Data)
	if r.failAt >= 0 {
		end = min(end, r.failAt)
		if r.off >= end {
			return 0, r.s.FailErr
		}
	}
	if r.off >= end {
		return 0, io.EOF
	}
	n := copy(p, r.s.Data[r.off:end])
	r.off += n
	return n, nil
}

func (r *sourceReader) Close() error {
	if !r.closed {
		r.closed = true
		r.s.closes.Add(1)
	}
	return nil
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func checkObject(t *testing.T, ctx context.Context, s storage.Storage, name string, want []byte) {
	t.Helper()
	got, err := s.ReadFile(ctx, name)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%s: read %d bytes (%v), want the %d written", name, len(got), err, len(want))
	}
}

func checkAbsent(t *testing.T, ctx context.Context, s storage.Storage, name string) {
	t.Helper()
	if ok, err := s.Exists(ctx, name); ok || err != nil {
		t.Fatalf("%s exists after a failed stream (%v)", name, err)
	}
	if got := list(t, ctx, s, ""); got != "" {
		t.Fatalf("a failed stream left %q", got)
	}
}

// testStream: streamed objects of every size read back whole, each
// reader closed; over 16 MiB the upload is multipart on S3 and in blocks
// on Azure.
func testStream(t *testing.T, ctx context.Context, s storage.Storage) {
	for _, n := range []int{0, 1, 300 << 10, 16<<20 + 12345} {
		name := fmt.Sprintf("stream/%d.log", n)
		src := &Source{Data: randomBytes(t, n)}
		if err := s.WriteFrom(ctx, name, int64(n), src.Open); err != nil {
			t.Fatalf("stream %d bytes: %v", n, err)
		}
		if src.Opens() != 1 || src.Closes() != 1 {
			t.Fatalf("stream %d bytes: %d readers opened, %d closed; want 1", n, src.Opens(), src.Closes())
		}
		checkObject(t, ctx, s, name, src.Data)
	}
}

// testStreamSourceFails: a source failing mid-stream fails the write,
// is not retried (the error is not transient) and leaves no object; an
// older object under the name is untouched.
func testStreamSourceFails(t *testing.T, ctx context.Context, s storage.Storage) {
	gone := errors.New("temp file unreadable")
	for _, at := range []int{0, 100, 1 << 20} {
		src := &Source{Data: randomBytes(t, 3<<20), FailAt: at, FailErr: gone, FailOpens: 1}
		err := s.WriteFrom(ctx, "fresh.log", int64(len(src.Data)), src.Open)
		if !errors.Is(err, gone) {
			t.Fatalf("source failing at %d: got %v, want its error", at, err)
		}
		var op *storage.OpError
		if !errors.As(err, &op) || op.Op != "write" || op.Name != "fresh.log" {
			t.Fatalf("source failing at %d: not a write OpError naming the object: %v", at, err)
		}
		if src.Opens() != 1 || src.Closes() != 1 {
			t.Fatalf("source failing at %d: %d readers opened, %d closed; want 1", at, src.Opens(), src.Closes())
		}
		checkAbsent(t, ctx, s, "fresh.log")
	}
	old := []byte("the older object")
	mustWrite(t, ctx, s, "old.log", old)
	src := &Source{Data: randomBytes(t, 2<<20), FailAt: 1 << 20, FailErr: gone, FailOpens: 1}
	if err := s.WriteFrom(ctx, "old.log", int64(len(src.Data)), src.Open); !errors.Is(err, gone) {
		t.Fatalf("overwrite from a failing source: %v", err)
	}
	checkObject(t, ctx, s, "old.log", old)
}

// testStreamRetried: a transient failure mid-stream is retried from the
// start with a new reader, and the object is whole.
func testStreamRetried(t *testing.T, ctx context.Context, s storage.Storage) {
	for _, n := range []int{1000, 3 << 20} {
		src := &Source{Data: randomBytes(t, n), FailAt: n / 3, FailErr: fmt.Errorf("flaky source: %w", io.ErrUnexpectedEOF), FailOpens: 1}
		name := fmt.Sprintf("retried/%d.log", n)
		if err := s.WriteFrom(ctx, name, int64(n), src.Open); err != nil {
			t.Fatalf("stream through one transient failure: %v", err)
		}
		if src.Opens() != 2 || src.Closes() != 2 {
			t.Fatalf("%d readers opened, %d closed; want 2 (one retry)", src.Opens(), src.Closes())
		}
		checkObject(t, ctx, s, name, src.Data)
	}
}

// testStreamWrongLength: a source shorter or longer than announced fails
// the write and leaves no object, whatever the backend would accept.
func testStreamWrongLength(t *testing.T, ctx context.Context, s storage.Storage) {
	for _, n := range []int{1000, 17 << 20} {
		src := &Source{Data: randomBytes(t, n)}
		for _, claim := range []int64{int64(n) + 1, int64(n) - 1, 0} {
			err := s.WriteFrom(ctx, "wrong.log", claim, src.Open)
			if err == nil {
				t.Fatalf("%d bytes announced as %d: written", n, claim)
			}
			checkAbsent(t, ctx, s, "wrong.log")
		}
		if src.Opens() != src.Closes() {
			t.Fatalf("%d readers opened, %d closed", src.Opens(), src.Closes())
		}
	}
	if err := s.WriteFrom(ctx, "neg.log", -1, (&Source{}).Open); err == nil {
		t.Fatal("negative size accepted")
	}
	if err := s.WriteFrom(ctx, "../bad", 0, (&Source{}).Open); err == nil {
		t.Fatal("bad name accepted")
	}
}
