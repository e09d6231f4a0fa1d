package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
)

// openLocal returns the bucket and the directory with symlinks resolved,
// so that walking it lists the objects and not a link.
func openLocal(dir string) (*blob.Bucket, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, "", err
	}
	// A path under a regular file, or one we may not enter, should fail
	// here and not on the first flush.
	if fi, err := os.Stat(dir); err != nil {
		return nil, "", err
	} else if !fi.IsDir() {
		return nil, "", fmt.Errorf("%s is not a directory", dir)
	}
	b, err := fileblob.OpenBucket(dir, &fileblob.Options{
		// Temp files next to the target, so the final rename stays on one
		// filesystem and is atomic.
		NoTempDir: true,
		// No ".attrs" sidecars: the directory holds exactly the objects,
		// as BR's local storage does.
		Metadata: fileblob.MetadataDontWrite,
	})
	return b, dir, err
}

// writeLocal writes through fileblob (temp file, then rename) but syncs
// the temp file before the rename and the directory after it. fileblob
// alone does neither, so a crash could leave a renamed but empty or
// partial file: exactly the "some of it" readers must never see.
// r is copied as it is read; a failing r leaves nothing at name.
func (s *blobStorage) writeLocal(ctx context.Context, name string, r io.Reader) error {
	// Directories fileblob is about to create need their own entries made
	// durable too. (fileblob escapes unusual characters in paths; for such
	// names this guess only costs a few extra fsyncs.)
	_, statErr := os.Stat(filepath.Dir(filepath.Join(s.localDir, filepath.FromSlash(name))))
	newDirs := statErr != nil
	var f *os.File
	// Cancelling wctx before Close makes fileblob discard the temp file
	// instead of renaming it into place.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.bucket.NewWriter(wctx, name, &blob.WriterOptions{
		ContentType: "application/octet-stream",
		BeforeWrite: func(as func(any) bool) error {
			if !as(&f) {
				return errors.New("file storage writer does not expose its file")
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	abort := func(cause error) error {
		cancel()
		_ = w.Close()
		return cause
	}
	if br, ok := r.(*bytes.Reader); ok {
		// WriteFile's bytes: one write, no copy buffer.
		_, err = br.WriteTo(w)
	} else {
		_, err = copyStream(w, r)
	}
	if err != nil {
		return abort(err)
	}
	if err := f.Sync(); err != nil {
		return abort(fmt.Errorf("fsync: %w", err))
	}
	dir := filepath.Dir(f.Name())
	if err := w.Close(); err != nil {
		return err
	}
	for {
		if err := syncDir(dir); err != nil {
			return err
		}
		if !newDirs || len(dir) <= len(s.localDir) {
			return nil
		}
		dir = filepath.Dir(dir)
	}
}

// isLocalDir reports whether name is a directory under root. (Valid names
// map to paths unescaped; see fileblobEscape.)
func isLocalDir(root, name string) bool {
	fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(name)))
	return err == nil && fi.IsDir()
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// fileblobEscape starts fileblob's escape sequences ("__0x2f__"): a file
// name holding it does not name the same key, so such names are refused
// on write and skipped when listing.
const fileblobEscape = "__0x"

// localTempName is fileblob's in-flight file, "<name>.<hex nanos>.tmp",
// which a crash can strand next to real objects.
var localTempName = regexp.MustCompile(`\.[0-9a-f]+\.tmp$`)

// listLocal walks the directory itself instead of paging through
// fileblob: fileblob walks the whole tree for every page, and its walk
// order ("a/x" before "a.b") is not the key order its page tokens assume,
// so a large listing could skip objects.
func listLocal(ctx context.Context, root, prefix string) ([]ObjectInfo, error) {
	start := root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(root, filepath.FromSlash(prefix[:i]))
	}
	var objs []ObjectInfo
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // nothing under this prefix, or removed meanwhile
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if p == start || strings.HasPrefix(key+"/", prefix) || strings.HasPrefix(prefix, key+"/") {
				return nil
			}
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(key, prefix) ||
			localTempName.MatchString(key) || strings.Contains(key, fileblobEscape) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while we walked
		}
		if err != nil {
			return err
		}
		objs = append(objs, ObjectInfo{Name: key, Size: info.Size()})
		return nil
	})
	return objs, err
}
