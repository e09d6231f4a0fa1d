package gcsjson

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"gocloud.dev/blob/driver"

	"logbackup/storage/internal/drvhttp"
)

const (
	// defaultChunk is the Go client's default: an object that fits is one
	// multipart request; a larger one a resumable upload in chunks of it.
	defaultChunk = 16 << 20
	// chunkUnit: every chunk but the last must be a multiple of it.
	chunkUnit = 256 << 10
)

// writer buffers up to one chunk. An object that fits in it is uploaded
// by Close in one multipart request; a larger one opens a resumable
// session when the chunk fills, and Close sends the last chunk, which
// finalizes the object. Nothing is committed before Close, and a Close
// whose context is done commits nothing: the object, or the one it
// replaces, stays as it was (an open session expires by itself).
type writer struct {
	ctx         context.Context
	b           *bucket
	key         string
	contentType string
	opts        *driver.WriterOptions
	chunk       int
	buf         []byte
	session     string // the resumable session's URI, once opened
	sent        int64  // bytes the session has persisted
	err         error  // a failed request: every later call returns it
}

func (b *bucket) NewTypedWriter(ctx context.Context, key, contentType string, opts *driver.WriterOptions) (driver.Writer, error) {
	if opts.BeforeWrite != nil {
		if err := opts.BeforeWrite(noAs); err != nil {
			return nil, err
		}
	}
	return &writer{ctx: ctx, b: b, key: key, contentType: contentType, opts: opts, chunk: chunkSize(opts.BufferSize)}, nil
}

// chunkSize rounds a requested buffer size up to a whole number of units.
func chunkSize(n int) int {
	if n <= 0 {
		return defaultChunk
	}
	return (n + chunkUnit - 1) / chunkUnit * chunkUnit
}

func (w *writer) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if w.err != nil {
			return n, w.err
		}
		if err := w.ctx.Err(); err != nil {
			return n, err
		}
		if len(w.buf) == w.chunk {
			// Full, and more is coming: not the last chunk.
			if err := w.flush(false); err != nil {
				w.err = err
				return n, err
			}
		}
		k := min(len(p), w.chunk-len(w.buf))
		w.buf = drvhttp.Grow(w.buf, k, w.chunk)
		w.buf = append(w.buf, p[:k]...)
		n += k
		p = p[k:]
	}
	return n, nil
}

func (w *writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if err := w.ctx.Err(); err != nil {
		return err // abandoned: commit nothing
	}
	if w.session == "" {
		return w.multipart()
	}
	return w.flush(true)
}

// metadata is the object resource sent with the upload.
func (w *writer) metadata() ([]byte, error) {
	o := w.opts
	m := map[string]any{"name": w.key, "contentType": w.contentType}
	for k, v := range map[string]string{
		"cacheControl": o.CacheControl, "contentDisposition": o.ContentDisposition,
		"contentEncoding": o.ContentEncoding, "contentLanguage": o.ContentLanguage,
		"storageClass": w.b.storageClass,
	} {
		if v != "" {
			m[k] = v
		}
	}
	if len(o.Metadata) > 0 {
		m["metadata"] = o.Metadata
	}
	if len(o.ContentMD5) > 0 {
		// GCS checks it and refuses an object that does not match.
		m["md5Hash"] = base64.StdEncoding.EncodeToString(o.ContentMD5)
	}
	return json.Marshal(m)
}

// uploadURL is the upload endpoint for uploadType, with the write's
// conditions and ACL.
func (w *writer) uploadURL(uploadType string) string {
	q := url.Values{"uploadType": {uploadType}}
	if w.b.predefinedACL != "" {
		q.Set("predefinedAcl", w.b.predefinedACL)
	}
	if w.opts.IfNotExist {
		q.Set("ifGenerationMatch", "0")
	}
	return w.b.upload + "b/" + escape(w.b.name) + "/o?" + q.Encode()
}

