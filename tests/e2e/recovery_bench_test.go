package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/log"
	"go.uber.org/zap/zapcore"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/tests/etcdtest"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// BenchmarkTimeToRecover: storage answers 503 until the task is paused by
// it, and for 1–4 s more; then it heals. Measured: from the fault clearing
// to the task running again (pause gone, the agent runs it), with the
// production recovery settings (probe every 5 s ±20%, coordinator tick
// 12 s). Between incidents the task runs until its checkpoint passes the
// resume. At least 20 incidents; p50 and p99 (of 20, the worst).
func BenchmarkTimeToRecover(b *testing.B) {
	log.SetLevel(zapcore.ErrorLevel)
	ctx := context.Background()
	etcd := etcdtest.Start(b)
	m := meta.NewClient(etcd.Client(b))
	c, err := simcluster.Start(ctx, simcluster.Config{Stores: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s3 := s3test.Start(b, "bk")
	start, _ := c.TSO(ctx)
	if err := br.Start(ctx, br.NewEnv(m).WithPD(c.PD()), br.StartOptions{TaskName: "bench", StartTS: fmt.Sprint(start), Storage: s3.URL("bk", "log")}, io.Discard); err != nil {
		b.Fatal(err)
	}
	a, err := streamagent.New(streamagent.Config{StoreID: c.StoreIDs()[0], PD: c.PD(), Meta: m, ClusterID: c.ClusterID(),
		// Only the way into the pause is shortened (one attempt per
		// request, two failed flushes): it is not what is measured.
		FlushInterval: 100 * time.Millisecond, RetryBudget: streamagent.RetryBudget{Attempts: 2, Duration: time.Hour},
		OpenStorage: func(ctx context.Context, be *brpb.StorageBackend) (storage.Storage, error) {
			return storage.OpenBackend(ctx, be, storage.WithRetryPolicy(storage.RetryPolicy{MaxAttempts: 1}))
		},
		TempDir: b.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil)
	if err != nil {
		b.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { stop(); <-done }()
	// A fixed 10 ms poll: "the task to run again" is what is timed.
	wait := func(what string, cond func() bool) {
		b.Helper()
		eventually.TrueEvery(b, 2*time.Minute, 10*time.Millisecond, cond, what)
	}
	running := func() bool {
		st, err := m.GetTask(ctx, "bench")
		return err == nil && !st.Pause.Paused && slices.Contains(a.Testing().Tasks(), "bench")
	}
	var took []time.Duration
	for i := 0; i < max(b.N, 20); i++ {
		wait("the task to run", running)
		c.Put(ctx, []byte(fmt.Sprintf("t%04d", i)), []byte("v"))
		s3.SetFault(s3test.Fault{Status: 503, Remaining: -1})
		wait("the error pause", func() bool {
			st, err := m.GetTask(ctx, "bench")
			return err == nil && st.Pause.V2.IsError()
		})
		// Time is the subject: an outage of a random 1–4 s, so auto-resume
		// meets storage still down for some of its probes and not others.
		time.Sleep(time.Second + rand.N(3*time.Second))
		s3.ClearFault()
		cleared := time.Now()
		wait("the task to run again", running)
		took = append(took, time.Since(cleared))
		// Healthy operation between incidents: the store makes durable
		// what came after the resume, so the next incident is a new one.
		ts, _ := c.TSO(ctx)
		wait("the checkpoint to pass the resume", func() bool {
			cps, err := m.Checkpoints(ctx, "bench")
			for _, cp := range cps {
				if cp.Kind == meta.CheckpointStore && cp.TS >= ts {
					return err == nil
				}
			}
			return false
		})
	}
	slices.Sort(took)
	pct := func(p float64) time.Duration { return took[min(len(took)-1, int(p*float64(len(took))))] }
	b.ReportMetric(pct(0.5).Seconds(), "s-p50")
	b.ReportMetric(pct(0.99).Seconds(), "s-p99")
	b.ReportMetric(float64(len(took)), "incidents")
}
