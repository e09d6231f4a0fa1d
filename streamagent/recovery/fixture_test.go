package recovery

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tikv/client-go/v2/oracle"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/storage"
	"logbackup/streamagent/checkpoint"
	"logbackup/streamagent/internal/etcdfixture"
	"logbackup/streamagent/metrics"
)

// fixture is a Recovery on a real embedded etcd (meta/embedetcd, nothing
// from tests/), with faults injected at etcd's own client interface
// (etcdfixture.FaultKV), a PD timestamp call that can fail, and a mem://
// storage for the probes whose writes can be failed. A test calls the
// step under test itself (a tick's step, one probe), or tick: what the
// coordinator's tick does with the recovery.
type fixture struct {
	t *testing.T
	// ctx is what the test runs the recovery in (the agent's Run's
	// context): it ends with the test, and with it every prober.
	ctx   context.Context
	r     *Recovery
	check *meta.Client              // unfaulted, for the test's own reads and setup
	kv    *etcdfixture.FaultKV      // the recovery's etcd: faults go here
	pd    *fakePD                   // what the PD probe asks
	probe *etcdfixture.ProbeStorage // what storage probes open
	reg   *prometheus.Registry
	logs  *etcdfixture.LogBuffer
}

const fixtureStore = 7

// newFixture starts etcd and builds the recovery; cfg may set its
// AutoResume (New applies the defaults).
func newFixture(t *testing.T, cfg func(*AutoResume)) *fixture {
	t.Helper()
	srv, cli := etcdfixture.StartEtcd(t)
	kv := etcdfixture.NewFaultKV(cli.KV)
	cli.KV = kv // every request of the recovery goes through kv
	f := &fixture{t: t, check: meta.NewClient(srv.Client()), kv: kv, pd: &fakePD{},
		probe: etcdfixture.NewProbeStorage(t), reg: prometheus.NewRegistry(), logs: &etcdfixture.LogBuffer{}}
	var c AutoResume
	if cfg != nil {
		cfg(&c)
	}
	// The agent's Run waits for its probers; here the test's end does.
	var probers sync.WaitGroup
	spawn := func(fn func()) <-chan struct{} {
		done := make(chan struct{})
		probers.Go(func() {
			defer close(done)
			fn()
		})
		return done
	}
	f.r = New(Deps{StoreID: fixtureStore, Config: c, Meta: meta.NewClient(cli, meta.WithRequestTimeout(2*time.Second)),
		GetTS:     f.pd.GetTS,
		OpenProbe: func(context.Context, *brpb.StorageBackend) (storage.Storage, error) { return f.probe, nil },
		Metrics:   metrics.New(f.reg),
		Log:       slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Spawn:     spawn})
	ctx, stop := context.WithCancel(context.Background())
	f.ctx = ctx
	t.Cleanup(func() {
		stop()
		probers.Wait()
	})
	return f
}

// tick does what the coordinator's tick (streamagent's AdvanceOnce) does
// with the recovery: every task is observed, a paused one with no global
// checkpoint, a running one with what its stores flushed; the probers of
// tasks gone are stopped.
func (f *fixture) tick() error {
	tasks, _, err := f.check.ListTasks(f.ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, t := range tasks {
		live[t.IncarnationKey()] = true
		var g uint64
		if !t.Pause.Paused {
			if g, err = checkpoint.Flushed(f.ctx, f.check, t); err != nil {
				return err
			}
		}
		f.r.Observe(f.ctx, t, g)
	}
	f.r.ForgetExcept(live)
	return nil
}

// putTask creates a task whose start ts is an hour ago (so a checkpoint at
// its start never passes a resume made now) and returns it as read.
func (f *fixture) putTask(name string) *meta.TaskStatus {
	f.t.Helper()
	info := &brpb.StreamBackupTaskInfo{Name: name, StartTs: oracle.GoTimeToTS(time.Now().Add(-time.Hour)),
		Storage: &brpb.StorageBackend{Backend: &brpb.StorageBackend_Local{Local: &brpb.Local{Path: f.t.TempDir()}}}}
	if err := f.check.PutTask(context.Background(), info, []meta.Range{{StartKey: []byte("a"), EndKey: []byte("z")}}); err != nil {
		f.t.Fatal(err)
	}
	return f.task(name)
}

// task reads a task as the coordinator would.
func (f *fixture) task(name string) *meta.TaskStatus {
	f.t.Helper()
	st, err := f.check.GetTask(context.Background(), name)
	if err != nil {
		f.t.Fatalf("read task %s: %v", name, err)
	}
	return st
}

// pauseWith pauses a task with an ERROR pause and a LastError of code, as
// a store's fatal path (or TiKV's) leaves it, and returns it as read.
func (f *fixture) pauseWith(name string, code string) *meta.TaskStatus {
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
func (f *fixture) history(st *meta.TaskStatus) []*lbpb.RecoveryEvent {
	f.t.Helper()
	h, err := f.check.History(context.Background(), st.Info.Name, st.Incarnation)
	if err != nil {
		f.t.Fatal(err)
	}
	return h
}

// historyKinds counts the task's history events by kind.
func (f *fixture) historyKinds(st *meta.TaskStatus) map[lbpb.RecoveryEvent_Kind]int {
	out := map[lbpb.RecoveryEvent_Kind]int{}
	for _, ev := range f.history(st) {
		out[ev.Kind]++
	}
	return out
}

// recoveryState is what the coordinator published for the task (nil: none).
func (f *fixture) recoveryState(st *meta.TaskStatus) *meta.RecoveryState {
	f.t.Helper()
	s, err := f.check.GetRecoveryState(context.Background(), st.Info.Name, st.Incarnation)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// metric reads one series of the recovery's metrics (etcdfixture.Metric).
func (f *fixture) metric(name string, labels ...string) float64 {
	f.t.Helper()
	return etcdfixture.Metric(f.t, f.reg, name, labels...)
}

// fakePD is PD's timestamp call, failing while an error is set.
type fakePD struct {
	mu    sync.Mutex
	tsErr error
}

func (p *fakePD) failTS(err error) {
	p.mu.Lock()
	p.tsErr = err
	p.mu.Unlock()
}

func (p *fakePD) GetTS(context.Context) (int64, int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tsErr != nil {
		return 0, 0, p.tsErr
	}
	return oracle.GetPhysical(time.Now()), 1, nil
}

// tsAt is a ts at t.
func tsAt(t time.Time) uint64 { return oracle.GoTimeToTS(t) }

// lastError is the fixture's store's LastError of task (fails without).
func (f *fixture) lastError(t *testing.T, task string) *brpb.StreamBackupError {
	t.Helper()
	last, err := f.check.LastErrors(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	le := last[fixtureStore]
	if le == nil {
		t.Fatalf("no LastError of store %d for %s: %v", fixtureStore, task, last)
	}
	return le
}
