package s3driver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"gocloud.dev/blob/driver"

	"logbackup/storage/internal/drvhttp"
)

const (
	// DefaultPartSize is S3's smallest part: an object that fits is one
	// PUT; a larger one a multipart upload of parts of it.
	DefaultPartSize = 5 << 20
	// maxParts is S3's limit on a multipart upload.
	maxParts = 10000
	// defaultConcurrency parts are uploaded at once unless the writer's
	// options ask otherwise.
	defaultConcurrency = 2
	// abortTimeout bounds the abort of an abandoned multipart upload,
	// which runs after the writer's own context may be gone: parts left
	// behind are billed until a lifecycle rule removes them.
	abortTimeout = 10 * time.Second
)

// writer buffers up to one part. An object that fits in it is uploaded
// by Close in one PUT; a larger one starts a multipart upload when the
// part fills, uploads up to concurrency parts at once, and Close uploads
// the last and completes it. Nothing is committed before Close, and a
// Close whose context is done, or after any part failed, commits nothing
// and aborts the upload: the object, or the one it replaces, stays as it
// was.
type writer struct {
	ctx         context.Context
	b           *bucket
	key         string
	contentType string
	opts        *driver.WriterOptions
	partSize    int
	buf         []byte

	uploadID string
	nextPart int           // the number of the part buf will be
	slots    chan struct{} // one per part upload in flight
	wg       sync.WaitGroup
	mu       sync.Mutex
	etags    []string // by part number - 1
	err      error    // the first failure: every later call returns it
	free     [][]byte // part buffers uploaded, for the next parts
}

func (b *bucket) NewTypedWriter(ctx context.Context, key, contentType string, opts *driver.WriterOptions) (driver.Writer, error) {
	if opts.BeforeWrite != nil {
		if err := opts.BeforeWrite(noAs); err != nil {
			return nil, err
		}
	}
	part := opts.BufferSize
	if part < DefaultPartSize {
		part = DefaultPartSize
	}
	conc := opts.MaxConcurrency
	if conc <= 0 {
		conc = defaultConcurrency
	}
	return &writer{ctx: ctx, b: b, key: key, contentType: contentType, opts: opts, partSize: part,
		nextPart: 1, slots: make(chan struct{}, conc)}, nil
}

func (w *writer) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if err := w.failed(); err != nil {
			return n, err
		}
		if err := w.ctx.Err(); err != nil {
			return n, err
		}
		if len(w.buf) == w.partSize {
			// Full, and more is coming: not the last part.
			if err := w.uploadPart(); err != nil {
				w.fail(err)
				return n, err
			}
		}
		k := min(len(p), w.partSize-len(w.buf))
		w.buf = drvhttp.Grow(w.buf, k, w.partSize)
		w.buf = append(w.buf, p[:k]...)
		n += k
		p = p[k:]
	}
	return n, nil
}

func (w *writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *writer) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

// uploadPart hands the full buffer to a part upload, starting the
// multipart upload first if this is the first part. It waits for a slot,
// so at most concurrency parts and the one filling are held.
func (w *writer) uploadPart() error {
	if w.uploadID == "" {
		id, err := w.create()
		if err != nil {
			return err
		}
		w.uploadID = id
	}
	if w.nextPart > maxParts {
		return fmt.Errorf("s3: %s: more than %d parts of %d bytes", w.key, maxParts, w.partSize)
	}
	select {
	case w.slots <- struct{}{}:
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
	num, data := w.nextPart, w.buf
	w.nextPart++
	w.mu.Lock()
	w.etags = append(w.etags, "")
	if n := len(w.free); n > 0 {
		w.buf, w.free = w.free[n-1][:0], w.free[:n-1]
	} else {
		w.buf = nil
	}
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() { <-w.slots }()
		etag, err := w.putPart(num, data)
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			if w.err == nil {
				w.err = err
			}
			return
		}
		w.etags[num-1] = etag
		w.free = append(w.free, data)
	}()
	return nil
}

// header is what an object is written with: its type, the writer's
// options, and the bucket's encryption, class and ACL.
func (w *writer) header() http.Header {
	h := http.Header{}
	h.Set("Content-Type", w.contentType)
	for k, v := range map[string]string{
		"Cache-Control": w.opts.CacheControl, "Content-Disposition": w.opts.ContentDisposition,
		"Content-Encoding": w.opts.ContentEncoding, "Content-Language": w.opts.ContentLanguage,
		"X-Amz-Storage-Class": w.b.opts.StorageClass, "X-Amz-Acl": w.b.opts.ACL,
		"X-Amz-Server-Side-Encryption":                w.b.opts.SSE,
		"X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id": w.b.opts.KMSKeyID,
	} {
		if v != "" {
			h.Set(k, v)
		}
	}
	for k, v := range w.opts.Metadata {
		h.Set("X-Amz-Meta-"+k, v)
	}
	return h
}

