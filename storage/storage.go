// Package storage is the narrow seam between logbackup and external storage
// (S3, GCS, Azure Blob, local files, memory), built on gocloud.dev/blob.
// Everything above it speaks seven verbs; URL parsing, credential redaction
// and retries of transient failures live here, in one place.
package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
	"gocloud.dev/gcerrors"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
)

// ErrNotExist is returned, wrapped, for a missing object by every backend.
var ErrNotExist = errors.New("storage: object does not exist")

// ObjectInfo describes a listed object.
type ObjectInfo struct {
	Name string
	Size int64
}

// Storage is what the agent and the CLI need from external storage. Object
// names are relative, slash-separated paths ("v1/backupmeta/x.meta").
// Implementations are safe for concurrent use.
type Storage interface {
	// WriteFile writes a whole object atomically: readers see all of it or
	// none of it. It returns only once the object is durable.
	WriteFile(ctx context.Context, name string, data []byte) error
	// WriteFrom writes an object of size bytes streamed from the reader
	// open returns, with WriteFile's guarantees (whole or not at all,
	// durable on return, the same retries and error kinds) but without
	// the whole object in memory: memory is bounded by a fixed upload
	// window (see streamPartSize), whatever size is. open is called once
	// per attempt, so a retry reads from the start; each reader is closed.
	// A reader that fails, or that gives other than size bytes, fails the
	// attempt and leaves no object at name (an older object there stays
	// as it was).
	WriteFrom(ctx context.Context, name string, size int64, open func() (io.ReadCloser, error)) error
	// ReadFile reads a whole object; a missing one gives ErrNotExist.
	ReadFile(ctx context.Context, name string) ([]byte, error)
	// ReadRange reads length bytes at offset: fewer at the end of the
	// object, none when offset is at or past the end.
	ReadRange(ctx context.Context, name string, offset, length int64) ([]byte, error)
	// List calls fn for every object whose name starts with prefix, in
	// lexical (byte) order; an error from fn stops the listing and is
	// returned as is.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes an object; a missing object is not an error.
	Delete(ctx context.Context, name string) error
	Exists(ctx context.Context, name string) (bool, error)
	// String is the redacted URL.
	String() string
	Close() error
}

// OpError is a failed storage operation. It names the object and the
// redacted URL, never a credential, and keeps the cause reachable for
// errors.Is/As and gcerrors.Code.
type OpError struct {
	Op   string // "open", "write", "read", "list", "delete", "exists"
	Name string // object name or list prefix
	URL  string // redacted storage URL
	// Kind is what the failure means, decided alike for every backend.
	Kind ErrorKind
	Err  error
}

func (e *OpError) Error() string {
	// The cause may come from an SDK that quotes a request URL; redact the
	// whole message, not only our parts.
	if e.Name == "" && e.Op != "list" {
		return Redact(fmt.Sprintf("storage %s %s: %v", e.Op, e.URL, e.Err))
	}
	return Redact(fmt.Sprintf("storage %s %q on %s: %v", e.Op, e.Name, e.URL, e.Err))
}

func (e *OpError) Unwrap() error { return e.Err }

type blobStorage struct {
	bucket *blob.Bucket
	url    string // redacted, computed once
	opts   options
	// local marks file storage: writes go through writeLocal for fsync,
	// and fileblob's stranded temp files are hidden from List.
	local    bool
	localDir string
	// azure writes (and checks existence) through the SDK directly; see
	// azureBackend.
	azure *azureBackend

	release   func() // frees what the bucket's Close does not (idle connections)
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ Storage = (*blobStorage)(nil)

// OpenURL parses raw and opens it.
func OpenURL(ctx context.Context, raw string, opts ...Option) (Storage, error) {
	loc, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	return Open(ctx, loc, opts...)
}

// OpenBackend opens a task's StorageBackend.
func OpenBackend(ctx context.Context, b *brpb.StorageBackend, opts ...Option) (Storage, error) {
	loc, err := LocationFromBackend(b)
	if err != nil {
		return nil, err
	}
	return Open(ctx, loc, opts...)
}

// Open opens the location. It makes no request that could hang: remote
// backends are contacted on the first operation, under its deadline.
// (Finding default GCS credentials may probe the GCE metadata server,
// bounded by that client's own timeouts.)
// mem:// opens a new, empty store every time.
func Open(ctx context.Context, loc *Location, opts ...Option) (Storage, error) {
	if loc == nil {
		return nil, errors.New("storage: nil location")
	}
	l := *loc // ours from here on: a caller's later edits do not leak in
	if err := l.validate(); err != nil {
		return nil, err
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	s := &blobStorage{url: l.Redacted(), opts: o}
	var (
		b   *blob.Bucket
		err error
	)
	switch l.Scheme {
	case "local":
		b, s.localDir, err = openLocal(l.Path)
		s.local = true
	case "mem":
		b = memblob.OpenBucket(nil)
	case "s3":
		b, s.release, err = openS3(&l)
	case "gcs":
		b, s.release, err = openGCS(ctx, &l)
	case "azblob":
		b, s.azure, s.release, err = openAzure(&l)
	default:
		err = fmt.Errorf("unsupported storage scheme %q", l.Scheme)
	}
	if err != nil {
		return nil, &OpError{Op: "open", URL: s.url, Kind: kindOf(err), Err: err}
	}
	if l.Prefix != "" {
		b = blob.PrefixedBucket(b, l.Prefix+"/")
	}
	s.bucket = b
	return s, nil
}

func (s *blobStorage) String() string { return s.url }

func (s *blobStorage) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.closeErr = s.bucket.Close()
		if s.release != nil {
			s.release()
		}
	})
	return s.closeErr
}

