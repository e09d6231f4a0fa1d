package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
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
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := playground.Run(ctx, playground.Options{Dir: dir, Storage: url, Duration: 3 * time.Second, Rate: 50, FlushInterval: time.Second}, &out)
	realstorage.NoSecret(t, "playground output", out.String(), secrets...)
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
