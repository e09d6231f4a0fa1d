package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"logbackup/streamagent"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// TestFatalErrorPausesAndResumeRecovers: storage starts denying access →
// the agent that meets it writes a LastError and an ERROR pause, every
// agent stops observing, the error is counted; after the operator fixes
// storage, plain resume is refused, resume --clear-error is accepted, and
// the changes written while the task was paused are backed up.
func TestFatalErrorPausesAndResumeRecovers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s3 := s3test.Start(t, "bk")
	h := newHarness(t, ctx, simcluster.Config{SplitKeys: [][]byte{[]byte("t3"), []byte("t6")}}, s3.URL("bk", "log"), 0)
	c, m, etcd, startTS, url := h.c, h.m, h.etcd, h.startTS, h.url
	type proc struct {
		a    *streamagent.Agent
		reg  *prometheus.Registry
		stop func()
	}
	var agents []proc
	logs := &lockedBuffer{}
	for _, s := range c.StoreIDs() {
		reg := prometheus.NewRegistry()
		a, stop := h.agent(s, reg, func(cfg *streamagent.Config) {
			cfg.FlushInterval, cfg.ReconcileInterval = 200*time.Millisecond, 200*time.Millisecond
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
		})
		agents = append(agents, proc{a, reg, stop})
	}
	defer func() {
		for _, p := range agents {
			p.stop()
		}
	}()
	write := func(n int, tag string) {
		for i := 0; i < n; i++ {
			if _, err := c.Put(ctx, []byte(fmt.Sprintf("t%d%03d", i%9, i)), []byte(tag)); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(60, "before")

	// Storage denies every upload from now on.
	s3.SetFault(s3test.Fault{Status: 403, Remaining: -1, Match: func(r *http.Request) bool { return r.Method == http.MethodPut }})
	var errs map[uint64]*brpbError
	eventually.NoError(t, 30*time.Second, func(ctx context.Context) error {
		le, err := m.LastErrors(ctx, "pitr")
		if err != nil {
			return err
		}
		if len(le) == 0 {
			return errors.New("no store reported one")
		}
		errs = map[uint64]*brpbError{}
		for s, e := range le {
			errs[s] = &brpbError{e.ErrorCode, e.ErrorMessage, e.StoreId}
		}
		return nil
	}, "a LastError after storage started denying access")
	for store, e := range errs {
		if e.store != store || e.code != "KV:LogBackup:StorageAccessDenied" || !strings.Contains(e.msg, "[store = ") ||
			!strings.Contains(e.msg, "resume --clear-error") || strings.Contains(e.msg, s3test.SecretKey) {
			t.Fatalf("last error of store %d: %+v", store, e)
		}
	}
	r := brRun{t: t, ep: etcd.Endpoint()}
	table := r.ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"status: ○ ERROR", "KV:LogBackup:StorageAccessDenied", "pause-payload[errcode]: KV:LogBackup:StorageAccessDenied"} {
		if !strings.Contains(table, want) {
			t.Fatalf("status lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, s3test.SecretKey) {
		t.Fatal("status leaks the storage secret")
	}
	// Every agent stops observing the paused task.
	eventually.True(t, 20*time.Second, func() bool {
		for _, p := range agents {
			if len(p.a.Status().Tasks) > 0 {
				return false
			}
		}
		return true
	}, "every agent to stop observing the paused task")
	if l := logs.String(); strings.Contains(l, s3test.SecretKey) || !strings.Contains(l, "StorageAccessDenied") {
		t.Fatalf("agent logs leak the secret or miss the error:\n%s", l)
	}
	var fatal float64
	for _, p := range agents {
		fatal += testutil.ToFloat64(mustVec(t, p.reg, "logbackup_agent_fatal_errors_total", "KV:LogBackup:StorageAccessDenied"))
	}
	if fatal < 1 {
		t.Fatal("the fatal error was not counted")
	}

	// Changes keep coming while the task is paused.
	write(60, "during")
	s3.ClearFault()
	r.fails("--clear-error", "stream", "resume", "--task-name", "pitr")
	r.ok("stream", "resume", "--task-name", "pitr", "--clear-error")
	write(30, "after")
	end, _ := c.TSO(ctx)
	var global uint64
	eventually.True(t, 60*time.Second, func() bool {
		g, ok, _ := m.GlobalCheckpoint(ctx, "pitr")
		global = g
		return ok && g >= end
	}, "the checkpoint to pass the pause window after resume")
	if n := assertBackedUp(t, ctx, url, c, startTS, global); n != 150 {
		t.Fatalf("%d versions committed, want 150", n)
	}
}

type brpbError struct {
	code, msg string
	store     uint64
}

// mustVec finds one labelled child of a counter vector in a registry.
func mustVec(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x", Help: "x"})
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetValue() == label {
					c.Add(m.GetCounter().GetValue())
				}
			}
		}
	}
	return c
}

// lockedBuffer is a log sink several agents write to at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