func (s *blobStorage) fail(op, name string, err error) error {
	if gcerrors.Code(err) == gcerrors.NotFound {
		err = fmt.Errorf("%w: %w", ErrNotExist, err)
	}
	if s.azure != nil {
		err = shortAzure(err)
	}
	return &OpError{Op: op, Name: name, URL: s.url, Kind: kindOf(err), Err: err}
}

func (s *blobStorage) retry(ctx context.Context, op string, fn func(context.Context) error) error {
	return retry(ctx, s.opts, op, fn)
}

func (s *blobStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	if err := s.checkName(name); err != nil {
		return s.fail("write", name, err)
	}
	err := s.retry(ctx, "write", func(ctx context.Context) error {
		if s.local {
			return s.writeLocal(ctx, name, bytes.NewReader(data))
		}
		if s.azure != nil {
			return s.azure.write(ctx, name, data)
		}
		// Every attempt sends the same bytes: data is never modified, and
		// WriteAll reads it from the start each time.
		return s.bucket.WriteAll(ctx, name, data, &blob.WriterOptions{
			ContentType: "application/octet-stream",
		})
	})
	if err != nil {
		return s.fail("write", name, err)
	}
	return nil
}

func (s *blobStorage) ReadFile(ctx context.Context, name string) ([]byte, error) {
	if err := s.checkName(name); err != nil {
		return nil, s.fail("read", name, err)
	}
	var out []byte
	err := s.retry(ctx, "read", func(ctx context.Context) error {
		r, err := s.bucket.NewRangeReader(ctx, name, 0, -1, nil)
		if err != nil {
			return err
		}
		defer r.Close()
		out, err = io.ReadAll(r)
		return err
	})
	if err != nil {
		return nil, s.fail("read", name, err)
	}
	if out == nil {
		out = []byte{}
	}
	return out, nil
}

func (s *blobStorage) ReadRange(ctx context.Context, name string, offset, length int64) ([]byte, error) {
	if err := s.checkName(name); err != nil {
		return nil, s.fail("read", name, err)
	}
	if offset < 0 || length < 0 {
		return nil, s.fail("read", name, fmt.Errorf("invalid range: offset %d, length %d", offset, length))
	}
	var out []byte
	err := s.retry(ctx, "read", func(ctx context.Context) error {
		r, err := s.bucket.NewRangeReader(ctx, name, offset, length, nil)
		if httpStatus(err) == 416 {
			// S3 answers a range that starts at or past the end with
			// InvalidRange; the other backends return no bytes.
			out = []byte{}
			return nil
		}
		if err != nil {
			return err
		}
		defer r.Close()
		buf := bytes.NewBuffer(make([]byte, 0, min(length, r.Size(), 64<<20)))
		if _, err := io.Copy(buf, r); err != nil {
			return err
		}
		out = buf.Bytes()
		return nil
	})
	if err != nil {
		return nil, s.fail("read", name, err)
	}
	return out, nil
}

// listPageSize is one request's worth of names.
const listPageSize = 1000

