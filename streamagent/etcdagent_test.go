package streamagent

import (
	"bytes"
	"context"
	"log/slog"
	"runtime"
	"strings"
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
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"logbackup/meta"
	"logbackup/meta/embedetcd"
	"logbackup/proto/lbpb"
	"logbackup/storage"
)

// The fatal path (fatal.go) and the coordinator's recovery (autoresume.go,
// prober.go, coordinator.go) write through the agent's *meta.Client, so
// their unit tests run an Agent on a real embedded etcd (meta/embedetcd,
// nothing from tests/), with faults injected at etcd's own client
// interface (clientv3.KV), a PD of the few calls these paths make, and a
// mem:// storage for the recovery probe whose writes can be failed.

// etcdAgentFixture is an Agent that is not Run: a test calls the path
// under test itself (reportFatal, recovery.observe, probe, …).
type etcdAgentFixture struct {
	t *testing.T
	// ctx is what the test runs the agent's paths in (its Run's context):
	// it ends with the test, and with it whatever they started.
	ctx   context.Context
	a     *Agent
	check *meta.Client // unfaulted, for the test's own reads and setup
	kv    *etcdFaultKV // the agent's etcd: faults go here
	pd    *etcdAgentPD
	probe *etcdAgentProbeStorage // what recovery probes open
	reg   *prometheus.Registry
	logs  *etcdAgentLogBuffer
}

const etcdAgentStore = 7

// newEtcdAgentFixture starts etcd and builds the agent; cfg may adjust the
// config (AutoResume, RetryBudget, …) before New applies the defaults.
func newEtcdAgentFixture(t *testing.T, cfg func(*Config)) *etcdAgentFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, cli := startEtcd(t)
	kv := &etcdFaultKV{KV: cli.KV, refused: make(chan string, 10000)}
	cli.KV = kv // as etcd's namespace package wraps it: every request of the agent goes through kv
	mem, err := storage.OpenURL(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	f := &etcdAgentFixture{t: t, check: meta.NewClient(srv.Client()), kv: kv,
		pd:    &etcdAgentPD{safePoints: map[string]uint64{}},
		probe: &etcdAgentProbeStorage{Storage: mem, writes: make(chan string, 10000)},
		reg:   prometheus.NewRegistry(), logs: &etcdAgentLogBuffer{}}
	c := Config{StoreID: etcdAgentStore, PD: f.pd, Meta: meta.NewClient(cli, meta.WithRequestTimeout(2*time.Second)),
		TempDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if cfg != nil {
		cfg(&c)
	}
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

// startEtcd starts an embedded etcd on loopback and a client of it over
// the network, as the agent's is; both end with the test.
func startEtcd(t *testing.T) (*embedetcd.Server, *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), Fast: true})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return srv, cli
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

// metric reads one series from the agent's registry: the value of the
// counter, gauge or (sample count of the) histogram name whose labels
// include labels; 0 when there is no such series.
func (f *etcdAgentFixture) metric(name string, labels ...string) float64 {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
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
	case k := <-f.kv.refused:
		return k
	case <-time.After(10 * time.Second):
		f.t.Fatal("no etcd request was refused")
		return ""
	}
}

// etcdFaultKV is the agent's clientv3.KV with a fault rule: an operation
// the rule refuses fails with its error (a whole transaction when any of
// its Then operations is refused), and its key is announced on refused.
type etcdFaultKV struct {
	clientv3.KV
	mu      sync.Mutex
	rule    func(op clientv3.Op) error
	refused chan string
}

// setRule replaces the fault rule; nil lets everything through.
func (k *etcdFaultKV) setRule(rule func(op clientv3.Op) error) {
	k.mu.Lock()
	k.rule = rule
	k.mu.Unlock()
}

func (k *etcdFaultKV) check(ops ...clientv3.Op) error {
	k.mu.Lock()
	rule := k.rule
	k.mu.Unlock()
	if rule == nil {
		return nil
	}
	for _, op := range ops {
		if err := rule(op); err != nil {
			select {
			case k.refused <- string(op.KeyBytes()):
			default:
			}
			return err
		}
	}
	return nil
}

func (k *etcdFaultKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if err := k.check(clientv3.OpGet(key, opts...)); err != nil {
		return nil, err
	}
	return k.KV.Get(ctx, key, opts...)
}

func (k *etcdFaultKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if err := k.check(clientv3.OpPut(key, val, opts...)); err != nil {
		return nil, err
	}
	return k.KV.Put(ctx, key, val, opts...)
}

func (k *etcdFaultKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if err := k.check(clientv3.OpDelete(key, opts...)); err != nil {
		return nil, err
	}
	return k.KV.Delete(ctx, key, opts...)
}

func (k *etcdFaultKV) Txn(ctx context.Context) clientv3.Txn {
	return &etcdFaultTxn{Txn: k.KV.Txn(ctx), kv: k}
}

type etcdFaultTxn struct {
	clientv3.Txn
	kv   *etcdFaultKV
	then []clientv3.Op
}

func (t *etcdFaultTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *etcdFaultTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }
func (t *etcdFaultTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *etcdFaultTxn) Commit() (*clientv3.TxnResponse, error) {
	if err := t.kv.check(t.then...); err != nil {
		return nil, err
	}
	return t.Txn.Commit()
}

// etcdWritesUnder refuses writes (puts, deletes) of keys under prefix, as
// an etcd that lost its quorum refuses them.
func etcdWritesUnder(prefix string) func(clientv3.Op) error {
	return func(op clientv3.Op) error {
		if (op.IsPut() || op.IsDelete()) && strings.HasPrefix(string(op.KeyBytes()), prefix) {
			return rpctypes.ErrGRPCNoLeader
		}
		return nil
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

// etcdAgentProbeStorage is the storage a recovery probe opens: mem://,
// whose writes fail while fail is set; each write attempt is announced.
type etcdAgentProbeStorage struct {
	storage.Storage
	mu     sync.Mutex
	fail   error
	writes chan string
}

func (s *etcdAgentProbeStorage) setFail(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

func (s *etcdAgentProbeStorage) WriteFile(ctx context.Context, name string, data []byte) error {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	select {
	case s.writes <- name:
	default:
	}
	if fail != nil {
		return fail
	}
	return s.Storage.WriteFile(ctx, name, data)
}

// Close leaves mem:// open: the fixture closes it.
func (s *etcdAgentProbeStorage) Close() error { return nil }

// etcdAgentLogBuffer collects the agent's log lines.
type etcdAgentLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *etcdAgentLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *etcdAgentLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// etcdAgentTS is a ts at t.
func etcdAgentTS(t time.Time) uint64 { return oracle.GoTimeToTS(t) }
