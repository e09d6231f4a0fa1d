package streamagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/pd/client/clients/router"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/streamagent/errs"
	"logbackup/streamagent/internal/etcdfixture"
	"logbackup/streamagent/metrics"
	"logbackup/streamagent/recovery"
	"logbackup/streamagent/retry"
)

// The fatal path (fatal.go, retry/budget.go, runners.go's install/report) on a
// real embedded etcd (etcdagent_test.go): what a fatal error leaves in
// etcd, in PD and in the metrics, and what it does when etcd itself fails.

// fatalTestSecrets are credentials an error message may carry (a storage
// URL with user info and query credentials); none may reach etcd or logs.
var fatalTestSecrets = []string{"AKIDFATALTEST", "wJalrFATALSECRET", "SiGnAtUrE0123"}

const fatalTestURL = "s3://AKIDFATALTEST:wJalrFATALSECRET@bucket/log?access-key=AKIDFATALTEST&secret-access-key=wJalrFATALSECRET&X-Amz-Signature=SiGnAtUrE0123"

func fatalTestNoSecrets(t *testing.T, where, text string) {
	t.Helper()
	for _, s := range fatalTestSecrets {
		if strings.Contains(text, s) {
			t.Errorf("%s carries the credential %q: %s", where, s, text)
		}
	}
}

// TestFatalReportWritesLastErrorPausesGuardsAndCounts: one fatal error
// leaves, for its store, a LastError at
// /tidb/br-stream/last-error/<task>/<store> with the error's code and a
// message naming the store, the cause and the action, with every
// credential redacted; an ERROR pause carrying the same error; a PD
// service safepoint just below the task's checkpoint; an ERROR_REPORTED
// history event; and the error counted once as fatal under both metric
// names, the task's status gauges at ERROR. The log has no credential
// either.
func TestFatalReportWritesLastErrorPausesGuardsAndCounts(t *testing.T) {
	f := newEtcdAgentFixture(t, nil)
	ctx := context.Background()
	st := f.putTask("fatal")
	cause := errs.Wrap(errs.CodeStorageAccessDenied, fmt.Errorf("PUT %s: 403 Forbidden", fatalTestURL))
	f.a.reportFatal(ctx, st, &retry.Fatal{Info: errs.Lookup(errs.CodeStorageAccessDenied), Err: cause})

	raw, err := f.check.Raw().Get(ctx, fmt.Sprintf("/tidb/br-stream/last-error/fatal/%d", etcdAgentStore))
	if err != nil || len(raw.Kvs) != 1 {
		t.Fatalf("no LastError at /tidb/br-stream/last-error/fatal/%d: %v %v", etcdAgentStore, raw, err)
	}
	last, err := f.check.LastErrors(ctx, "fatal")
	if err != nil {
		t.Fatal(err)
	}
	le := last[etcdAgentStore]
	info := errs.Lookup(errs.CodeStorageAccessDenied)
	if len(last) != 1 || le == nil || le.ErrorCode != string(errs.CodeStorageAccessDenied) || le.StoreId != etcdAgentStore || le.HappenAt == 0 {
		t.Fatalf("last errors %v, want one of store %d with code %s", last, etcdAgentStore, errs.CodeStorageAccessDenied)
	}
	for _, want := range []string{fmt.Sprintf("[store = %d]", etcdAgentStore), "403 Forbidden", "redacted", "cause: " + info.Cause, "action: " + info.Action} {
		if !strings.Contains(le.ErrorMessage, want) {
			t.Errorf("LastError message %q lacks %q", le.ErrorMessage, want)
		}
	}
	fatalTestNoSecrets(t, "the LastError", le.ErrorMessage)

	paused := f.task("fatal")
	if !paused.Pause.Paused || !paused.Pause.V2.IsError() {
		t.Fatalf("pause %+v, want an ERROR pause", paused.Pause)
	}
	pe, err := paused.Pause.V2.ErrorPayload()
	if err != nil || pe.ErrorCode != le.ErrorCode || pe.ErrorMessage != le.ErrorMessage || pe.StoreId != etcdAgentStore {
		t.Fatalf("pause payload %v (%v), want the LastError %v", pe, err, le)
	}
	if class, _ := recovery.ClassifyPause(paused); class != recovery.FatalPause {
		t.Errorf("the pause classifies as %d, want fatalPause: an access denial is a person's", class)
	}

	if sp, ok := f.pd.safePoint(meta.PauseGuardID("fatal", etcdAgentStore)); !ok || sp != st.Info.StartTs-1 {
		t.Errorf("GC guard %d (set %v), want the checkpoint − 1 = %d", sp, ok, st.Info.StartTs-1)
	}

	h := f.history(st)
	if len(h) != 1 || h[0].Kind != lbpb.RecoveryEvent_ERROR_REPORTED || h[0].Actor != lbpb.RecoveryEvent_AGENT ||
		h[0].ErrorCode != le.ErrorCode || h[0].StoreId != etcdAgentStore || h[0].Message != le.ErrorMessage {
		t.Fatalf("history %v, want one ERROR_REPORTED by the agent with the LastError", h)
	}

	code := string(errs.CodeStorageAccessDenied)
	for _, m := range []struct {
		name, label string
	}{{"logbackup_agent_fatal_errors_total", "code"}, {"tikv_log_backup_fatal_errors", "type"}} {
		if got := f.metric(m.name, m.label, code); got != 1 {
			t.Errorf("%s{%s=%q} = %v, want 1", m.name, m.label, code, got)
		}
	}
	for _, name := range []string{"logbackup_agent_task_status", "tikv_log_backup_task_status"} {
		if got := f.metric(name, "task", "fatal"); got != metrics.StatusError {
			t.Errorf("%s{task=fatal} = %v, want %d (error)", name, got, metrics.StatusError)
		}
	}
	logs := f.logs.String()
	if !strings.Contains(logs, "task meets a fatal error") {
		t.Errorf("the fatal error was not logged: %s", logs)
	}
	fatalTestNoSecrets(t, "the log", logs)
}