func (s *blobStorage) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := checkPrefix(prefix); err != nil {
		return s.fail("list", prefix, err)
	}
	var objs []ObjectInfo
	var err error
	if s.local {
		objs, err = listLocal(ctx, s.localDir, prefix)
	} else {
		objs, err = s.listRemote(ctx, prefix)
	}
	if err != nil {
		return s.fail("list", prefix, err)
	}
	// Servers list in byte order already; sorting makes it a guarantee for
	// every backend, and it is cheap next to the requests.
	sort.Slice(objs, func(i, j int) bool { return objs[i].Name < objs[j].Name })
	for i, o := range objs {
		if i > 0 && objs[i-1].Name == o.Name {
			continue // a page boundary moved under a concurrent write
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

// listRemote reads the whole listing before fn runs, page by page, each
// page retried on its own; so a retry never calls fn twice for an object.
func (s *blobStorage) listRemote(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	var objs []ObjectInfo
	token := blob.FirstPageToken
	for len(token) > 0 {
		var page []*blob.ListObject
		var next []byte
		err := s.retry(ctx, "list", func(ctx context.Context) error {
			var err error
			page, next, err = s.bucket.ListPage(ctx, token, listPageSize, &blob.ListOptions{Prefix: prefix})
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, obj := range page {
			if !obj.IsDir {
				objs = append(objs, ObjectInfo{Name: obj.Key, Size: obj.Size})
			}
		}
		token = next
	}
	return objs, nil
}

func (s *blobStorage) Delete(ctx context.Context, name string) error {
	if err := s.checkName(name); err != nil {
		return s.fail("delete", name, err)
	}
	if s.local && isLocalDir(s.localDir, name) {
		return nil // a directory is no object; other backends have none
	}
	err := s.retry(ctx, "delete", func(ctx context.Context) error {
		err := s.bucket.Delete(ctx, name)
		if gcerrors.Code(err) == gcerrors.NotFound {
			return nil
		}
		return err
	})
	if err != nil {
		return s.fail("delete", name, err)
	}
	return nil
}

func (s *blobStorage) Exists(ctx context.Context, name string) (bool, error) {
	if err := s.checkName(name); err != nil {
		return false, s.fail("exists", name, err)
	}
	var ok bool
	err := s.retry(ctx, "exists", func(ctx context.Context) error {
		var err error
		if s.azure != nil {
			ok, err = s.azure.exists(ctx, name)
		} else {
			ok, err = s.bucket.Exists(ctx, name)
		}
		return err
	})
	if err != nil {
		return false, s.fail("exists", name, err)
	}
	return ok, nil
}

// errClosed is what every operation on a closed storage returns.
var errClosed = errors.New("storage is closed")

func (s *blobStorage) checkName(name string) error {
	if s.closed.Load() {
		return errClosed
	}
	if err := checkName(name); err != nil {
		return err
	}
	if (s.local || s.azure != nil) && strings.Contains(name, fileblobEscape) {
		// Both escape unusual characters that way: such a name would read
		// back as another.
		return fmt.Errorf("object name %q: this storage cannot hold names containing %q", name, fileblobEscape)
	}
	return nil
}

// checkName rejects names that mean different things on different
// backends (absolute, "." or ".." segments, empty segments) or that no
// backend can store.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty object name")
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("object name %q is not valid UTF-8", name)
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return fmt.Errorf("object name %q contains a control character", name)
	}
	if strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") {
		return fmt.Errorf("object name %q must not start or end with /", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("object name %q has an empty, . or .. segment", name)
		}
	}
	return nil
}

// checkPrefix accepts any beginning of a valid name: "", "v1/", "v1/back".
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	i := strings.LastIndex(prefix, "/")
	if i < 0 {
		if !utf8.ValidString(prefix) || strings.IndexFunc(prefix, unicode.IsControl) >= 0 {
			return fmt.Errorf("invalid list prefix %q", prefix)
		}
		return nil
	}
	// The directories part must be a valid name; the rest may be partial.
	if err := checkName(prefix[:i]); err != nil {
		return fmt.Errorf("invalid list prefix: %w", err)
	}
	if rest := prefix[i+1:]; !utf8.ValidString(rest) || strings.IndexFunc(rest, unicode.IsControl) >= 0 {
		return fmt.Errorf("invalid list prefix %q", prefix)
	}
	return nil
}

// CheckWritable writes, reads back and deletes a probe object, so a task
// never starts on storage it cannot use. The probe name is unique, so
// agents checking the same storage at once do not disturb each other.
func CheckWritable(ctx context.Context, s Storage) error {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("storage probe name: %w", err)
	}
	name := "logbackup.probe." + hex.EncodeToString(id[:])
	want := []byte("logbackup write probe " + name + "\n")
	if err := s.WriteFile(ctx, name, want); err != nil {
		return fmt.Errorf("storage is not writable: %w", err)
	}
	got, err := s.ReadFile(ctx, name)
	if err == nil && !bytes.Equal(got, want) {
		err = fmt.Errorf("storage %s returned %d bytes that differ from the %d written", s, len(got), len(want))
	}
	if err != nil {
		_ = s.Delete(ctx, name) // best effort: do not leave the probe behind
		return fmt.Errorf("storage cannot read back what it wrote: %w", err)
	}
	if err := s.Delete(ctx, name); err != nil {
		return fmt.Errorf("storage cannot delete what it wrote: %w", err)
	}
	return nil
}
