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
	// MinPartSize is S3's smallest part.
	MinPartSize = 5 << 20
	// DefaultPartSize is the part size of a writer whose options ask for
	// none; such a writer (a whole object written at once) also sends up
	// to singlePutParts of them as one PUT, as the AWS SDK's transfer
	// manager did (16 MiB): one request instead of four.
	DefaultPartSize = 8 << 20
	singlePutParts  = 2
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

// writer buffers up to one part (a writer with a default part size: up
// to singlePutParts). An object that fits is uploaded by Close in one
// PUT; a larger one starts a multipart upload when the buffer fills,
// uploads up to concurrency parts at once, and Close uploads the last
// and completes it. Nothing is committed before Close, and a
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
	singlePut   int // what is buffered before a multipart upload starts: partSize × k
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
	part, single := opts.BufferSize, opts.BufferSize
	switch {
	case part <= 0:
		part, single = DefaultPartSize, singlePutParts*DefaultPartSize
	case part < MinPartSize:
		part, single = MinPartSize, MinPartSize
	}
	conc := opts.MaxConcurrency
	if conc <= 0 {
		conc = defaultConcurrency
	}
	return &writer{ctx: ctx, b: b, key: key, contentType: contentType, opts: opts, partSize: part,
		singlePut: single, nextPart: 1, slots: make(chan struct{}, conc)}, nil
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
		limit := w.partSize
		if w.uploadID == "" {
			limit = w.singlePut
		}
		if len(w.buf) == limit {
			// Full, and more is coming: not the last part.
			if err := w.uploadParts(); err != nil {
				w.fail(err)
				return n, err
			}
			limit = w.partSize
		}
		k := min(len(p), limit-len(w.buf))
		w.buf = drvhttp.Grow(w.buf, k, limit)
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

// uploadParts hands the buffer to part uploads, starting the multipart
// upload first if these are the first parts: the buffer holds whole
// parts (the last, at Close, may be short).
func (w *writer) uploadParts() error {
	if w.uploadID == "" {
		id, err := w.create()
		if err != nil {
			return err
		}
		w.uploadID = id
	}
	buf := w.buf
	w.buf = nil
	for len(buf) > 0 {
		n := min(len(buf), w.partSize)
		// A full slice expression: a part must not be appended to.
		if err := w.uploadPart(buf[:n:n]); err != nil {
			return err
		}
		buf = buf[n:]
	}
	w.mu.Lock()
	if n := len(w.free); n > 0 {
		w.buf, w.free = w.free[n-1][:0], w.free[:n-1]
	}
	w.mu.Unlock()
	return nil
}

// uploadPart starts the upload of one part. It waits for a slot, so at
// most concurrency parts and the buffer filling are held.
func (w *writer) uploadPart(data []byte) error {
	if w.nextPart > maxParts {
		return fmt.Errorf("s3: %s: more than %d parts of %d bytes", w.key, maxParts, w.partSize)
	}
	select {
	case w.slots <- struct{}{}:
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
	num := w.nextPart
	w.nextPart++
	w.mu.Lock()
	w.etags = append(w.etags, "")
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
		if cap(data) == w.partSize {
			w.free = append(w.free, data) // for the next parts
		}
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
		err = w.uploadParts()
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
