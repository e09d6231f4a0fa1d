package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/prometheus/client_golang/prometheus"

	"logbackup/meta"
	"logbackup/proto/lbpb"
	"logbackup/streamagent"
	"logbackup/streamagent/errs"
	"logbackup/tests/eventually"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// recoveryDeadline is the promise of automatic recovery: the task runs
// again this soon after the fault clears (the probe gap's cap), however
// long the outage lasted.
const recoveryDeadline = 10 * time.Second

// dependencyFault is an outage of one dependency the agents need.
type dependencyFault struct {
	name      string
	dep       string // what the coordinator must probe
	ownEtcd   bool   // task metadata in an etcd the test can stop
	networkPD bool   // agents talk to PD over the network (the simulated PD's server)
	inject    func(r *recoveryRig)
	clear     func(r *recoveryRig)
}

var dependencyFaults = []dependencyFault{
	{name: "storage-503", dep: "storage",
		inject: func(r *recoveryRig) { r.s3.SetFault(s3test.Fault{Status: 503, Remaining: -1}) },
		clear:  func(r *recoveryRig) { r.s3.ClearFault() }},
	{name: "storage-throttled", dep: "storage",
		inject: func(r *recoveryRig) { r.s3.SetFault(s3test.Fault{Status: 429, Remaining: -1}) },
		clear:  func(r *recoveryRig) { r.s3.ClearFault() }},
	{name: "etcd-unavailable", dep: "etcd", ownEtcd: true,
		inject: func(r *recoveryRig) { r.h.own.Stop(r.t) },
		clear:  func(r *recoveryRig) { r.h.own.Restart(r.t); r.reconnectObserver() }},
	{name: "pd-unavailable", dep: "pd", networkPD: true,
		inject: func(r *recoveryRig) { r.h.c.SetPDDown(true) },
		clear:  func(r *recoveryRig) { r.h.c.SetPDDown(false) }},
}

// recoveryRig is a cluster of two stores with an agent each (agents that
// reach etcd and PD the way deployed agents do), a task to loopback S3 and
// a writer.
type recoveryRig struct {
	t     *testing.T
	ctx   context.Context
	f     dependencyFault
	h     *harness
	s3    *s3test.Server
	url   string
	regs  []*prometheus.Registry
	ags   []*streamagent.Agent
	inc   int64
	start uint64

	obsMu sync.Mutex
	obs   *meta.Client // the test's own view of etcd
}