// create is CreateMultipartUpload.
func (w *writer) create() (string, error) {
	resp, err := w.b.send(w.ctx, request{method: http.MethodPost, u: w.b.objectURL(w.key, url.Values{"uploads": {""}}),
		header: w.header()}, http.StatusOK)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return "", &SendError{Method: http.MethodPost, Err: err}
	}
	var res struct {
		UploadID string `xml:"UploadId"`
	}
	if err := xml.Unmarshal(body, &res); err != nil || res.UploadID == "" {
		return "", fmt.Errorf("s3: %s: the answer to starting a multipart upload has no upload id", w.key)
	}
	return res.UploadID, nil
}

// putPart is UploadPart; it returns the part's ETag.
func (w *writer) putPart(num int, data []byte) (string, error) {
	q := url.Values{"partNumber": {strconv.Itoa(num)}, "uploadId": {w.uploadID}}
	resp, err := w.b.send(w.ctx, request{method: http.MethodPut, u: w.b.objectURL(w.key, q), body: data}, http.StatusOK)
	if err != nil {
		return "", err
	}
	drvhttp.Drain(resp)
	etag := resp.Header.Get("ETag")
	if etag == "" {
		return "", fmt.Errorf("s3: %s: part %d was answered without an ETag", w.key, num)
	}
	return etag, nil
}

func (w *writer) Close() error {
	if w.uploadID == "" {
		if err := w.failed(); err != nil {
			return err
		}
		if err := w.ctx.Err(); err != nil {
			return err // abandoned: commit nothing
		}
		return w.put()
	}
	err := w.failed()
	if err == nil && len(w.buf) > 0 {
		err = w.uploadPart()
	}
	w.wg.Wait()
	if err == nil {
		err = w.failed()
	}
	if err == nil {
		err = w.ctx.Err()
	}
	if err == nil {
		err = w.complete()
	}
	if err != nil {
		w.abort()
		return err
	}
	return nil
}

// put is PutObject with the whole (small) object.
func (w *writer) put() error {
	h := w.header()
	if len(w.opts.ContentMD5) > 0 {
		h.Set("Content-Md5", base64.StdEncoding.EncodeToString(w.opts.ContentMD5))
	}
	if w.opts.IfNotExist {
		h.Set("If-None-Match", "*")
	}
	body := w.buf
	if body == nil {
		body = []byte{}
	}
	resp, err := w.b.send(w.ctx, request{method: http.MethodPut, u: w.b.objectURL(w.key, nil), body: body, header: h}, http.StatusOK)
	if err != nil {
		return err
	}
	drvhttp.Drain(resp)
	return nil
}

// complete is CompleteMultipartUpload. S3 may answer 200 and still fail
// it: the error is then in the body.
func (w *writer) complete() error {
	var doc strings.Builder
	doc.WriteString(`<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">`)
	for i, etag := range w.etags {
		doc.WriteString("<Part><ETag>")
		_ = xml.EscapeText(&doc, []byte(etag))
		doc.WriteString("</ETag><PartNumber>")
		doc.WriteString(strconv.Itoa(i + 1))
		doc.WriteString("</PartNumber></Part>")
	}
	doc.WriteString(`</CompleteMultipartUpload>`)
	h := http.Header{}
	h.Set("Content-Type", "application/xml")
	if w.opts.IfNotExist {
		h.Set("If-None-Match", "*")
	}
	resp, err := w.b.send(w.ctx, request{method: http.MethodPost, u: w.b.objectURL(w.key, url.Values{"uploadId": {w.uploadID}}),
		body: []byte(doc.String()), header: h}, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		// The upload may or may not be complete: the caller's retry
		// writes the object again either way.
		return &SendError{Method: http.MethodPost, Err: err}
	}
	if err := errorInBody(http.MethodPost, bytes.TrimSpace(body)); err != nil {
		return err
	}
	return nil
}

// abort is AbortMultipartUpload, on a context of its own: it must run
// when the writer's was cancelled, which is how a write is abandoned.
func (w *writer) abort() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), abortTimeout)
	defer cancel()
	resp, err := w.b.send(ctx, request{method: http.MethodDelete,
		u: w.b.objectURL(w.key, url.Values{"uploadId": {w.uploadID}})}, http.StatusNoContent, http.StatusOK)
	if err == nil {
		drvhttp.Drain(resp)
	}
	// A failed abort leaves parts behind, which only cost space until a
	// lifecycle rule (AbortIncompleteMultipartUpload) removes them; the
	// write has failed already and says so.
}

// bytesReader is a fresh reader over b for each attempt to send it.
func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
