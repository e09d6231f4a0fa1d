package streamagent

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/oracle"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/router"
	"github.com/tikv/pd/client/opt"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/internal/etcdfixture"
)

// The fatal path (fatal.go), the coordinator's tick and a runner's start
// (runners.go) write through the agent's *meta.Client, so their unit
// tests run an Agent on a real embedded etcd (meta/embedetcd, nothing
// from tests/), with faults injected at etcd's own client interface
// (etcdfixture.FaultKV), a PD of the few calls these paths make, and a
// mem:// storage for the recovery probe whose writes can be failed. The
// recovery's own steps are streamagent/recovery's tests, on the same
// parts (streamagent/internal/etcdfixture).

// etcdAgentFixture is an Agent that is not Run: a test calls the path
// under test itself (reportFatal, startTask, AdvanceOnce, …).
type etcdAgentFixture struct {
	t *testing.T
	// ctx is what the test runs the agent's paths in (its Run's context):
	// it ends with the test, and with it whatever they started.
	ctx   context.Context
	a     *Agent
	check *meta.Client         // unfaulted, for the test's own reads and setup
	kv    *etcdfixture.FaultKV // the agent's etcd: faults go here
	pd    *etcdAgentPD
	probe *etcdfixture.ProbeStorage // what recovery probes open
	reg   *prometheus.Registry
	logs  *etcdfixture.LogBuffer
}

const etcdAgentStore = 7

// newEtcdAgentFixture starts etcd and builds the agent; cfg may adjust the
// config (AutoResume, RetryBudget, …) before New applies the defaults.
func newEtcdAgentFixture(t *testing.T, cfg func(*Config)) *etcdAgentFixture {
	t.Helper()
	srv, cli := etcdfixture.StartEtcd(t)
	kv := etcdfixture.NewFaultKV(cli.KV)
	cli.KV = kv // as etcd's namespace package wraps it: every request of the agent goes through kv
	f := &etcdAgentFixture{t: t, check: meta.NewClient(srv.Client()), kv: kv,
		pd:    &etcdAgentPD{safePoints: map[string]uint64{}},
		probe: etcdfixture.NewProbeStorage(t),
		reg:   prometheus.NewRegistry(), logs: &etcdfixture.LogBuffer{}}
	c := Config{StoreID: etcdAgentStore, PD: f.pd, Meta: meta.NewClient(cli, meta.WithRequestTimeout(2*time.Second)),
		TempDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if cfg != nil {
		cfg(&c)
	}
	var err error
	f.a, err = New(c, f.reg)
	if err != nil {
		t.Fatal(err)
	}
	f.a.openProbe = func(context.Context, *brpb.StorageBackend) (storage.Storage, error) { return f.probe, nil }
	// Whatever a test left running (a prober, a report) ends with it.
	runCtx, stop := context.WithCancel(context.Background())
	f.ctx = runCtx
	t.Cleanup(func() {
		f.a.Testing().Crash() // a runner left by a failed test: no final flush on a fake clock
		stop()
		f.a.life.Load().wait()
	})
	return f
}

// putTask creates a task whose start ts is an hour ago (so a checkpoint at
// its start never passes a resume made now) and returns it as read.
func (f *etcdAgentFixture) putTask(name string) *meta.TaskStatus {
	f.t.Helper()
	info := &brpb.StreamBackupTaskInfo{Name: name, StartTs: oracle.GoTimeToTS(time.Now().Add(-time.Hour)),
		Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: f.t.TempDir()}}}}
	if err := f.check.PutTask(context.Background(), info, []meta.Range{{StartKey: []byte("a"), EndKey: []byte("z")}}); err != nil {
		f.t.Fatal(err)
	}
	return f.task(name)
}

// task reads a task as the agent would.
func (f *etcdAgentFixture) task(name string) *meta.TaskStatus {
	f.t.Helper()
	st, err := f.check.GetTask(context.Background(), name)
	if err != nil {
		f.t.Fatalf("read task %s: %v", name, err)
	}
	return st
}

