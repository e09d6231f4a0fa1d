package storage

import (
	"context"
	"errors"
	"fmt"
	"io"

	"gocloud.dev/blob"
)

// The upload window of a streamed write. S3 uploads parts of
// streamPartSize with up to streamConcurrency in flight, so an S3 stream
// holds at most (streamConcurrency+1) × streamPartSize = 15 MiB. GCS
// buffers one chunk of streamPartSize; Azure stages blocks of
// azureBlockSize, azureUploadParallel at a time (see azureBackend.writeFrom);
// file storage copies through one buffer of streamCopyBuf.
const (
	streamPartSize    = 5 << 20 // S3's smallest part
	streamConcurrency = 2
	streamCopyBuf     = 256 << 10
)

func (s *blobStorage) WriteFrom(ctx context.Context, name string, size int64, open func() (io.ReadCloser, error)) error {
	if err := s.checkName(name); err != nil {
		return s.fail("write", name, err)
	}
	if size < 0 || open == nil {
		return s.fail("write", name, fmt.Errorf("invalid stream: size %d, source %v", size, open != nil))
	}
	err := s.retry(ctx, "write", func(ctx context.Context) error {
		rc, err := open()
		if err != nil {
			return fmt.Errorf("open the source: %w", err)
		}
		defer rc.Close()
		r := &exactReader{r: rc, left: size, size: size}
		switch {
		case s.local:
			return s.writeLocal(ctx, name, r)
		case s.azure != nil:
			return s.azure.writeFrom(ctx, name, size, r)
		default:
			return s.streamRemote(ctx, name, r)
		}
	})
	if err != nil {
		return s.fail("write", name, err)
	}
	return nil
}

// streamRemote streams r through gocloud's writer. When the copy fails,
// the writer's context is cancelled before Close, which makes every
// driver abandon the upload instead of committing what it has.
func (s *blobStorage) streamRemote(ctx context.Context, name string, r io.Reader) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := &blob.WriterOptions{
		ContentType: "application/octet-stream",
		BufferSize:  streamPartSize, MaxConcurrency: streamConcurrency,
	}
	w, err := s.bucket.NewWriter(wctx, name, opts)
	if err != nil {
		return err
	}
	if _, err := copyStream(w, r); err != nil {
		cancel()
		_ = w.Close()
		return err
	}
	return w.Close()
}

// copyStream copies through one buffer of streamCopyBuf, never through
// ReadFrom or WriteTo, which may bring their own (blob.Writer's is 1 MiB).
func copyStream(w io.Writer, r io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r}, make([]byte, streamCopyBuf))
}

// exactReader passes through the size bytes announced and turns any other
// length into an error, so a short or long source never becomes a short
// or long object.
type exactReader struct {
	r          io.Reader
	left, size int64
	err        error
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if int64(len(p)) > e.left+1 {
		p = p[:e.left+1] // one byte more than announced shows a long source
	}
	n, err := e.r.Read(p)
	if int64(n) > e.left {
		e.err = fmt.Errorf("the source has more than the %d bytes announced", e.size)
		return 0, e.err
	}
	e.left -= int64(n)
	switch {
	case errors.Is(err, io.EOF) && e.left > 0:
		e.err = fmt.Errorf("the source ended after %d of the %d bytes announced", e.size-e.left, e.size)
		return n, e.err
	case err != nil && !errors.Is(err, io.EOF):
		e.err = err
	}
	return n, err
}

// readExact reads all size bytes of r, which must end there.
func readExact(r io.Reader, size int64) ([]byte, error) {
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	var one [1]byte
	if n, err := r.Read(one[:]); n > 0 || (err != nil && !errors.Is(err, io.EOF)) {
		if err == nil {
			err = fmt.Errorf("the source has more than the %d bytes announced", size)
		}
		return nil, err
	}
	return buf, nil
}
