package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"logbackup/playground"
	"logbackup/tests/realstorage"
)

// playgroundOn runs README's main job with a real storage server as the
// backup storage, as a user pointing --storage at their MinIO, Azurite
// or fake-gcs-server would: it must end with "verify: OK", and no
// credential may appear in its output or the agents' logs.
func playgroundOn(t *testing.T, url string, secrets []string) {
	dir := t.TempDir()
	out := &scraper{seen: map[string]bool{}, stop: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := playground.Run(ctx, playground.Options{Dir: dir, Storage: url, Duration: 3 * time.Second, Rate: 50, FlushInterval: time.Second}, out)
	close(out.stop)
	out.wg.Wait()
	realstorage.NoSecret(t, "playground output", out.String(), secrets...)
	out.mu.Lock()
	if len(out.pages) == 0 {
		t.Errorf("no agent's /metrics or /status was read while the playground ran")
	}
	for page, body := range out.pages {
		realstorage.NoSecret(t, page, body, secrets...)
	}
	out.mu.Unlock()
	if err != nil {
		t.Fatalf("playground: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "verify: OK") {
		t.Fatalf("no verify: OK in:\n%s", out.String())
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) < 3 {
		t.Fatalf("agent logs: %v", logs)
	}
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		realstorage.NoSecret(t, l, string(b), secrets...)
	}
	// The CLI reads the same storage back.
	got := brRun{t: t}.ok("stream", "verify", "--storage", url)
	realstorage.NoSecret(t, "br stream verify", got, secrets...)
	if !strings.Contains(got, "chain proven unbroken") {
		t.Fatalf("verify output:\n%s", got)
	}
}

// scraper is the playground's output; for every agent address printed
// it reads that agent's /metrics and /status until stopped, keeping the
// last page of each read while the agents wrote to the storage.
type scraper struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	seen  map[string]bool
	pages map[string]string
	stop  chan struct{}
	wg    sync.WaitGroup
}

var agentAddr = regexp.MustCompile(`agent of store \d+: http://(127\.0\.0\.1:\d+)/metrics`)

func (s *scraper) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.buf.Write(p)
	for _, m := range agentAddr.FindAllStringSubmatch(s.buf.String(), -1) {
		if !s.seen[m[1]] {
			s.seen[m[1]] = true
			s.wg.Add(1)
			go s.scrape(m[1])
		}
	}
	return n, err
}

func (s *scraper) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *scraper) scrape(addr string) {
	defer s.wg.Done()
	c := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, page := range []string{"/metrics", "/status"} {
			resp, err := c.Get("http://" + addr + page)
			if err != nil {
				continue
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				s.mu.Lock()
				if s.pages == nil {
					s.pages = map[string]string{}
				}
				s.pages[addr+page] = string(b)
				s.mu.Unlock()
			}
		}
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
	}
}

func TestPlaygroundMinIO(t *testing.T) {
	m := realstorage.StartMinIO(t)
	m.CreateBucket(t, "backup")
	playgroundOn(t, m.URL("backup", "log"), m.Secrets())
}

func TestPlaygroundAzurite(t *testing.T) {
	a := realstorage.StartAzurite(t)
	a.CreateContainer(t, "backup")
	playgroundOn(t, a.URL("backup", "log"), a.Secrets())
}

func TestPlaygroundFakeGCS(t *testing.T) {
	g := realstorage.StartFakeGCS(t)
	g.CreateBucket(t, "backup")
	playgroundOn(t, g.URL("backup", "log"), nil)
}
