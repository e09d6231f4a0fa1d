// Package storage is the narrow seam between logbackup and external storage
// (S3, GCS, Azure Blob, local files, memory), built on gocloud.dev/blob.
// Everything above it speaks six verbs; URL parsing, credential redaction
// and retries of transient failures live here, in one place.
package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
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

// Storage is what the agent and the CLI need from external storage.
type Storage interface {
	// WriteFile writes a whole object atomically: readers see all of it or
	// none. It returns only once the object is durable.
	WriteFile(ctx context.Context, name string, data []byte) error
	ReadFile(ctx context.Context, name string) ([]byte, error)
	// ReadRange reads length bytes at offset (fewer at the end of the object).
	ReadRange(ctx context.Context, name string, offset, length int64) ([]byte, error)
	// List calls fn for every object whose name starts with prefix, in
	// lexical order; an error from fn stops the listing and is returned.
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
	Op   string
	Name string
	URL  string
	Err  error
}

func (e *OpError) Error() string {
	return Redact(fmt.Sprintf("storage %s %q on %s: %v", e.Op, e.Name, e.URL, e.Err))
}

func (e *OpError) Unwrap() error { return e.Err }

type blobStorage struct {
	bucket *blob.Bucket
	loc    *Location
	opts   options
	// local is the directory of file storage, which gets an fsync after
	// each write: fileblob renames into place but does not sync.
	local string
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
func Open(ctx context.Context, loc *Location, opts ...Option) (Storage, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	s := &blobStorage{loc: loc, opts: o}
	var (
		b   *blob.Bucket
		err error
	)
	switch loc.Scheme {
	case "local":
		if err := os.MkdirAll(loc.Path, 0o755); err != nil {
			return nil, &OpError{Op: "open", URL: loc.Redacted(), Err: err}
		}
		b, err = fileblob.OpenBucket(loc.Path, &fileblob.Options{
			NoTempDir: true, // temp files next to the target, so rename stays on one filesystem
			Metadata:  fileblob.MetadataDontWrite,
		})
		s.local = loc.Path
	case "mem":
		b = memblob.OpenBucket(nil)
	case "s3":
		b, err = openS3(ctx, loc, o)
	case "gcs":
		b, err = openGCS(ctx, loc)
	case "azblob":
		b, err = openAzure(ctx, loc)
	default:
		err = fmt.Errorf("unknown scheme %q", loc.Scheme)
	}
	if err != nil {
		return nil, &OpError{Op: "open", URL: loc.Redacted(), Err: err}
	}
	if loc.Prefix != "" {
		b = blob.PrefixedBucket(b, loc.Prefix+"/")
	}
	s.bucket = b
	return s, nil
}

func (s *blobStorage) String() string { return s.loc.Redacted() }

func (s *blobStorage) Close() error { return s.bucket.Close() }

func (s *blobStorage) fail(op, name string, err error) error {
	if gcerrors.Code(err) == gcerrors.NotFound {
		err = fmt.Errorf("%w: %w", ErrNotExist, err)
	}
	return &OpError{Op: op, Name: name, URL: s.loc.Redacted(), Err: err}
}

func (s *blobStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	if err := checkName(name); err != nil {
		return s.fail("write", name, err)
	}
	err := s.retry(ctx, "write", func(ctx context.Context) error {
		return s.bucket.WriteAll(ctx, name, data, &blob.WriterOptions{ContentType: "application/octet-stream"})
	})
	if err != nil {
		return s.fail("write", name, err)
	}
	if s.local != "" {
		if err := syncPath(filepath.Join(s.local, filepath.FromSlash(name))); err != nil {
			return s.fail("write", name, err)
		}
	}
	return nil
}

// syncPath makes a renamed file durable: the file, then its directory.
func syncPath(p string) error {
	for _, target := range []string{p, filepath.Dir(p)} {
		f, err := os.Open(target)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("fsync %s: %w", target, err)
		}
	}
	return nil
}

func (s *blobStorage) ReadFile(ctx context.Context, name string) ([]byte, error) {
	var out []byte
	err := s.retry(ctx, "read", func(ctx context.Context) error {
		b, err := s.bucket.ReadAll(ctx, name)
		out = b
		return err
	})
	if err != nil {
		return nil, s.fail("read", name, err)
	}
	return out, nil
}

func (s *blobStorage) ReadRange(ctx context.Context, name string, offset, length int64) ([]byte, error) {
	if offset < 0 || length < 0 {
		return nil, s.fail("read", name, fmt.Errorf("bad range %d+%d", offset, length))
	}
	var out []byte
	err := s.retry(ctx, "read", func(ctx context.Context) error {
		r, err := s.bucket.NewRangeReader(ctx, name, offset, length, nil)
		if err != nil {
			return err
		}
		defer r.Close()
		var buf bytes.Buffer
		buf.Grow(int(min(length, 64<<20)))
		if _, err := io.Copy(&buf, r); err != nil {
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

func (s *blobStorage) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	// The whole listing is read (and retried) before fn runs, so a retry
	// never calls fn twice for one object.
	var objs []ObjectInfo
	err := s.retry(ctx, "list", func(ctx context.Context) error {
		objs = objs[:0]
		it := s.bucket.List(&blob.ListOptions{Prefix: prefix})
		for {
			obj, err := it.Next(ctx)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if obj.IsDir || isTempName(obj.Key) {
				continue
			}
			objs = append(objs, ObjectInfo{Name: obj.Key, Size: obj.Size})
		}
	})
	if err != nil {
		return s.fail("list", prefix, err)
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].Name < objs[j].Name })
	for _, o := range objs {
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

// isTempName recognises fileblob's in-flight temp files ("<name>.<hex>.tmp"),
// which a crash can strand next to real objects.
func isTempName(name string) bool { return strings.HasSuffix(name, ".tmp") }

func (s *blobStorage) Delete(ctx context.Context, name string) error {
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
	var ok bool
	err := s.retry(ctx, "exists", func(ctx context.Context) error {
		var err error
		ok, err = s.bucket.Exists(ctx, name)
		return err
	})
	if err != nil {
		return false, s.fail("exists", name, err)
	}
	return ok, nil
}

func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "..") {
		return fmt.Errorf("invalid object name %q", name)
	}
	return nil
}

// probeName is written and removed by CheckWritable.
const probeName = "logbackup.probe"

// CheckWritable writes, reads back and deletes a probe object, so a task
// never starts on storage it cannot use.
func CheckWritable(ctx context.Context, s Storage) error {
	want := []byte("logbackup write probe\n")
	if err := s.WriteFile(ctx, probeName, want); err != nil {
		return err
	}
	got, err := s.ReadFile(ctx, probeName)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("storage %s returned different bytes than were written", s)
	}
	return s.Delete(ctx, probeName)
}