// TestFatalFromRunner: a task's runner that stops on a fatal error (a
// real task.Runner, built and installed by startTask as for any task:
// here the store's TiKV refuses the EventFeed stream past a one-retry
// budget) leaves the agent's runners, and the agent reports it: the
// LastError keeps the code of what failed and says the budget is spent,
// the task is paused as ERROR, the error is counted as fatal once, the
// history has the report and the task's status gauge reads error. How the
// runner itself stops on each kind of fatal error (budget by attempts, by
// duration, a fatal class) is task.TestFatalStopsRunner.
func TestFatalFromRunner(t *testing.T) {
	f := newEtcdAgentFixture(t, func(c *Config) {
		// The second failure spends it: one retry, about a second later
		// (the stream's open backoff; the runner runs on the real clock).
		c.RetryBudget = RetryBudget{Attempts: 1, Duration: time.Hour}
	})
	// A loopback address nothing listens on: every open of the store's
	// EventFeed stream is refused at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	f.pd.store = &metapb.Store{Id: etcdAgentStore, Address: addr, State: metapb.StoreState_Up}
	f.pd.regions = []*router.Region{{
		Meta:   &metapb.Region{Id: 10, StartKey: []byte("a"), EndKey: []byte("z"), RegionEpoch: &metapb.RegionEpoch{Version: 1, ConfVer: 1}},
		Leader: &metapb.Peer{Id: 11, StoreId: etcdAgentStore},
	}}
	f.a.workDir = t.TempDir() // set by Run, which the fixture does not call
	st := f.putTask("t")

	f.a.startTask(f.ctx, st)
	if got := f.a.Testing().Tasks(); len(got) != 1 {
		t.Fatalf("runners %v after startTask, want the task's", got)
	}
	ended := make(chan struct{})
	go func() { defer close(ended); f.a.life.Load().wait() }()
	select {
	case <-ended: // the runner stopped and its report ended
	case <-time.After(20 * time.Second):
		f.a.stopTask("t", false)
		<-ended
		t.Fatal("the runner did not stop on a spent retry budget")
	}

	if got := f.a.Testing().Tasks(); len(got) != 0 {
		t.Errorf("runners %v after the fatal error, want none", got)
	}
	le := f.lastError(t, "t")
	code := string(errs.CodeGRPC) // what the refused stream classifies as
	if le.ErrorCode != code {
		t.Errorf("LastError code %s, want %s", le.ErrorCode, code)
	}
	for _, want := range []string{fmt.Sprintf("[store = %d]", etcdAgentStore), "retry budget exhausted (2 failures", addr} {
		if !strings.Contains(le.ErrorMessage, want) {
			t.Errorf("LastError message %q lacks %q", le.ErrorMessage, want)
		}
	}
	p := f.task("t").Pause
	pe, err := p.V2.ErrorPayload()
	if !p.Paused || !p.V2.IsError() || err != nil || pe.ErrorCode != code {
		t.Errorf("pause %+v (%v), want ERROR with the LastError", p, err)
	}
	if got := f.metric("logbackup_agent_fatal_errors_total", "code", code); got != 1 {
		t.Errorf("fatal_errors_total{%s} = %v, want 1", code, got)
	}
	if got := f.metric("logbackup_agent_errors_total", "code", code); got != 2 {
		t.Errorf("errors_total{%s} = %v, want 2 (both failures)", code, got)
	}
	if got := f.metric("logbackup_agent_task_status", "task", "t"); got != metrics.StatusError {
		t.Errorf("task status %v, want error", got)
	}
	if k := f.historyKinds(st); k[lbpb.RecoveryEvent_ERROR_REPORTED] != 1 {
		t.Errorf("history %v, want one ERROR_REPORTED", k)
	}
}

