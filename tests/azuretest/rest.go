package azuretest

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// maxBody bounds what one request may upload (Azure allows 5000 MiB for
// Put Blob; a test never needs that much).
const maxBody = 512 << 20

func (s *Server) handle(w http.ResponseWriter, r *http.Request, op string) {
	w.Header().Set("x-ms-request-id", "azuretest")
	w.Header().Set("x-ms-version", apiVersion(r))
	w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
	containerName, blobName := splitPath(r.URL.Path)
	if op == "" {
		_, _ = io.Copy(io.Discard, r.Body)
		writeError(w, r, http.StatusBadRequest, "UnsupportedHttpVerb", "azuretest does not implement this operation")
		return
	}
	if op == "CreateContainer" {
		s.mu.Lock()
		exists := s.containers[containerName] != nil
		s.mu.Unlock()
		if exists {
			writeError(w, r, http.StatusConflict, "ContainerAlreadyExists", "container exists")
			return
		}
		s.CreateContainer(containerName)
		w.WriteHeader(http.StatusCreated)
		return
	}
	var body []byte
	if r.Method == http.MethodPut {
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			return // the client went away
		}
		if len(body) > maxBody {
			writeError(w, r, http.StatusRequestEntityTooLarge, "RequestBodyTooLarge", "body too large")
			return
		}
		if md := r.Header.Get("Content-MD5"); md != "" {
			sum := md5.Sum(body)
			if md != base64.StdEncoding.EncodeToString(sum[:]) {
				writeError(w, r, http.StatusBadRequest, "Md5Mismatch", "Content-MD5 does not match the body")
				return
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[containerName]
	if c == nil {
		writeError(w, r, http.StatusNotFound, "ContainerNotFound", "the container does not exist")
		return
	}
	switch op {
	case "ListBlobs":
		s.list(w, r, c, containerName)
	case "PutBlob":
		if bt := r.Header.Get("x-ms-blob-type"); bt != "BlockBlob" {
			writeError(w, r, http.StatusBadRequest, "InvalidHeaderValue", "x-ms-blob-type must be BlockBlob")
			return
		}
		s.commit(w, r, c, blobName, body)
	case "PutBlock":
		id := r.URL.Query().Get("blockid")
		if _, err := base64.StdEncoding.DecodeString(id); id == "" || err != nil {
			writeError(w, r, http.StatusBadRequest, "InvalidQueryParameterValue", "blockid must be base64")
			return
		}
		if _, _, status, code := customerKey(r); status != 0 {
			writeError(w, r, status, code, "bad customer-provided key headers")
			return
		}
		if c.staged[blobName] == nil {
			c.staged[blobName] = map[string][]byte{}
		}
		c.staged[blobName][id] = body
		w.WriteHeader(http.StatusCreated)
	case "PutBlockList":
		var list struct {
			Items []struct {
				XMLName xml.Name
				ID      string `xml:",chardata"`
			} `xml:",any"`
		}
		if err := xml.Unmarshal(body, &list); err != nil {
			writeError(w, r, http.StatusBadRequest, "InvalidXmlDocument", "block list is not XML")
			return
		}
		var data []byte
		for _, it := range list.Items {
			blk, ok := c.staged[blobName][it.ID]
			if !ok || it.XMLName.Local == "Committed" {
				writeError(w, r, http.StatusBadRequest, "InvalidBlockList", "unknown block "+it.ID)
				return
			}
			data = append(data, blk...)
		}
		if s.commit(w, r, c, blobName, data) {
			delete(c.staged, blobName)
		}
	case "GetBlob", "GetBlobProperties":
		b := c.blobs[blobName]
		if b == nil {
			writeError(w, r, http.StatusNotFound, "BlobNotFound", "the blob does not exist")
			return
		}
		if status, code := checkReadKey(r, b); status != 0 {
			writeError(w, r, status, code, "customer-provided key required or wrong")
			return
		}
		s.read(w, r, b, op == "GetBlobProperties")
	case "DeleteBlob":
		if c.blobs[blobName] == nil {
			writeError(w, r, http.StatusNotFound, "BlobNotFound", "the blob does not exist")
			return
		}
		delete(c.blobs, blobName)
		w.WriteHeader(http.StatusAccepted)
	}
}

var tiers = map[string]bool{"Hot": true, "Cool": true, "Cold": true, "Archive": true}

// commit stores a blob from Put Blob or Put Block List; it reports
// whether it did.
func (s *Server) commit(w http.ResponseWriter, r *http.Request, c *container, name string, data []byte) bool {
	h := r.Header
	tier := h.Get("x-ms-access-tier")
	if tier != "" && !tiers[tier] {
		writeError(w, r, http.StatusBadRequest, "InvalidHeaderValue", "x-ms-access-tier "+tier)
		return false
	}
	_, keySHA, status, code := customerKey(r)
	if status != 0 {
		writeError(w, r, status, code, "bad customer-provided key headers")
		return false
	}
	ct := h.Get("x-ms-blob-content-type")
	if ct == "" && r.URL.Query().Get("comp") == "" {
		ct = h.Get("Content-Type")
	}
	if ct == "" {
		ct = "application/octet-stream"
	}
	var md []byte
	if v := h.Get("x-ms-blob-content-md5"); v != "" {
		md, _ = base64.StdEncoding.DecodeString(v)
	} else if r.URL.Query().Get("comp") == "" {
		sum := md5.Sum(data)
		md = sum[:]
	}
	now := time.Now().UTC()
	b := &blobObj{data: data, contentType: ct, contentMD5: md, modified: now,
		etag: fmt.Sprintf(`"0x%X"`, now.UnixNano()), tier: tier, scope: h.Get("x-ms-encryption-scope"), keySHA256: keySHA}
	if b.tier == "" {
		b.tier = "Hot"
	}
	c.blobs[name] = b
	w.Header().Set("ETag", b.etag)
	w.Header().Set("Last-Modified", now.Format(http.TimeFormat))
	w.Header().Set("x-ms-request-server-encrypted", "true")
	if keySHA != "" {
		w.Header().Set("x-ms-encryption-key-sha256", keySHA)
	}
	if b.scope != "" {
		w.Header().Set("x-ms-encryption-scope", b.scope)
	}
	if len(md) > 0 && r.URL.Query().Get("comp") == "" {
		w.Header().Set("Content-MD5", base64.StdEncoding.EncodeToString(md))
	}
	w.WriteHeader(http.StatusCreated)
	return true
}

// customerKey checks a request's customer-provided key headers: all
// three or none, AES256, and a hash that matches the key. It returns the
// key and its hash (base64).
func customerKey(r *http.Request) (key, sha string, status int, code string) {
	h := r.Header
	key, sha, alg := h.Get("x-ms-encryption-key"), h.Get("x-ms-encryption-key-sha256"), h.Get("x-ms-encryption-algorithm")
	if key == "" && sha == "" && alg == "" {
		return "", "", 0, ""
	}
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(raw) != 32 {
		return "", "", http.StatusBadRequest, "InvalidHeaderValue"
	}
	sum := sha256.Sum256(raw)
	if sha != base64.StdEncoding.EncodeToString(sum[:]) {
		return "", "", http.StatusBadRequest, "InvalidHeaderValue"
	}
	// Reads may leave the algorithm out; writes must give it.
	if alg != "AES256" && (alg != "" || r.Method == http.MethodPut) {
		return "", "", http.StatusBadRequest, "InvalidHeaderValue"
	}
	return key, sha, 0, ""
}

// checkReadKey enforces what Azure does for reads of a blob: one written
// with a customer-provided key needs that key, and one written without
// must not be given one.
func checkReadKey(r *http.Request, b *blobObj) (int, string) {
	_, sha, status, code := customerKey(r)
	switch {
	case status != 0:
		return status, code
	case b.keySHA256 == "" && sha != "":
		return http.StatusConflict, "BlobDoesNotUseCustomerSpecifiedEncryption"
	case b.keySHA256 != "" && sha == "":
		return http.StatusConflict, "BlobUsesCustomerSpecifiedEncryption"
	case b.keySHA256 != sha:
		return http.StatusForbidden, "AuthorizationFailure"
	}
	return 0, ""
}

func (s *Server) read(w http.ResponseWriter, r *http.Request, b *blobObj, headOnly bool) {
	h := w.Header()
	h.Set("ETag", b.etag)
	h.Set("Last-Modified", b.modified.Format(http.TimeFormat))
	h.Set("x-ms-creation-time", b.modified.Format(http.TimeFormat))
	h.Set("Content-Type", b.contentType)
	h.Set("x-ms-blob-type", "BlockBlob")
	h.Set("Accept-Ranges", "bytes")
	h.Set("x-ms-server-encrypted", "true")
	if b.keySHA256 != "" {
		h.Set("x-ms-encryption-key-sha256", b.keySHA256)
	}
	if b.scope != "" {
		h.Set("x-ms-encryption-scope", b.scope)
	}
	size := int64(len(b.data))
	if headOnly {
		h.Set("x-ms-access-tier", b.tier)
		if len(b.contentMD5) > 0 {
			h.Set("Content-MD5", base64.StdEncoding.EncodeToString(b.contentMD5))
		}
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	rng := r.Header.Get("x-ms-range")
	if rng == "" {
		rng = r.Header.Get("Range")
	}
	if rng == "" {
		if len(b.contentMD5) > 0 {
			h.Set("Content-MD5", base64.StdEncoding.EncodeToString(b.contentMD5))
		}
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b.data)
		return
	}
	start, end, ok := parseRange(rng)
	if !ok {
		writeError(w, r, http.StatusBadRequest, "InvalidHeaderValue", "bad range "+rng)
		return
	}
	if start >= size {
		writeError(w, r, http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "the range cannot be satisfied")
		return
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
	h.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	w.WriteHeader(http.StatusPartialContent)
	_, _ = w.Write(b.data[start : end+1])
}

// parseRange reads "bytes=a-b" or "bytes=a-" (end -1).
func parseRange(v string) (start, end int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	if b == "" {
		return start, -1, true
	}
	end, err = strconv.ParseInt(b, 10, 64)
	if err != nil || end < start {
		return 0, 0, false
	}
	return start, end, true
}

type listBlob struct {
	Name       string `xml:"Name"`
	Properties struct {
		CreationTime  string `xml:"Creation-Time"`
		LastModified  string `xml:"Last-Modified"`
		Etag          string `xml:"Etag"`
		ContentLength int64  `xml:"Content-Length"`
		ContentType   string `xml:"Content-Type"`
		ContentMD5    string `xml:"Content-MD5,omitempty"`
		BlobType      string `xml:"BlobType"`
		AccessTier    string `xml:"AccessTier"`
		ServerEncrypt bool   `xml:"ServerEncrypted"`
	} `xml:"Properties"`
}

type listResult struct {
	XMLName       xml.Name `xml:"EnumerationResults"`
	ContainerName string   `xml:"ContainerName,attr"`
	Prefix        string   `xml:"Prefix"`
	Marker        string   `xml:"Marker"`
	MaxResults    int      `xml:"MaxResults"`
	Delimiter     string   `xml:"Delimiter,omitempty"`
	Blobs         struct {
		Blob   []listBlob `xml:"Blob"`
		Prefix []struct {
			Name string `xml:"Name"`
		} `xml:"BlobPrefix"`
	} `xml:"Blobs"`
	NextMarker string `xml:"NextMarker"`
}

// list is List Blobs: names in byte order from marker on, a page of at
// most maxresults, with "directories" folded when a delimiter is given.
func (s *Server) list(w http.ResponseWriter, r *http.Request, c *container, containerName string) {
	q := r.URL.Query()
	prefix, marker, delim := q.Get("prefix"), q.Get("marker"), q.Get("delimiter")
	max := 5000
	if v := q.Get("maxresults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeError(w, r, http.StatusBadRequest, "OutOfRangeQueryParameterValue", "maxresults")
			return
		}
		max = min(n, 5000)
	}
	res := listResult{ContainerName: containerName, Prefix: prefix, Marker: marker, MaxResults: max, Delimiter: delim}
	seenDirs := map[string]bool{}
	n := 0
	for _, name := range sortedNames(c.blobs, prefix) {
		if name < marker {
			continue
		}
		if n == max {
			res.NextMarker = name
			break
		}
		if delim != "" {
			if i := strings.Index(name[len(prefix):], delim); i >= 0 {
				dir := name[:len(prefix)+i+len(delim)]
				if !seenDirs[dir] {
					seenDirs[dir] = true
					res.Blobs.Prefix = append(res.Blobs.Prefix, struct {
						Name string `xml:"Name"`
					}{dir})
					n++
				}
				continue
			}
		}
		b := c.blobs[name]
		var lb listBlob
		lb.Name = name
		p := &lb.Properties
		p.CreationTime = b.modified.Format(http.TimeFormat)
		p.LastModified = b.modified.Format(http.TimeFormat)
		p.Etag = b.etag
		p.ContentLength = int64(len(b.data))
		p.ContentType = b.contentType
		if len(b.contentMD5) > 0 {
			p.ContentMD5 = base64.StdEncoding.EncodeToString(b.contentMD5)
		}
		p.BlobType, p.AccessTier, p.ServerEncrypt = "BlockBlob", b.tier, true
		res.Blobs.Blob = append(res.Blobs.Blob, lb)
		n++
	}
	var buf bytes.Buffer
	buf.WriteString(xml.Header)
	if err := xml.NewEncoder(&buf).Encode(res); err != nil {
		writeError(w, r, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}

func sortedNames(m map[string]*blobObj, prefix string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