func newRecoveryRig(t *testing.T, ctx context.Context, f dependencyFault, ar streamagent.AutoResume, mods ...func(*streamagent.Config)) *recoveryRig {
	t.Helper()
	r := &recoveryRig{t: t, ctx: ctx, f: f}
	r.s3 = s3test.Start(t, "bk")
	r.url = r.s3.URL("bk", "log")
	sim := simcluster.Config{Stores: 2, SplitKeys: [][]byte{[]byte("t5")}}
	if f.ownEtcd {
		r.h = newHarnessOwnEtcd(t, ctx, sim, r.url, 0)
	} else {
		r.h = newHarness(t, ctx, sim, r.url, 0)
	}
	r.obs, r.start = r.h.m, r.h.startTS
	agentMeta := r.h.m
	if f.ownEtcd {
		// The agents dial etcd as cmd/streamagent does.
		cli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{r.h.own.Endpoint()}, DialTimeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		agentMeta = meta.NewClient(cli)
	}
	for _, s := range r.h.c.StoreIDs() {
		pdc := r.h.c.PD()
		if f.networkPD {
			c, err := meta.DialPD(ctx, meta.DialConfig{Endpoints: []string{r.h.c.PDAddr()}, DialTimeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			pdc = c
		}
		reg := prometheus.NewRegistry()
		a, stop := r.h.agent(s, reg, func(cfg *streamagent.Config) {
			cfg.Meta, cfg.PD = agentMeta, pdc
			cfg.CoordinatorInterval = 0 // the default, 12 s: the pause itself wakes the coordinator
			// The budget before the pause is not what these tests prove:
			// two failed flushes pause the task.
			cfg.RetryBudget = streamagent.RetryBudget{Attempts: 2, Duration: time.Hour}
			cfg.AutoResume = ar
			for _, mod := range mods {
				mod(cfg)
			}
		})
		t.Cleanup(stop)
		r.regs, r.ags = append(r.regs, reg), append(r.ags, a)
	}
	st, err := r.h.m.GetTask(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	r.inc = st.Incarnation
	return r
}

// observer is the test's etcd client; after an etcd restart a fresh one,
// so the test's own reconnect backoff never delays what it measures.
func (r *recoveryRig) observer() *meta.Client {
	r.obsMu.Lock()
	defer r.obsMu.Unlock()
	return r.obs
}

func (r *recoveryRig) reconnectObserver() {
	cli := r.h.own.Client(r.t)
	r.obsMu.Lock()
	r.obs = meta.NewClient(cli)
	r.obsMu.Unlock()
}

func (r *recoveryRig) waitFor(what string, d time.Duration, cond func() bool) time.Time {
	r.t.Helper()
	eventually.True(r.t, d, cond, "%s: %s", r.f.name, what)
	return time.Now()
}

// events returns the history of the task's incarnation of a kind, at or
// after since.
func (r *recoveryRig) events(kind lbpb.RecoveryEvent_Kind, since time.Time) []*lbpb.RecoveryEvent {
	evs, err := r.observer().History(r.ctx, "pitr", r.inc)
	if err != nil {
		return nil
	}
	var out []*lbpb.RecoveryEvent
	for _, ev := range evs {
		if ev.Kind == kind && ev.HappenAtUnixMs >= since.UnixMilli() {
			out = append(out, ev)
		}
	}
	return out
}

// counter sums a counter over the agents' registries, children matching
// every given label.
func (r *recoveryRig) counter(name string, labels map[string]string) float64 {
	var sum float64
	for _, reg := range r.regs {
		mfs, err := reg.Gather()
		if err != nil {
			r.t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		metric:
			for _, m := range mf.GetMetric() {
				for k, v := range labels {
					found := false
					for _, l := range m.GetLabel() {
						found = found || (l.GetName() == k && l.GetValue() == v)
					}
					if !found {
						continue metric
					}
				}
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// writeUntil writes rows until stop is closed; it returns how many it wrote.
func (r *recoveryRig) writeUntil(tag string, stop <-chan struct{}) <-chan int {
	n := make(chan int, 1)
	go func() {
		i := 0
		defer func() { n <- i }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := r.h.c.Put(r.ctx, []byte(fmt.Sprintf("t%d-%s-%05d", i%9, tag, i)), []byte(tag)); err == nil {
				i++
			}
		}
	}()
	return n
}

// running: the task is not paused, a resume of this incident is recorded
// and an agent runs the task.
func (r *recoveryRig) running(since time.Time) bool {
	st, err := r.observer().GetTask(r.ctx, "pitr")
	if err != nil || st.Pause.Paused || len(r.events(lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT, since)) == 0 {
		return false
	}
	for _, a := range r.ags {
		if slices.Contains(a.Testing().Tasks(), "pitr") {
			return true
		}
	}
	return false
}

// outage is how long a fault lasts: for a time after the task paused, or
// until the coordinator counted so many failed probes.
type outage struct {
	name   string
	after  time.Duration
	probes int
}

// run makes one outage and checks the recovery: the fault pauses the task
// with a recoverable code naming the dependency, the dependency is probed
// (failing) while it is down, the task runs again within recoveryDeadline
// of the fault clearing, the resume holds, nothing written meanwhile is
// missing from storage, and no resume failed.
func (r *recoveryRig) run(o outage) time.Duration {
	t, f := r.t, r.f
	stop := make(chan struct{})
	written := r.writeUntil(o.name, stop)
	r.waitFor("the task to flush before the fault", 3*time.Minute, func() bool {
		g, ok, _ := r.observer().GlobalCheckpoint(r.ctx, "pitr")
		return ok && g > r.start
	})
	fatal := r.counter("logbackup_agent_fatal_errors_total", nil)
	probed := r.counter("logbackup_agent_recovery_probes_total", map[string]string{"dependency": f.dep, "result": "failed"})
	f.inject(r)
	faultAt := time.Now()
	r.waitFor("the fatal path", 2*time.Minute, func() bool { return r.counter("logbackup_agent_fatal_errors_total", nil) > fatal })
	pausedAt := time.Now()
	if f.dep != "etcd" {
		// Nothing can be written to etcd while it is down, so only the
		// other dependencies are seen being probed during the outage.
		r.waitFor("a failed probe of "+f.dep, time.Minute, func() bool {
			rs, err := r.observer().GetRecoveryState(r.ctx, "pitr", r.inc)
			return err == nil && rs != nil && rs.Phase == meta.RecoveryProbing && slices.Contains(rs.Dependencies, f.dep) &&
				rs.Probes > 0 && !rs.LastProbeOK && r.counter("logbackup_agent_recovery_probes_total", map[string]string{"dependency": f.dep, "result": "failed"}) > probed
		})
	}
	if o.probes > 0 {
		r.waitFor(fmt.Sprintf("%d failed probes", o.probes), 10*time.Minute, func() bool {
			return r.counter("logbackup_agent_recovery_probes_total", map[string]string{"dependency": f.dep, "result": "failed"}) >= probed+float64(o.probes)
		})
	} else {
		// Time is the subject: the outage lasts o.after, however many
		// probes auto-resume makes meanwhile.
		time.Sleep(time.Until(pausedAt.Add(o.after)))
	}
	if f.dep != "etcd" {
		if st, err := r.observer().GetTask(r.ctx, "pitr"); err != nil || !st.Pause.Paused {
			t.Fatalf("%s/%s: resumed while %s was still down (%v)", f.name, o.name, f.dep, err)
		}
	}
	f.clear(r)
	clearAt := time.Now()
	runningAt := r.waitFor("the task to run again", 5*time.Minute, func() bool { return r.running(faultAt) })
	took := runningAt.Sub(clearAt)
	failedProbes := r.counter("logbackup_agent_recovery_probes_total", map[string]string{"dependency": f.dep, "result": "failed"}) - probed
	t.Logf("%s/%s: fault for %s (%.0f failed %s probes); running again %s after it cleared",
		f.name, o.name, clearAt.Sub(faultAt).Round(time.Millisecond), failedProbes, f.dep, took.Round(time.Millisecond))
	if took > recoveryDeadline {
		t.Errorf("%s/%s: running again %s after the fault cleared, more than %s", f.name, o.name, took.Round(time.Millisecond), recoveryDeadline)
	}
	close(stop)
	n := <-written

	// Every pause of this outage names a recoverable code that probes
	// this dependency.
	reports := r.events(lbpb.RecoveryEvent_ERROR_REPORTED, faultAt)
	if len(reports) == 0 {
		t.Fatalf("%s/%s: no error report in the history", f.name, o.name)
	}
	for _, ev := range reports {
		if deps := streamagent.RecoverableCodes()[errs.Code(ev.ErrorCode)]; !slices.Contains(deps, f.dep) {
			t.Fatalf("%s/%s: paused by %s (%s), which does not probe %s", f.name, o.name, ev.ErrorCode, ev.Message, f.dep)
		}
	}
	end, err := r.h.c.TSO(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var global uint64
	r.waitFor("the checkpoint to pass the outage", 2*time.Minute, func() bool {
		g, ok, _ := r.observer().GlobalCheckpoint(r.ctx, "pitr")
		global = g
		return ok && g >= end
	})
	if got := assertBackedUp(t, r.ctx, r.url, r.h.c, r.start, global); got < n {
		t.Fatalf("%s/%s: %d versions in storage's range, %d written", f.name, o.name, got, n)
	}
	r.waitFor("the resume to hold", time.Minute, func() bool { return len(r.events(lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED, faultAt)) > 0 })
	if evs := r.events(lbpb.RecoveryEvent_AUTO_RESUME_FAILED, faultAt); len(evs) > 0 {
		t.Fatalf("%s/%s: a resume failed in a clean outage: %s", f.name, o.name, evs[0].Message)
	}
	if rs, _ := r.observer().GetRecoveryState(r.ctx, "pitr", r.inc); rs != nil {
		t.Fatalf("%s/%s: recovery state left after the resume held: %+v", f.name, o.name, rs)
	}
	return took
}

// TestAutoRecovery: for each dependency, an outage of a few seconds and one
// of two minutes with the default probe settings (5 s ±20%) and coordinator
// tick (12 s), then an hour's worth of failed probes (720 at the default
// interval) with the interval scaled down to 25 ms: nothing is spent by a
// long clean outage, and each time the task runs again within
// recoveryDeadline of the fault clearing, with every change in storage.
// The dependencies run at once, whatever -parallel says (they mostly
// wait), each one's outages one after the other.
func TestAutoRecovery(t *testing.T) {
	t.Parallel() // mostly waiting: run beside the other long tests (README's test command stays under 10 minutes)
	outages := []struct {
		outage
		ar streamagent.AutoResume
	}{
		{outage{name: "seconds", after: 3 * time.Second}, streamagent.AutoResume{}},
		{outage{name: "2min", after: 2 * time.Minute}, streamagent.AutoResume{}},
		{outage{name: "hour-scaled", probes: 720}, streamagent.AutoResume{ProbeInterval: 25 * time.Millisecond, ProbeTimeout: 250 * time.Millisecond}},
	}
	var wg sync.WaitGroup
	for _, f := range dependencyFaults {
		wg.Go(func() {
			t.Run(f.name, func(t *testing.T) {
				for _, o := range outages {
					t.Run(o.name, func(t *testing.T) {
						if f.dep == "etcd" && o.probes > 0 {
							t.Skip("no probe runs while etcd is down (the pause cannot be written until it answers), so an hour of it is the 2-minute case: every client backoff is capped well below 2 minutes")
						}
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
						defer cancel()
						newRecoveryRig(t, ctx, f, o.ar).run(o.outage)
					})
				}
			})
		})
	}
	wg.Wait()
}

// TestAutoRecoveryFlappingGivesUp: a partial fault — storage takes the
// probe's small object but fails every upload of the task — passes every
// probe, so each resume fails again. Those resumes are bounded, with a
// growing backoff between them; at the bound the task stays in ERROR with a
// LastError and a pause payload that say so, no more resumes come however
// healthy the probes look, and a person's resume --clear-error after the
// fix loses nothing.
func TestAutoRecoveryFlappingGivesUp(t *testing.T) {
	t.Parallel() // mostly waiting: run beside the other long tests (README's test command stays under 10 minutes)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const bound, backoff = 3, 300 * time.Millisecond
	r := newRecoveryRig(t, ctx, dependencyFaults[0], streamagent.AutoResume{ProbeInterval: 100 * time.Millisecond, MaxAttempts: bound, Backoff: backoff})
	stop := make(chan struct{})
	written := r.writeUntil("flap", stop)
	r.waitFor("the task to flush before the fault", time.Minute, func() bool {
		g, ok, _ := r.observer().GlobalCheckpoint(ctx, "pitr")
		return ok && g > r.start
	})
	faultAt := time.Now()
	r.s3.SetFault(s3test.Fault{Status: 503, Remaining: -1, Match: func(req *http.Request) bool {
		return req.Method == http.MethodPut && !strings.Contains(req.URL.Path, "logbackup.probe.")
	}})
	var payload *brpb.StreamBackupError
	r.waitFor("automatic recovery to give up", 5*time.Minute, func() bool {
		st, err := r.observer().GetTask(ctx, "pitr")
		if err != nil || !st.Pause.Paused {
			return false
		}
		payload, _ = st.Pause.V2.ErrorPayload()
		return payload != nil && strings.Contains(payload.ErrorMessage, "automatic recovery gave up")
	})
	if payload.ErrorCode != "KV:LogBackup:StorageUnavailable" || !strings.Contains(payload.ErrorMessage, "--clear-error") {
		t.Fatalf("pause payload: %s %s", payload.ErrorCode, payload.ErrorMessage)
	}
	attempts := r.events(lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT, faultAt)
	failed := r.events(lbpb.RecoveryEvent_AUTO_RESUME_FAILED, faultAt)
	if len(attempts) != bound || len(failed) != bound || len(r.events(lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED, faultAt)) != 0 {
		t.Fatalf("%d resumes, %d failed; want %d of each and none held", len(attempts), len(failed), bound)
	}
	if !strings.Contains(failed[bound-1].Message, "automatic recovery gave up") {
		t.Fatalf("last failure does not say recovery gave up: %s", failed[bound-1].Message)
	}
	// Backoff between failed resumes: at least Backoff, doubling.
	for i := 1; i < bound; i++ {
		gap := time.Duration(attempts[i].HappenAtUnixMs-failed[i-1].HappenAtUnixMs) * time.Millisecond
		if want := backoff << (i - 1); gap < want {
			t.Fatalf("resume %d came %s after resume %d failed; the backoff is %s", i+1, gap, i, want)
		}
	}
	le, err := r.observer().LastErrors(ctx, "pitr")
	if err != nil {
		t.Fatal(err)
	}
	said := false
	for _, e := range le {
		said = said || strings.Contains(e.ErrorMessage, "automatic recovery gave up")
	}
	if !said {
		t.Fatalf("no LastError says recovery gave up: %v", le)
	}
	table := r.h.brRun().ok("stream", "status", "--task-name", "pitr")
	for _, want := range []string{"status: ○ ERROR", fmt.Sprintf("auto-recovery: ○ gave up: %d of %d resumes failed again after a healthy storage probe", bound, bound), "automatic recovery gave up"} {
		if !strings.Contains(table, want) {
			t.Fatalf("status lacks %q:\n%s", want, table)
		}
	}
	// It stays so: no prober, no resume, through many probe intervals.
	// Time is the subject: nothing may happen during them.
	probes := r.counter("logbackup_agent_recovery_probes_total", nil)
	time.Sleep(2 * time.Second)
	if st, _ := r.observer().GetTask(ctx, "pitr"); !st.Pause.Paused {
		t.Fatal("resumed after giving up")
	}
	if n := len(r.events(lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT, faultAt)); n != bound {
		t.Fatalf("%d resumes after giving up, want %d", n, bound)
	}
	if p := r.counter("logbackup_agent_recovery_probes_total", nil); p != probes {
		t.Fatalf("still probing after giving up: %v probes, then %v", probes, p)
	}

	// A person fixes storage and resumes: nothing is lost, and the
	// incident's state is gone.
	r.s3.ClearFault()
	r.h.brRun().ok("stream", "resume", "--task-name", "pitr", "--clear-error")
	close(stop)
	n := <-written
	end, _ := r.h.c.TSO(ctx)
	global := r.h.waitGlobal(end)
	if got := assertBackedUp(t, ctx, r.url, r.h.c, r.start, global); got < n {
		t.Fatalf("%d versions in storage's range, %d written", got, n)
	}
	r.waitFor("the incident's state to go", time.Minute, func() bool {
		rs, err := r.observer().GetRecoveryState(ctx, "pitr", r.inc)
		return err == nil && rs == nil
	})
}

// TestAutoRecoveryBackToBack: incidents in quick succession, each after
// the task made progress past its resume, are separate incidents — none
// is taken for a resume that failed again, although no coordinator tick
// judged the resume before the next pause — so a bound of one failed
// resume is never reached.
func TestAutoRecoveryBackToBack(t *testing.T) {
	t.Parallel() // its own cluster, mostly waiting: runs beside the other long tests (see TestMain)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Ticks only when a pause wakes the coordinator: the resume is judged
	// at the next pause, never by a tick in between.
	r := newRecoveryRig(t, ctx, dependencyFaults[0], streamagent.AutoResume{ProbeInterval: 200 * time.Millisecond, MaxAttempts: 1},
		func(cfg *streamagent.Config) { cfg.CoordinatorInterval = time.Hour })
	began := time.Now()
	const incidents = 3
	for i := range incidents {
		since := time.Now()
		if _, err := r.h.c.Put(ctx, []byte(fmt.Sprintf("t%d-b2b", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
		r.s3.SetFault(s3test.Fault{Status: 503, Remaining: -1})
		r.waitFor("the error pause", 2*time.Minute, func() bool {
			st, err := r.observer().GetTask(ctx, "pitr")
			return err == nil && st.Pause.V2.IsError()
		})
		r.s3.ClearFault()
		r.waitFor("the task to run again", 2*time.Minute, func() bool { return r.running(since) })
		// Progress past the resume: every store that observes part of
		// the task made it durable up to a ts after the resume.
		ts, err := r.h.c.TSO(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.waitFor("the stores to flush past the resume", 2*time.Minute, func() bool {
			cps, err := r.observer().Checkpoints(ctx, "pitr")
			if err != nil {
				return false
			}
			stores := 0
			for _, cp := range cps {
				if cp.Kind == meta.CheckpointStore {
					if cp.TS < ts {
						return false
					}
					stores++
				}
			}
			return stores > 0
		})
	}
	if n := len(r.events(lbpb.RecoveryEvent_AUTO_RESUME_ATTEMPT, began)); n != incidents {
		t.Fatalf("%d automatic resumes, want %d", n, incidents)
	}
	if evs := r.events(lbpb.RecoveryEvent_AUTO_RESUME_FAILED, began); len(evs) != 0 {
		t.Fatalf("a resume that held was taken for a failed one: %s", evs[0].Message)
	}
	if n := len(r.events(lbpb.RecoveryEvent_AUTO_RESUME_SUCCEEDED, began)); n < incidents-1 {
		t.Fatalf("%d resumes judged held, want at least %d", n, incidents-1)
	}
}