// lastError is the fixture's store's LastError of task (fails without).
func (f *etcdAgentFixture) lastError(t *testing.T, task string) *brpb.StreamBackupError {
	t.Helper()
	last, err := f.check.LastErrors(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	le := last[etcdAgentStore]
	if le == nil {
		t.Fatalf("no LastError of store %d for %s: %v", etcdAgentStore, task, last)
	}
	return le
}

// TestFatalReportWaitsOutEtcd: when etcd refuses the fatal path's writes
// (the error may be etcd's own), the report keeps trying, round after
// round, and lands all of it — LastError, history, pause — once etcd
// takes writes again.
func TestFatalReportWaitsOutEtcd(t *testing.T) {
	f := newEtcdAgentFixture(t, nil)
	st := f.putTask("etcd")
	f.kv.SetRule(etcdfixture.WritesUnder("/tidb/br-stream/"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.a.reportFatal(context.Background(), st, &retry.Fatal{Info: errs.Lookup(errs.CodeEtcdUnavailable), Err: errors.New("etcdserver: no leader")})
	}()
	// Each round tries the LastError (the pause waits for it): three
	// rounds refused.
	for range 3 {
		if k := f.refusal(); k != meta.LastErrorKey("etcd", etcdAgentStore) {
			t.Fatalf("refused %q: every round must try the LastError first", k)
		}
	}
	select {
	case <-done:
		t.Fatal("the report gave up while etcd refused its writes")
	default:
	}
	if f.task("etcd").Pause.Paused {
		t.Fatal("paused although etcd refused the write")
	}
	f.kv.SetRule(nil)
	<-done
	if le := f.lastError(t, "etcd"); le.ErrorCode != string(errs.CodeEtcdUnavailable) {
		t.Errorf("LastError %v", le)
	}
	if p := f.task("etcd").Pause; !p.Paused || !p.V2.IsError() {
		t.Errorf("pause %+v, want ERROR", p)
	}
	if k := f.historyKinds(st); k[lbpb.RecoveryEvent_ERROR_REPORTED] != 1 {
		t.Errorf("history %v, want the ERROR_REPORTED event", k)
	}
	if !strings.Contains(f.logs.String(), "fatal path step failed; retrying") {
		t.Error("the refused writes were not logged")
	}
	if got := f.metric("logbackup_agent_fatal_errors_total", "code", string(errs.CodeEtcdUnavailable)); got != 1 {
		t.Errorf("fatal errors %v, want 1 (counted once, not per try)", got)
	}
}

// TestFatalReportPausesLast: the pause is what others act on (automatic
// recovery resumes it, a person reads it), so it lands only after the
// LastError and the ERROR_REPORTED history event: while etcd refuses the
// LastError the task stays unpaused, and once the writes go through, the
// order in etcd is LastError, history, pause. (CI once saw a task resumed
// 563 ms after an etcd outage, before the report's history event was
// written: the pause had landed in a round whose LastError write failed.)
func TestFatalReportPausesLast(t *testing.T) {
	f := newEtcdAgentFixture(t, nil)
	st := f.putTask("order")
	lastErrKey := meta.LastErrorKey("order", etcdAgentStore)
	var mu sync.Mutex
	var writes []string
	var refuse atomic.Bool // the LastError's writes
	refuse.Store(true)
	f.kv.SetRule(func(op clientv3.Op) error {
		if !op.IsPut() {
			return nil
		}
		key := string(op.KeyBytes())
		if key == lastErrKey && refuse.Load() {
			return rpctypes.ErrGRPCNoLeader
		}
		mu.Lock()
		writes = append(writes, key)
		mu.Unlock()
		return nil
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.a.reportFatal(context.Background(), st, &retry.Fatal{Info: errs.Lookup(errs.CodeEtcdUnavailable), Err: errors.New("etcdserver: no leader")})
	}()
	for range 2 {
		if k := f.refusal(); k != lastErrKey {
			t.Fatalf("refused %q, want the LastError", k)
		}
	}
	if f.task("order").Pause.Paused {
		t.Fatal("paused while the LastError was refused: a resume could come before the error is reported")
	}
	refuse.Store(false)
	<-done
	mu.Lock()
	defer mu.Unlock()
	order := map[string]int{}
	for i, k := range writes {
		switch {
		case k == lastErrKey:
			order["last error"] = i + 1
		case strings.HasPrefix(k, meta.HistoryPrefix("order", st.Incarnation)):
			order["history"] = i + 1
		case k == meta.PauseKey("order"):
			order["pause"] = i + 1
		}
	}
	if !(order["last error"] > 0 && order["last error"] < order["history"] && order["history"] < order["pause"]) {
		t.Fatalf("writes %q: want the LastError, then the history event, then the pause", writes)
	}
}

// TestFatalReportEndsWithItsContext: a report that cannot reach etcd ends
// when its context does (the agent stopping) without writing anything:
// the task stays unpaused in etcd, so the next agent to run it meets the
// error again and reports it; nothing of the report outlives its context.
func TestFatalReportEndsWithItsContext(t *testing.T) {
	f := newEtcdAgentFixture(t, nil)
	st := f.putTask("ctx")
	f.kv.SetRule(etcdfixture.WritesUnder("/tidb/br-stream/"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.a.reportFatal(ctx, st, &retry.Fatal{Info: errs.Lookup(errs.CodeIo), Err: errors.New("disk full")})
	}()
	f.refusal()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the report did not end with its context")
	}
	f.kv.SetRule(nil)
	if f.task("ctx").Pause.Paused {
		t.Error("paused by a report whose writes were all refused")
	}
	if last, err := f.check.LastErrors(context.Background(), "ctx"); err != nil || len(last) != 0 {
		t.Errorf("last errors %v %v, want none", last, err)
	}
}

// TestFatalReportNotHeldBackByPD: PD refusing the GC guard does not hold
// the LastError or the pause back; the guard is tried five rounds, then
// given up (logged) and the report ends.
func TestFatalReportNotHeldBackByPD(t *testing.T) {
	f := newEtcdAgentFixture(t, nil)
	st := f.putTask("pd")
	f.pd.gcErr = errors.New("injected: PD refuses service safepoints")
	f.a.reportFatal(context.Background(), st, &retry.Fatal{Info: errs.Lookup(errs.CodeIo), Err: errors.New("disk full")})
	if f.pd.gcCalls != 5 {
		t.Errorf("the GC guard was tried %d times, want 5", f.pd.gcCalls)
	}
	if p := f.task("pd").Pause; !p.Paused || !p.V2.IsError() {
		t.Errorf("pause %+v, want ERROR", p)
	}
	if le := f.lastError(t, "pd"); le.ErrorCode != string(errs.CodeIo) {
		t.Errorf("LastError %v", le)
	}
	if !strings.Contains(f.logs.String(), "cannot set the GC guard of a paused task") {
		t.Error("giving up the GC guard was not logged")
	}
}

// TestFatalReportOfStoppedIncarnation: a fatal error of an incarnation
// stopped and started anew meanwhile is not reported: the new incarnation
// is neither paused nor blamed, and the report ends at once.
func TestFatalReportOfStoppedIncarnation(t *testing.T) {
	f := newEtcdAgentFixture(t, nil)
	ctx := context.Background()
	old := f.putTask("again")
	if err := f.check.DeleteTask(ctx, "again"); err != nil {
		t.Fatal(err)
	}
	cur := f.putTask("again")
	f.a.reportFatal(ctx, old, &retry.Fatal{Info: errs.Lookup(errs.CodeIo), Err: errors.New("disk full")})
	if f.task("again").Pause.Paused {
		t.Error("the new incarnation was paused by the old one's error")
	}
	if last, err := f.check.LastErrors(ctx, "again"); err != nil || len(last) != 0 {
		t.Errorf("last errors %v %v, want none", last, err)
	}
	if h := f.history(cur); len(h) != 0 {
		t.Errorf("history of the new incarnation %v, want none", h)
	}
	if !strings.Contains(f.logs.String(), "task stopped before its fatal error was reported") {
		t.Error("the dropped report was not logged")
	}
}

// TestFatalSecondWhileFirstReporting: a second fatal error of the same
// task and store while the first is still being reported (both wait on
// etcd): both reports complete once etcd takes writes, neither blocks the
// other; the store's LastError and the pause are each one of the two
// (the last write wins: there is one key per store, one pause per task);
// both are counted and both are in the history.
func TestFatalSecondWhileFirstReporting(t *testing.T) {
	f := newEtcdAgentFixture(t, nil)
	st := f.putTask("twice")
	f.kv.SetRule(etcdfixture.WritesUnder("/tidb/br-stream/"))
	first, second := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(first)
		f.a.reportFatal(context.Background(), st, &retry.Fatal{Info: errs.Lookup(errs.CodeStorageUnavailable), Err: errors.New("503 after the budget")})
	}()
	f.refusal() // the first report is under way
	// History keys are per millisecond, store and kind: the second error
	// comes in a later millisecond, as two real ones would.
	for ms := time.Now().UnixMilli(); time.Now().UnixMilli() == ms; {
		runtime.Gosched()
	}
	go func() {
		defer close(second)
		f.a.reportFatal(context.Background(), st, &retry.Fatal{Info: errs.Lookup(errs.CodeStorageAccessDenied), Err: errors.New("403")})
	}()
	for range 4 {
		f.refusal()
	}
	f.kv.SetRule(nil)
	<-first
	<-second
	codes := map[string]bool{string(errs.CodeStorageUnavailable): true, string(errs.CodeStorageAccessDenied): true}
	if le := f.lastError(t, "twice"); !codes[le.ErrorCode] {
		t.Errorf("LastError %v, want one of the two", le)
	}
	p := f.task("twice").Pause
	pe, err := p.V2.ErrorPayload()
	if !p.Paused || err != nil || !codes[pe.ErrorCode] {
		t.Errorf("pause %+v (%v), want ERROR with one of the two", p, err)
	}
	for code := range codes {
		if got := f.metric("logbackup_agent_fatal_errors_total", "code", code); got != 1 {
			t.Errorf("fatal errors{%s} = %v, want 1", code, got)
		}
	}
	if k := f.historyKinds(st); k[lbpb.RecoveryEvent_ERROR_REPORTED] != 2 {
		t.Errorf("history %v, want both ERROR_REPORTED events", k)
	}
}
