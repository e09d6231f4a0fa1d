// Package azuretest runs a loopback fake of Azure Blob Storage for tests:
// enough of the Blob REST API for what the azblob SDK and gocloud's
// azureblob driver call (Put Blob, Put Block, Put Block List, Get Blob with
// ranges, Get Blob Properties, List Blobs, Delete Blob, Create Container),
// Shared Key authentication (verified) and SAS tokens (accepted), customer
// provided keys enforced on reads, fault injection by status, method and
// count, and a record of every request's headers.
//
// URLs are IP-style, as Azurite's: http://127.0.0.1:PORT/<account>/<container>/<blob>.
package azuretest

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// The fixture's account. The key is valid base64, as Azure's are; tests
// use it to prove credentials never leak.
const (
	Account = "logbackupacct"
)

// AccountKey is the account's shared key (base64 of a fixed secret).
var AccountKey = base64.StdEncoding.EncodeToString([]byte("azuretest-account-key-Do-Not-Print-Me"))

// Fault makes the server misbehave for matching requests.
type Fault struct {
	// Status answers with this HTTP status and an Azure error body. Code
	// is the x-ms-error-code; empty picks the usual one for the status
	// (403 AuthorizationFailure, 404 ContainerNotFound, 409
	// OperationNotAllowed... 500 InternalError, 503 ServerBusy).
	Status int
	Code   string
	// Drop closes the connection without an answer, after reading the
	// request.
	Drop bool
	// Method, if set, limits the fault to that HTTP method.
	Method string
	// Match, if set, further selects requests. It runs under the server's
	// lock and must not call the Server.
	Match func(*http.Request) bool
	// Remaining is how many matching requests fail; -1 = all of them.
	Remaining int
}

// Request is what the server recorded of one request.
type Request struct {
	Method string
	Path   string // escaped, as sent: /<account>/<container>/<blob>
	Query  url.Values
	Header http.Header
	// Op names the Blob API operation ("PutBlob", "PutBlock",
	// "PutBlockList", "GetBlob", "GetBlobProperties", "ListBlobs",
	// "DeleteBlob", "CreateContainer", or "" when unrecognised).
	Op string
	// Faulted says a fault answered it.
	Faulted bool
}

// Server is a running fake.
type Server struct {
	endpoint string
	srv      *http.Server
	key      []byte

	mu         sync.Mutex
	containers map[string]*container
	fault      *Fault
	requests   []Request
	faults     int
}

type container struct {
	blobs map[string]*blobObj
	// staged blocks per blob name, by block id
	staged map[string]map[string][]byte
}

type blobObj struct {
	data        []byte
	contentType string
	contentMD5  []byte
	etag        string
	modified    time.Time
	tier        string
	scope       string
	keySHA256   string // customer-provided key's hash, if encrypted with one
}

// Start serves on 127.0.0.1 with the given containers; it stops when the
// test ends.
func Start(t testing.TB, containers ...string) *Server {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(AccountKey)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{key: key, containers: map[string]*container{}}
	for _, c := range containers {
		s.CreateContainer(c)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("azuretest: listen: %v", err)
	}
	s.endpoint = "http://" + lis.Addr().String() + "/" + Account
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.Serve(lis)
	}()
	t.Cleanup(func() {
		// Shutdown, not Close: a connection whose upload the client
		// abandoned mid-body (a failing stream's cancelled Put Block) is
		// still in net/http's half-close wait, 500 ms, and Close would
		// leave its goroutine to the package's leak check (seen under
		// -race). Shutdown waits for it; Close ends whatever is left.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(ctx)
		_ = s.srv.Close()
		<-done
	})
	return s
}

// Endpoint is the service URL, "http://127.0.0.1:PORT/<account>".
func (s *Server) Endpoint() string { return s.endpoint }

// URL is a BR-style azblob:// URL for container/prefix with the endpoint,
// account name and shared key as parameters.
func (s *Server) URL(containerName, prefix string) string {
	q := url.Values{}
	q.Set("endpoint", s.endpoint)
	q.Set("account-name", Account)
	q.Set("account-key", AccountKey)
	u := url.URL{Scheme: "azblob", Host: containerName, RawQuery: q.Encode()}
	if prefix != "" {
		u.Path = "/" + prefix
	}
	return u.String()
}

// CreateContainer adds an empty container (no-op if it exists).
func (s *Server) CreateContainer(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.containers[name] == nil {
		s.containers[name] = &container{blobs: map[string]*blobObj{}, staged: map[string]map[string][]byte{}}
	}
}

// SetFault installs a fault, replacing any previous one.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = &f
}

// ClearFault removes the fault.
func (s *Server) ClearFault() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = nil
}

