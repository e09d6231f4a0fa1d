package playground

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"logbackup/streamagent/logfile"
)

// agentHeader marks the requests that come through the front (agents and
// the br commands): the loopback S3's faults match only those, so the
// oracle, which reads the S3 server directly, sees the storage as it is.
const agentHeader = "X-Playground-Front"

// objectKind is what a request's object is in a log backup.
type objectKind int

const (
	objOther            objectKind = iota
	objData                        // v1/<date>/<hour>/<store>/….log
	objMeta                        // v1/backupmeta/….meta
	objGlobalCheckpoint            // v1/global_checkpoint/<store>.ts
)

// killPoint is where an armed kill of a store's agent fires.
type killPoint int

const (
	killAfterData killPoint = iota + 1 // a data object is stored; its meta file is not
	killAfterMeta                      // the meta file is stored; no checkpoint moved yet
)

// s3Front is a reverse proxy in front of the loopback S3 server. It sees
// every object the agents write, so the nemesis can kill an agent at an
// exact point of a flush, the oracle can follow the storage checkpoints,
// and a sabotage can drop a write.
type s3Front struct {
	srv      *http.Server
	endpoint string // http://127.0.0.1:port
	prefix   string // "/bucket/prefix/" of the task's objects
	proxy    *httputil.ReverseProxy

	// met is told about every fatal answer (403, 404) an agent got.
	met func(store uint64, status int, at time.Time)
	// stored is told about every object stored through the front.
	stored func(kind objectKind, store uint64, name string)

	mu        sync.Mutex
	kills     map[uint64]armedKill
	dataSince map[uint64]bool // a data object was stored since the store's last meta file
	dropNext  bool            // sabotage: acknowledge the next meta file that lists data, and drop it
	dropped   string
}

type armedKill struct {
	at   killPoint
	fire func()
}

func newS3Front(upstream, bucket, prefix string) (*s3Front, error) {
	up, err := url.Parse(upstream)
	if err != nil {
		return nil, fmt.Errorf("s3 front: upstream %q: %w", upstream, err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("s3 front: listen: %w", err)
	}
	f := &s3Front{endpoint: "http://" + lis.Addr().String(), prefix: "/" + bucket + "/" + strings.Trim(prefix, "/") + "/",
		kills: map[uint64]armedKill{}, dataSince: map[uint64]bool{}}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(up)
			r.Out.Header.Set(agentHeader, "1")
		},
		ModifyResponse: f.answered,
		ErrorLog:       log.New(io.Discard, "", 0), // a killed agent's connection is no news
	}
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = f.srv.Serve(lis) }()
	return f, nil
}

// URL is the storage URL the task uses: upstream's S3 URL with the front's
// endpoint instead.
func (f *s3Front) URL(upstreamURL string) (string, error) {
	u, err := url.Parse(upstreamURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("endpoint", f.endpoint)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (f *s3Front) Close() { _ = f.srv.Close() }

// classify names a request's object and the store that writes it.
func (f *s3Front) classify(path string) (objectKind, uint64, string) {
	name, ok := strings.CutPrefix(path, f.prefix)
	if !ok {
		return objOther, 0, path
	}
	switch {
	case strings.HasPrefix(name, logfile.MetaDir):
		if m, err := logfile.ParseMetaName(name); err == nil {
			return objMeta, m.StoreID, name
		}
	case strings.HasPrefix(name, logfile.GlobalCheckpointDir):
		id := strings.TrimSuffix(strings.TrimPrefix(name, logfile.GlobalCheckpointDir), ".ts")
		if s, err := strconv.ParseUint(id, 10, 64); err == nil {
			return objGlobalCheckpoint, s, name
		}
	case strings.HasPrefix(name, "v1/") && strings.HasSuffix(name, ".log"):
		// v1/<date>/<hour>/<store>/[schema-meta/]<name>.log
		if parts := strings.Split(name, "/"); len(parts) == 5 || len(parts) == 6 {
			if s, err := strconv.ParseUint(parts[3], 10, 64); err == nil {
				return objData, s, name
			}
		}
	}
	return objOther, 0, name
}

func (f *s3Front) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut {
		kind, store, name := f.classify(r.URL.Path)
		if kind == objMeta && f.takeDrop(store, name) {
			// The sabotage: a storage that loses a write it acknowledged.
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("ETag", `"d41d8cd98f00b204e9800998ecf8427e"`)
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	f.proxy.ServeHTTP(w, r)
}

func (f *s3Front) takeDrop(store uint64, name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.dropNext || !f.dataSince[store] {
		return false
	}
	f.dropNext, f.dropped, f.dataSince[store] = false, name, false
	return true
}

// answered runs when S3 has answered a request and before the agent sees
// the answer: the place to kill an agent whose write is durable.
func (f *s3Front) answered(resp *http.Response) error {
	r := resp.Request
	kind, store, name := f.classify(r.URL.Path)
	if resp.StatusCode == http.StatusForbidden || (resp.StatusCode == http.StatusNotFound && r.Method == http.MethodPut) {
		if f.met != nil {
			f.met(store, resp.StatusCode, time.Now())
		}
	}
	if r.Method != http.MethodPut || resp.StatusCode/100 != 2 {
		return nil
	}
	if f.stored != nil {
		f.stored(kind, store, name)
	}
	f.mu.Lock()
	k, armed := f.kills[store]
	fire := false
	switch kind {
	case objData:
		f.dataSince[store] = true
		fire = armed && k.at == killAfterData
	case objMeta:
		f.dataSince[store] = false
		fire = armed && k.at == killAfterMeta
	}
	if fire {
		delete(f.kills, store)
	}
	f.mu.Unlock()
	if fire {
		k.fire() // returns once the agent is dead; it never sees this answer
	}
	return nil
}

// armKill makes the next write of kind at by store's agent kill it
// (fire). It returns a func that waits for that, up to ctx, and reports
// whether it fired; the kill is disarmed if not.
func (f *s3Front) armKill(store uint64, at killPoint, fire func()) func(ctx context.Context) bool {
	fired := make(chan struct{})
	f.mu.Lock()
	f.kills[store] = armedKill{at: at, fire: func() { fire(); close(fired) }}
	f.mu.Unlock()
	return func(ctx context.Context) bool {
		select {
		case <-fired:
			return true
		case <-ctx.Done():
		}
		f.mu.Lock()
		_, still := f.kills[store]
		delete(f.kills, store)
		f.mu.Unlock()
		if still {
			return false
		}
		<-fired // it was taken just now: let the kill finish
		return true
	}
}

// dropNextMeta arms the drop-a-write sabotage.
func (f *s3Front) dropNextMeta() {
	f.mu.Lock()
	f.dropNext = true
	f.mu.Unlock()
}

// droppedMeta names the meta file the sabotage dropped, if any yet.
func (f *s3Front) droppedMeta() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped
}