// multipart uploads the buffered object and its metadata in one request.
func (w *writer) multipart() error {
	md, err := w.metadata()
	if err != nil {
		return fmt.Errorf("gcs: object metadata: %w", err)
	}
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("gcs: multipart boundary: %w", err)
	}
	boundary := hex.EncodeToString(rnd[:])
	head := []byte("--" + boundary + "\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n" + string(md) +
		"\r\n--" + boundary + "\r\nContent-Type: " + w.contentType + "\r\n\r\n")
	tail := []byte("\r\n--" + boundary + "--\r\n")
	body := func() io.Reader {
		return io.MultiReader(bytes.NewReader(head), bytes.NewReader(w.buf), bytes.NewReader(tail))
	}
	req, err := http.NewRequestWithContext(w.ctx, http.MethodPost, w.uploadURL("multipart"), body())
	if err != nil {
		return err
	}
	req.ContentLength = int64(len(head) + len(w.buf) + len(tail))
	// The buffer stays put until Close returns, so the transport may
	// resend the body over a fresh connection if a kept-alive one was
	// closed under it.
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(body()), nil }
	req.Header.Set("Content-Type", "multipart/related; boundary="+boundary)
	resp, err := w.b.send(req, http.StatusOK, http.StatusCreated)
	if err != nil {
		w.err = err
		return err
	}
	drvhttp.Drain(resp)
	return nil
}

// open starts a resumable session.
func (w *writer) open() error {
	md, err := w.metadata()
	if err != nil {
		return fmt.Errorf("gcs: object metadata: %w", err)
	}
	req, err := http.NewRequestWithContext(w.ctx, http.MethodPost, w.uploadURL("resumable"), bytes.NewReader(md))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json; charset=UTF-8")
	req.Header.Set("X-Upload-Content-Type", w.contentType)
	resp, err := w.b.send(req, http.StatusOK, http.StatusCreated)
	if err != nil {
		return err
	}
	drvhttp.Drain(resp)
	loc := resp.Header.Get("Location")
	if loc == "" {
		return fmt.Errorf("gcs: resumable upload of %q: no session URI in the answer", w.key)
	}
	w.session = loc
	return nil
}

// flush sends the buffer to the session: as one more chunk, or as the
// last, which finalizes the object. GCS may persist less than a chunk;
// what it did not keep stays in the buffer and goes with the next.
func (w *writer) flush(final bool) error {
	if w.session == "" {
		if err := w.open(); err != nil {
			return err
		}
	}
	for {
		done, err := w.put(final)
		if err != nil || done || !final {
			return err
		}
		// The last chunk was persisted only in part: send the rest.
	}
}

// put sends the buffer once and drops from it what GCS persisted. done
// means the object is final.
func (w *writer) put(final bool) (done bool, err error) {
	total := "*"
	if final {
		total = strconv.FormatInt(w.sent+int64(len(w.buf)), 10)
	}
	rng := "bytes */" + total // a last chunk with no bytes in it
	if len(w.buf) > 0 {
		rng = fmt.Sprintf("bytes %d-%d/%s", w.sent, w.sent+int64(len(w.buf))-1, total)
	}
	buf := w.buf
	req, err := http.NewRequestWithContext(w.ctx, http.MethodPut, w.session, bytes.NewReader(buf))
	if err != nil {
		return false, err
	}
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	req.Header.Set("Content-Range", rng)
	resp, err := w.b.send(req, http.StatusOK, http.StatusCreated, http.StatusPermanentRedirect)
	if err != nil {
		return false, err
	}
	drvhttp.Drain(resp)
	if resp.StatusCode != http.StatusPermanentRedirect {
		if !final {
			return false, fmt.Errorf("gcs: resumable upload of %q: finalized before its last chunk", w.key)
		}
		w.buf = w.buf[:0]
		return true, nil
	}
	// 308 "resume incomplete": Range says how much is persisted.
	persisted, err := persistedBytes(resp.Header.Get("Range"))
	if err != nil {
		return false, fmt.Errorf("gcs: resumable upload of %q: %w", w.key, err)
	}
	kept := persisted - w.sent
	// It must have kept something, or a loop of resends would never end.
	if kept <= 0 || kept > int64(len(w.buf)) {
		return false, fmt.Errorf("gcs: resumable upload of %q: the server holds %d bytes after %d were sent", w.key, persisted, w.sent+int64(len(w.buf)))
	}
	w.buf = w.buf[:copy(w.buf, w.buf[kept:])]
	w.sent = persisted
	return false, nil
}

// persistedBytes reads a 308's Range ("bytes=0-N"): N+1 bytes are
// persisted; no Range means none.
func persistedBytes(h string) (int64, error) {
	if h == "" {
		return 0, nil
	}
	var first, last int64
	if _, err := fmt.Sscanf(h, "bytes=%d-%d", &first, &last); err != nil || first != 0 || last < 0 {
		return 0, fmt.Errorf("unreadable Range %q in the answer", h)
	}
	return last + 1, nil
}