// Requests returns a copy of every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// ResetRequests forgets the recorded requests.
func (s *Server) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}

// Faults counts the requests a fault answered.
func (s *Server) Faults() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// Blob is what the server holds for one blob.
type Blob struct {
	Data        []byte
	ContentType string
	AccessTier  string
	// EncryptionScope and KeySHA256 (base64) say how it was encrypted.
	EncryptionScope string
	KeySHA256       string
}

// Blob returns a committed blob's content and properties.
func (s *Server) Blob(containerName, name string) (Blob, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[containerName]
	if c == nil {
		return Blob{}, false
	}
	b := c.blobs[name]
	if b == nil {
		return Blob{}, false
	}
	return Blob{Data: append([]byte(nil), b.data...), ContentType: b.contentType, AccessTier: b.tier,
		EncryptionScope: b.scope, KeySHA256: b.keySHA256}, true
}

// Names lists a container's committed blob names in order.
func (s *Server) Names(containerName string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[containerName]
	if c == nil {
		return nil
	}
	return sortedNames(c.blobs, "")
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	op := operation(r)
	rec := Request{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone(), Op: op}
	f := s.takeFault(r)
	rec.Faulted = f != nil
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
	if f != nil {
		if f.Drop {
			drop(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		writeError(w, r, f.Status, f.Code, "injected by azuretest")
		return
	}
	if status, code, msg := s.authorize(r); status != 0 {
		_, _ = io.Copy(io.Discard, r.Body)
		writeError(w, r, status, code, msg)
		return
	}
	s.handle(w, r, op)
}

func (s *Server) takeFault(r *http.Request) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if f == nil || f.Remaining == 0 || (f.Method != "" && f.Method != r.Method) || (f.Match != nil && !f.Match(r)) {
		return nil
	}
	if f.Remaining > 0 {
		f.Remaining--
	}
	s.faults++
	cp := *f
	return &cp
}

var defaultCodes = map[int]string{
	http.StatusBadRequest:            "InvalidInput",
	http.StatusUnauthorized:          "NoAuthenticationInformation",
	http.StatusForbidden:             "AuthorizationFailure",
	http.StatusNotFound:              "ContainerNotFound",
	http.StatusConflict:              "OperationNotAllowedInCurrentState",
	http.StatusRequestEntityTooLarge: "RequestBodyTooLarge",
	http.StatusServiceUnavailable:    "ServerBusy",
}

// writeError answers as Azure does: the code in x-ms-error-code and, but
// for HEAD, an XML body.
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if code == "" {
		code = defaultCodes[status]
		if code == "" {
			code = "InternalError"
		}
	}
	w.Header().Set("x-ms-error-code", code)
	w.Header().Set("x-ms-request-id", "azuretest")
	w.Header().Set("x-ms-version", apiVersion(r))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `<?xml version="1.0" encoding="utf-8"?><Error><Code>%s</Code><Message>%s</Message></Error>`, code, xmlEscape(msg))
}

func apiVersion(r *http.Request) string {
	if v := r.Header.Get("x-ms-version"); v != "" {
		return v
	}
	return "2023-11-03"
}

func drop(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, r, http.StatusInternalServerError, "", "drop not possible")
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// operation names the Blob API call r is.
func operation(r *http.Request) string {
	q := r.URL.Query()
	_, blobName := splitPath(r.URL.Path)
	comp, restype := q.Get("comp"), q.Get("restype")
	switch {
	case restype == "container" && comp == "list" && r.Method == http.MethodGet:
		return "ListBlobs"
	case restype == "container" && comp == "" && r.Method == http.MethodPut:
		return "CreateContainer"
	case blobName == "":
		return ""
	case r.Method == http.MethodPut && comp == "block":
		return "PutBlock"
	case r.Method == http.MethodPut && comp == "blocklist":
		return "PutBlockList"
	case r.Method == http.MethodPut && comp == "":
		return "PutBlob"
	case r.Method == http.MethodGet && comp == "":
		return "GetBlob"
	case r.Method == http.MethodHead && comp == "":
		return "GetBlobProperties"
	case r.Method == http.MethodDelete && comp == "":
		return "DeleteBlob"
	}
	return ""
}

// splitPath returns the container and the (unescaped) blob name of a
// path /<account>/<container>[/<blob>].
func splitPath(p string) (containerName, blobName string) {
	p = strings.TrimPrefix(p, "/")
	p = strings.TrimPrefix(p, Account)
	p = strings.TrimPrefix(p, "/")
	containerName, blobName, _ = strings.Cut(p, "/")
	return containerName, blobName
}

var xmlEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;")

func xmlEscape(s string) string { return xmlEscaper.Replace(s) }
