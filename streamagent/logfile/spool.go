package logfile

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// A finished flush's compressed files are not held in memory: each
// compressing goroutine appends its files to a temp file of its own in the
// builder's SpillDir, and a DataObject is a list of extents in those files,
// read back as a stream while it uploads. The temp files are unlinked as
// soon as they are created, so they never show in the directory and a
// crash leaves nothing behind; their space is freed when Flush.Close
// closes them.

// ErrTempWrite: the flush's temp file could not be written (a full or
// read-only disk). The builder's bytes are intact: Finish can be called
// again.
var ErrTempWrite = errors.New("cannot write the flush's temp file")

// DataObject is one data object of a flush, Size bytes opened as a
// stream: compressed files in the flush's temp files, concatenated.
type DataObject struct {
	Name  string
	Size  int64
	parts []extent
}

// extent is a run of bytes in memory or at off in a temp file.
type extent struct {
	mem []byte
	f   *spoolFile
	off int64
	n   int64
	// crc is the CRC-32C of the bytes written, checked when they are
	// read back, so a temp file damaged on disk is never uploaded.
	crc uint32
}

// NewDataObject is a data object held in memory (for tools and tests that
// build or alter flushes by hand).
func NewDataObject(name string, data []byte) DataObject {
	return DataObject{Name: name, Size: int64(len(data)), parts: []extent{{mem: data, n: int64(len(data))}}}
}

// Open returns a reader of the object's bytes from the start. It may be
// called any number of times, also concurrently, until the flush is
// closed; each reader reads on its own.
func (o DataObject) Open() (io.ReadCloser, error) {
	for _, e := range o.parts {
		if e.f != nil && e.f.closed.Load() {
			return nil, fmt.Errorf("open %s: the flush is closed", o.Name)
		}
	}
	return &objectReader{name: o.Name, parts: o.parts}, nil
}

// Bytes reads the whole object into memory.
func (o DataObject) Bytes() ([]byte, error) {
	r, err := o.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	// Not io.ReadFull: it drops an error that comes with the last bytes,
	// which is where a damaged extent is noticed.
	buf := make([]byte, o.Size)
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", o.Name, err)
		}
		if m == 0 && n == len(buf) {
			return nil, fmt.Errorf("read %s: more than its %d bytes", o.Name, o.Size)
		}
	}
	if n != len(buf) {
		return nil, fmt.Errorf("read %s: %d of its %d bytes", o.Name, n, o.Size)
	}
	return buf, nil
}

// objectReader reads an object's extents in order, reading temp files at
// an offset (ReadAt), so readers share the file without a seek position.
type objectReader struct {
	name  string
	parts []extent
	i     int
	off   int64  // into parts[i]
	crc   uint32 // of parts[i][:off]
}

func (r *objectReader) Read(p []byte) (int, error) {
	for r.i < len(r.parts) && r.off == r.parts[r.i].n {
		r.i, r.off, r.crc = r.i+1, 0, 0
	}
	if r.i == len(r.parts) {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	e := &r.parts[r.i]
	want := min(int64(len(p)), e.n-r.off)
	if e.f == nil {
		n := copy(p, e.mem[r.off:r.off+want])
		r.off += int64(n)
		return n, nil
	}
	n, err := e.f.f.ReadAt(p[:want], e.off+r.off)
	r.crc = crc32.Update(r.crc, castagnoli, p[:n])
	r.off += int64(n)
	switch {
	case errors.Is(err, io.EOF) && int64(n) < want:
		return n, fmt.Errorf("%w: %s: the flush's temp file %s ends before the bytes written", ErrSpillCorrupt, r.name, e.f.name)
	case err != nil && !errors.Is(err, io.EOF):
		return n, fmt.Errorf("read back %s from %s: %w", r.name, e.f.name, err)
	case r.off == e.n && r.crc != e.crc:
		// Checked as the extent's last byte is read, so a reader that
		// stops at Size bytes has had every byte checked.
		return n, fmt.Errorf("%w: %s: %d bytes at %d in the flush's temp file %s (crc32c %08x, written %08x)",
			ErrSpillCorrupt, r.name, e.n, e.off, e.f.name, r.crc, e.crc)
	}
	return n, nil
}

func (r *objectReader) Close() error { return nil }

// spoolFile is one unlinked temp file that a compressing goroutine
// appends to.
type spoolFile struct {
	f      *os.File
	name   string // for messages; the file is already unlinked
	linked bool   // the unlink failed: Close removes it
	size   int64  // bytes appended, buffered ones included
	// buf holds appended bytes not yet written: one flush compresses a
	// file per region and column family, most of them small, and writing
	// each zstd frame as it came cost a quarter of the agent's CPU in
	// system calls at 10,000 regions. flush writes it out; nothing reads
	// the file before (Finish flushes before it returns).
	buf    []byte
	closed atomic.Bool
}

const spoolBuffer = 256 << 10

func newSpoolFile(dir string) (*spoolFile, error) {
	f, err := os.CreateTemp(dir, "logbackup-*.flush")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTempWrite, err)
	}
	s := &spoolFile{f: f, name: f.Name()}
	if os.Remove(s.name) != nil {
		s.linked = true // removed on Close instead
	}
	return s, nil
}

// Write appends p.
func (s *spoolFile) Write(p []byte) (int, error) {
	if len(s.buf)+len(p) > spoolBuffer {
		if err := s.flush(); err != nil {
			return 0, err
		}
	}
	if len(p) >= spoolBuffer {
		n, err := s.f.Write(p)
		s.size += int64(n)
		if err != nil {
			return n, fmt.Errorf("%w: %w", ErrTempWrite, err)
		}
		return n, nil
	}
	if s.buf == nil {
		s.buf = make([]byte, 0, spoolBuffer)
	}
	s.buf = append(s.buf, p...)
	s.size += int64(len(p))
	return len(p), nil
}

// flush writes the buffered bytes to the file.
func (s *spoolFile) flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	n, err := s.f.Write(s.buf)
	if err != nil {
		// What was not written is gone: size says where the file ends.
		s.size -= int64(len(s.buf) - n)
		s.buf = s.buf[:0]
		return fmt.Errorf("%w: %w", ErrTempWrite, err)
	}
	s.buf = s.buf[:0]
	return nil
}

func (s *spoolFile) close() error {
	if s.closed.Swap(true) {
		return nil
	}
	err := s.f.Close()
	if s.linked {
		if rerr := os.Remove(s.name); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// spools is a flush's temp files.
type spools struct {
	mu    sync.Mutex
	files []*spoolFile
}

func (s *spools) add(f *spoolFile) {
	s.mu.Lock()
	s.files = append(s.files, f)
	s.mu.Unlock()
}

func (s *spools) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, f := range s.files {
		if err := f.close(); err != nil {
			errs = append(errs, fmt.Errorf("close the flush's temp file %s: %w", f.name, err))
		}
	}
	return errors.Join(errs...)
}