// pauseWith pauses a task with an ERROR pause and a LastError of code, as
// a store's fatal path (or TiKV's) leaves it, and returns it as read.
func (f *etcdAgentFixture) pauseWith(name string, code string) *meta.TaskStatus {
	f.t.Helper()
	ctx := context.Background()
	e := &brpb.StreamBackupError{HappenAt: uint64(time.Now().UnixMilli()), ErrorCode: code, ErrorMessage: "injected " + code, StoreId: 3}
	if err := f.check.ReportLastError(ctx, name, e); err != nil {
		f.t.Fatal(err)
	}
	if err := f.check.PauseTask(ctx, name, meta.NewErrorPause("h", 1, time.Now(), e)); err != nil {
		f.t.Fatal(err)
	}
	return f.task(name)
}

// history is the task's recovery history, oldest first.
func (f *etcdAgentFixture) history(st *meta.TaskStatus) []*lbpb.RecoveryEvent {
	f.t.Helper()
	h, err := f.check.History(context.Background(), st.Info.Name, st.Incarnation)
	if err != nil {
		f.t.Fatal(err)
	}
	return h
}

// historyKinds counts the task's history events by kind.
func (f *etcdAgentFixture) historyKinds(st *meta.TaskStatus) map[lbpb.RecoveryEvent_Kind]int {
	out := map[lbpb.RecoveryEvent_Kind]int{}
	for _, ev := range f.history(st) {
		out[ev.Kind]++
	}
	return out
}

// recoveryState is what the coordinator published for the task (nil: none).
func (f *etcdAgentFixture) recoveryState(st *meta.TaskStatus) *meta.RecoveryState {
	f.t.Helper()
	s, err := f.check.GetRecoveryState(context.Background(), st.Info.Name, st.Incarnation)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// metric reads one series from the agent's registry
// (etcdfixture.Metric); 0 when there is no such series.
func (f *etcdAgentFixture) metric(name string, labels ...string) float64 {
	f.t.Helper()
	return etcdfixture.Metric(f.t, f.reg, name, labels...)
}

// waitUntil yields until cond holds; 10 s bounds it. The paths under test
// pace their retries on the real clock (they have no clock seam), so what
// is waited for is their own signal, never a fixed time.
func (f *etcdAgentFixture) waitUntil(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// refusal waits for the agent's next etcd request refused by the fault
// rule and returns its key.
func (f *etcdAgentFixture) refusal() string {
	f.t.Helper()
	select {
	case k := <-f.kv.Refused:
		return k
	case <-time.After(10 * time.Second):
		f.t.Fatal("no etcd request was refused")
		return ""
	}
}

// etcdAgentPD is the part of PD the fatal path and the recovery call:
// timestamps (the PD probe), service safepoints (the GC guard) and the GC
// safepoint read; and, for a task's runner, the regions and this store.
// Any other call panics (the nil embedded client).
type etcdAgentPD struct {
	pd.Client
	mu         sync.Mutex
	tsErr      error // non-nil: GetTS fails with it
	gcErr      error // non-nil: UpdateServiceGCSafePoint fails with it
	gcCalls    int
	safePoints map[string]uint64
	// What a running task asks (TestFatalFromRunner): its regions, this
	// store.
	regions []*router.Region
	store   *metapb.Store
}

func (p *etcdAgentPD) failTS(err error) {
	p.mu.Lock()
	p.tsErr = err
	p.mu.Unlock()
}

func (p *etcdAgentPD) GetTS(context.Context) (int64, int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tsErr != nil {
		return 0, 0, p.tsErr
	}
	return oracle.GetPhysical(time.Now()), 1, nil
}

func (p *etcdAgentPD) UpdateServiceGCSafePoint(_ context.Context, id string, _ int64, ts uint64) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gcCalls++
	if p.gcErr != nil {
		return 0, p.gcErr
	}
	p.safePoints[id] = ts
	return 0, nil
}

// ScanRegions and GetStore are what a task's runner asks PD: the regions
// (those set, whatever the range) and this store.
func (p *etcdAgentPD) ScanRegions(context.Context, []byte, []byte, int, ...opt.GetRegionOption) ([]*router.Region, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.regions, nil
}

func (p *etcdAgentPD) GetStore(context.Context, uint64) (*metapb.Store, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.store, nil
}

func (p *etcdAgentPD) UpdateGCSafePoint(context.Context, uint64) (uint64, error) { return 0, nil }

func (p *etcdAgentPD) safePoint(id string) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ts, ok := p.safePoints[id]
	return ts, ok
}

// etcdAgentTS is a ts at t.
func etcdAgentTS(t time.Time) uint64 { return oracle.GoTimeToTS(t) }
