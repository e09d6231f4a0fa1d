package streamagent

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"

	"logbackup/meta"
	"logbackup/streamagent/errs"
)

// TestRecoverableCodesDocumented: docs/ERRORS.md (generated from
// streamagent/errs) lists exactly the codes recovered automatically, each
// with what is probed for it.
func TestRecoverableCodesDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/ERRORS.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## Recovered automatically")
	if !ok {
		t.Fatal("docs/ERRORS.md has no 'Recovered automatically' section")
	}
	rows := regexp.MustCompile("(?m)^\\| `([^`]+)` \\| ([^|]+) \\|").FindAllStringSubmatch(section, -1)
	documented := map[errs.Code]string{}
	for _, r := range rows {
		documented[errs.Code(r[1])] = strings.TrimSpace(r[2])
	}
	for code, deps := range recoverable {
		if got, want := documented[code], strings.Join(deps, " + "); got != want {
			t.Errorf("docs/ERRORS.md says %s probes %q; the coordinator probes %q", code, got, want)
		}
	}
	for code := range documented {
		if recoverable[code] == nil {
			t.Errorf("docs/ERRORS.md lists %s as recovered automatically; it is not", code)
		}
	}
}

// TestProbeGap: jittered ±20% around the interval, never past the cap.
func TestProbeGap(t *testing.T) {
	for _, interval := range []time.Duration{25 * time.Millisecond, 5 * time.Second, 9 * time.Second} {
		lo, hi := interval*4/5, min(interval*6/5, maxProbeGap)
		seen := map[bool]bool{}
		for range 2000 {
			g := probeGap(interval)
			if g < lo || g > hi {
				t.Fatalf("gap %s for interval %s, want within [%s, %s]", g, interval, lo, hi)
			}
			seen[g < interval] = true
		}
		if len(seen) != 2 {
			t.Fatalf("interval %s: no jitter on both sides", interval)
		}
	}
	if got := (AutoResume{ProbeInterval: time.Minute}).probeInterval(); got != maxProbeGap {
		t.Fatalf("a one-minute interval is used as %s; the cap is %s", got, maxProbeGap)
	}
	if got := (AutoResume{}).probeInterval(); got != 5*time.Second {
		t.Fatalf("default interval %s", got)
	}
}

// TestClassifyPause: a person's pause and a legacy empty one are never
// touched; an error pause is probed only for a recoverable code, and not
// once recovery gave up on it.
func TestClassifyPause(t *testing.T) {
	at := time.Unix(1700000000, 0)
	errPause := func(code, msg string) meta.PauseStatus {
		return meta.PauseStatus{Paused: true, V2: meta.NewErrorPause("h", 1, at, &brpb.StreamBackupError{ErrorCode: code, ErrorMessage: msg})}
	}
	cases := []struct {
		name  string
		pause meta.PauseStatus
		want  pauseClass
	}{
		{"running", meta.PauseStatus{}, notPaused},
		{"manual", meta.PauseStatus{Paused: true, V2: meta.NewManualPause("op", 1, at, "maintenance")}, manualPause},
		{"legacy empty", meta.PauseStatus{Paused: true}, manualPause},
		{"access denied", errPause(string(errs.CodeStorageAccessDenied), "403"), fatalPause},
		{"lag", errPause(string(errs.CodeCheckpointLag), "lag"), fatalPause},
		{"storage unavailable", errPause(string(errs.CodeStorageUnavailable), "retry budget exhausted"), recoverablePause},
		{"pd", errPause(string(errs.CodePD), "retry budget exhausted"), recoverablePause},
		{"gave up", errPause(string(errs.CodeStorageUnavailable), "[store = 1] "+gaveUpMarker+": 5 automatic resumes failed"), gaveUpPause},
	}
	for _, c := range cases {
		got, _ := classifyPause(&meta.TaskStatus{Pause: c.pause})
		if got != c.want {
			t.Errorf("%s: class %d, want %d", c.name, got, c.want)
		}
	}
}
