package playground

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	tso "github.com/tikv/client-go/v2/oracle"

	"logbackup/br/cli"
	"logbackup/meta"
	"logbackup/streamagent/errs"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

// Fault kinds, by lane. Every lane injects one fault at a time, after a
// random pause; lanes run at once, so faults of different lanes overlap.
var (
	agentKinds    = []string{"kill", "kill-upload", "kill-checkpoint", "term"}
	topologyKinds = []string{"leader", "split", "merge"}
	storeKinds    = []string{"store-down", "cdc-drop"}
	storageKinds  = []string{"s3-5xx", "s3-latency", "s3-throttle", "s3-outage", "s3-denied"}
	pdKinds       = []string{"pd-down", "etcd-restart"}
	operatorKinds = []string{"pause"}
)

// AllFaults lists every fault kind the nemesis knows.
func AllFaults() []string {
	var all []string
	for _, k := range [][]string{agentKinds, topologyKinds, storeKinds, storageKinds, pdKinds, operatorKinds} {
		all = append(all, k...)
	}
	return all
}

// Sabotages prove the oracle can fail: each breaks the backup on purpose.
const (
	SabotageDropWrite      = "drop-write"      // the storage acknowledges one meta file and loses it
	SabotageCheckpointBack = "checkpoint-back" // the global checkpoint is written lower, behind the agents' backs
)

// nemesis injects faults into the running playground.
type nemesis struct {
	o      Options
	c      *simcluster.Cluster
	pdAddr string
	m      *meta.Client
	agents *agentSet
	s3     *s3test.Server
	front  *s3Front
	orc    *oracle
	event  func(format string, args ...any)
	kinds  map[string]bool

	mu          sync.Mutex
	faults      []*faultRecord
	active      map[string]int
	disruptions []disruption
	storeDown   map[uint64]bool
	stopping    map[uint64]bool // agents in a graceful stop
	// calm is the longest stretch the global checkpoint lagged more than
	// the flush interval + 30 s while no fault was active, and when it
	// began: a stall nothing explains.
	calm, calmCur time.Duration
	calmAt        time.Time
}

// disruption is a span of time something besides the fault under watch
// stopped the agents from reporting (PD or etcd away, an agent dead).
type disruption struct {
	what     string
	store    uint64 // for an agent; 0 for PD/etcd
	from, to time.Time
}

type lane struct {
	name  string
	kinds []string
	gap   time.Duration
	store uint64 // agent lanes
}

func (n *nemesis) lanes() []lane {
	gap := n.o.FaultGap
	var ls []lane
	for _, s := range n.agents.stores() {
		ls = append(ls, lane{name: fmt.Sprintf("agent-%d", s), kinds: agentKinds, gap: gap, store: s})
	}
	ls = append(ls,
		lane{name: "topology", kinds: topologyKinds, gap: gap / 2},
		lane{name: "store", kinds: storeKinds, gap: gap},
		lane{name: "storage", kinds: storageKinds, gap: gap},
		lane{name: "pd", kinds: pdKinds, gap: gap},
		lane{name: "operator", kinds: operatorKinds, gap: gap * 3 / 2})
	var out []lane
	for i := range ls {
		var ks []string
		for _, k := range ls[i].kinds {
			if n.kinds[k] {
				ks = append(ks, k)
			}
		}
		if len(ks) > 0 {
			ls[i].kinds = ks
			out = append(out, ls[i])
		}
	}
	return out
}

// run injects faults until ctx ends, then heals whatever is still broken.
func (n *nemesis) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i, l := range n.lanes() {
		rng := rand.New(rand.NewSource(n.o.Seed*1009 + int64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				wait := time.Duration(rng.ExpFloat64() * float64(l.gap))
				wait = min(max(wait, l.gap/5), 3*l.gap)
				if !sleepUntil(ctx, wait) {
					return
				}
				n.inject(ctx, rng, l, l.kinds[rng.Intn(len(l.kinds))])
			}
		}()
	}
	if n.o.Sabotage != "" {
		wg.Add(1)
		go func() { defer wg.Done(); n.sabotage(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); n.watchCalmLag(ctx) }()
	wg.Wait()
	n.healAll()
}

// watchCalmLag samples the global checkpoint's lag every second and keeps
// the longest stretch it stayed above the flush interval + 30 s with no
// fault active. Time to recover mixes in the faults still active at a
// heal; this figure is the stall an operator would page on that no fault
// explains.
func (n *nemesis) watchCalmLag(ctx context.Context) {
	limit := n.o.FlushInterval + 30*time.Second
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var from time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			g := n.orc.globalCheckpoint()
			lag := now.Sub(tso.GetTimeFromTS(g))
			n.mu.Lock()
			calm := true
			for _, c := range n.active {
				calm = calm && c == 0
			}
			switch {
			case g == 0 || !calm || lag <= limit:
				from = time.Time{}
				n.calmCur = 0
			case from.IsZero():
				from = now
			}
			if !from.IsZero() {
				n.calmCur = now.Sub(from)
				if n.calmCur > n.calm {
					n.calm, n.calmAt = n.calmCur, from
				}
			}
			n.mu.Unlock()
		}
	}
}

// undisturbedLocked: no fault but f was active from f's heal until its
// recovery (a fault of no duration, such as a split, counts when it falls
// in between). n.mu is held.
func (n *nemesis) undisturbedLocked(f *faultRecord) bool {
	for _, g := range n.faults {
		if g == f || !g.start.Before(f.recovered) {
			continue
		}
		if g.healed.IsZero() || !g.healed.Before(f.healed) {
			return false
		}
	}
	return true
}

// sleepUntil sleeps d unless ctx ends first; it reports whether it slept.
func sleepUntil(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// hold keeps a fault in place for a random time in [lo, hi], cut short
// when the run ends.
func hold(ctx context.Context, rng *rand.Rand, lo, hi time.Duration) {
	sleepUntil(ctx, lo+time.Duration(rng.Int63n(int64(hi-lo)+1)))
}

// begin records a fault that is in place now.
func (n *nemesis) begin(kind, detail string) *faultRecord {
	f := &faultRecord{kind: kind, detail: detail, start: time.Now()}
	n.mu.Lock()
	n.faults = append(n.faults, f)
	n.active[kind]++
	n.mu.Unlock()
	n.orc.track(f)
	n.event("fault %s: %s", kind, detail)
	return f
}

// heal records that the fault is gone; the oracle measures the recovery.
func (n *nemesis) heal(f *faultRecord) {
	n.orc.healed(f)
	n.mu.Lock()
	n.active[f.kind]--
	n.mu.Unlock()
	if d := f.healed.Sub(f.start); d > 500*time.Millisecond {
		n.event("healed %s after %s", f.kind, d.Round(100*time.Millisecond))
	}
}

// disrupt records the start of a disruption; call the result at its end.
func (n *nemesis) disrupt(what string, store uint64) func() {
	n.mu.Lock()
	i := len(n.disruptions)
	n.disruptions = append(n.disruptions, disruption{what: what, store: store, from: time.Now()})
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		n.disruptions[i].to = time.Now()
		n.mu.Unlock()
	}
}

// disturbedAny reports whether anything disrupted the agents during
// [from, to].
func (n *nemesis) disturbedAny(from, to time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, d := range n.disruptions {
		if d.from.Before(to) && (d.to.IsZero() || d.to.After(from)) {
			return true
		}
	}
	return false
}

// met is the front telling that an agent got a fatal answer. An agent
// doing a pause's or a graceful stop's final flush, or the coordinator's
// probe of a paused task's storage, does not report it, by design (the
// next owner rescans; the probe is an auto-resume attempt): such meetings
// do not start the clock.
func (n *nemesis) met(store uint64, status int, at time.Time) {
	n.mu.Lock()
	stopping := n.stopping[store]
	n.mu.Unlock()
	if stopping || n.orc.paused() {
		n.orc.metUnreportable()
		return
	}
	n.orc.met(store, status, at)
}

// disturbedLocked reports whether something else kept store's agent (or every
// agent) from reporting during [from, to].
// n.mu is held.
func (n *nemesis) disturbedLocked(store uint64, from, to time.Time) bool {
	for _, d := range n.disruptions {
		end := d.to
		if end.IsZero() {
			end = time.Now()
		}
		if (d.store == 0 || d.store == store) && d.from.Before(to) && end.After(from) {
			return true
		}
	}
	return false
}

func (n *nemesis) inject(ctx context.Context, rng *rand.Rand, l lane, kind string) {
	switch kind {
	case "kill":
		n.killAgent(ctx, rng, l.store, syscall.SIGKILL)
	case "term":
		n.killAgent(ctx, rng, l.store, syscall.SIGTERM)
	case "kill-upload":
		n.killInFlush(ctx, rng, l.store, killAfterData)
	case "kill-checkpoint":
		n.killInFlush(ctx, rng, l.store, killAfterMeta)
	case "leader", "split", "merge":
		n.topology(rng, kind)
	case "store-down":
		n.storeOutage(ctx, rng)
	case "cdc-drop":
		s := n.agents.stores()[rng.Intn(len(n.agents.procs))]
		f := n.begin(kind, fmt.Sprintf("store %d's EventFeed streams dropped", s))
		n.c.DropStreams(s)
		n.heal(f)
	case "s3-5xx":
		n.storageFault(ctx, rng, kind, s3test.Fault{Statuses: []int{500, 503}}, time.Second, 10*time.Second, "500/503 answers")
	case "s3-throttle":
		n.storageFault(ctx, rng, kind, s3test.Fault{Statuses: []int{429, 503}}, 2*time.Second, 15*time.Second, "SlowDown (429/503)")
	case "s3-latency":
		d := 100*time.Millisecond + time.Duration(rng.Int63n(int64(1900*time.Millisecond)))
		n.storageFault(ctx, rng, kind, s3test.Fault{SlowBody: d}, 5*time.Second, 20*time.Second, fmt.Sprintf("%s per answer", d.Round(time.Millisecond)))
	case "s3-outage":
		n.storageOutage(ctx)
	case "s3-denied":
		n.permissionLoss(ctx, rng)
	case "pd-down":
		f := n.begin(kind, "PD's API answers Unavailable (etcd serves)")
		end := n.disrupt(kind, 0)
		n.c.SetPDDown(true)
		hold(ctx, rng, time.Second, 20*time.Second)
		n.c.SetPDDown(false)
		end()
		n.heal(f)
	case "etcd-restart":
		n.restartPD(ctx, rng)
	case "pause":
		n.operatorPause(ctx, rng)
	}
}

// killAgent stops a store's agent with sig (SIGKILL at a random moment,
// or SIGTERM for a graceful stop) and starts it again.
func (n *nemesis) killAgent(ctx context.Context, rng *rand.Rand, store uint64, sig syscall.Signal) {
	p := n.agents.procs[store]
	kind, what := "kill", "kill -9"
	if sig == syscall.SIGTERM {
		kind, what = "term", "SIGTERM (graceful stop)"
	}
	f := n.begin(kind, fmt.Sprintf("%s of the agent of store %d", what, store))
	end := n.disrupt(kind, store)
	n.mu.Lock()
	n.stopping[store] = sig == syscall.SIGTERM
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.stopping, store)
		n.mu.Unlock()
	}()
	if !p.stop(sig, time.Minute) {
		n.orc.violate("the agent of store %d did not exit within a minute of %s", store, what)
		p.stop(syscall.SIGKILL, 10*time.Second)
	}
	hold(ctx, rng, 0, 3*time.Second)
	if err := p.release(); err != nil {
		n.event("restart of agent %d: %v", store, err)
	}
	end()
	n.heal(f)
}

// killInFlush kills a store's agent at an exact point of a flush: right
// after a data object is stored (its meta file is not), or right after
// the meta file is stored (no checkpoint has moved yet).
func (n *nemesis) killInFlush(ctx context.Context, rng *rand.Rand, store uint64, at killPoint) {
	p := n.agents.procs[store]
	var killedAt time.Time
	var end func()
	wait := n.front.armKill(store, at, func() {
		killedAt = time.Now()
		end = n.disrupt("kill", store)
		p.stop(syscall.SIGKILL, 10*time.Second)
	})
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	fired := wait(wctx)
	cancel()
	if !fired {
		return // no flush of that store meanwhile (no leader, or the run ended)
	}
	kind, point := "kill-upload", "a data object was stored and its meta file not yet"
	if at == killAfterMeta {
		kind, point = "kill-checkpoint", "its meta file was stored and no checkpoint moved yet"
	}
	f := n.begin(kind, fmt.Sprintf("kill -9 of the agent of store %d once %s", store, point))
	f.start = killedAt
	hold(ctx, rng, 0, 2*time.Second)
	if err := p.release(); err != nil {
		n.event("restart of agent %d: %v", store, err)
	}
	end()
	n.heal(f)
}

func (n *nemesis) upStores() []uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	var up []uint64
	for _, s := range n.agents.stores() {
		if !n.storeDown[s] {
			up = append(up, s)
		}
	}
	return up
}

func (n *nemesis) storeUp(s uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.storeDown[s]
}

// topology moves a leader, splits or merges a region.
func (n *nemesis) topology(rng *rand.Rand, kind string) {
	regions := n.c.Regions()
	r := regions[rng.Intn(len(regions))]
	switch kind {
	case "leader":
		up := n.upStores()
		to := up[rng.Intn(len(up))]
		if to == r.LeaderStore {
			return
		}
		if err := n.c.TransferLeader(r.Meta.Id, to); err != nil {
			return
		}
		n.heal(n.begin(kind, fmt.Sprintf("region %d's leader to store %d", r.Meta.Id, to)))
	case "split":
		key := fmt.Sprintf("t%04d", rng.Intn(10000))
		id, err := n.c.Split([]byte(key))
		if err != nil {
			return
		}
		n.heal(n.begin(kind, fmt.Sprintf("at %s (new region %d)", key, id)))
	case "merge":
		if len(regions) <= max(2, n.o.Regions/2) || len(r.Meta.EndKey) == 0 {
			return // keep some regions
		}
		raw, err := simcluster.DecodeKey(r.Meta.StartKey)
		if err != nil || n.c.Merge(raw) != nil {
			return
		}
		n.heal(n.begin(kind, fmt.Sprintf("region %d with its right neighbour", r.Meta.Id)))
	}
}

// storeOutage takes one store down for a while (its leaders move away).
func (n *nemesis) storeOutage(ctx context.Context, rng *rand.Rand) {
	up := n.upStores()
	if len(up) < len(n.agents.procs) || len(up) < 2 {
		return // one store down at a time, and never the last
	}
	s := up[rng.Intn(len(up))]
	f := n.begin("store-down", fmt.Sprintf("store %d down", s))
	n.mu.Lock()
	n.storeDown[s] = true
	n.mu.Unlock()
	n.c.StoreDown(s)
	hold(ctx, rng, 2*time.Second, 15*time.Second)
	n.c.StoreUp(s)
	n.mu.Lock()
	delete(n.storeDown, s)
	n.mu.Unlock()
	n.heal(f)
}

// agentRequests matches the requests that came through the front.
func agentRequests(r *http.Request) bool { return r.Header.Get(agentHeader) != "" }

// storageFault makes the loopback S3 misbehave for a while.
func (n *nemesis) storageFault(ctx context.Context, rng *rand.Rand, kind string, fault s3test.Fault, lo, hi time.Duration, what string) {
	fault.Remaining, fault.Match = -1, agentRequests
	f := n.begin(kind, "storage answers "+what)
	n.s3.SetFault(fault)
	hold(ctx, rng, lo, hi)
	n.s3.ClearFault()
	n.heal(f)
}

// waitRunning waits (up to d) until the task is not paused.
func (n *nemesis) waitRunning(ctx context.Context, d time.Duration) bool {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		if st, err := n.m.GetTask(wctx, taskName); err == nil && !st.Pause.Paused {
			return true
		}
		if !sleepUntil(wctx, 200*time.Millisecond) {
			return false
		}
	}
}

// pausedByError reports the code of the task's error pause, if it has one.
func (n *nemesis) pausedByError(ctx context.Context) (string, bool) {
	st, err := n.m.GetTask(ctx, taskName)
	if err != nil || !st.Pause.Paused || !st.Pause.V2.IsError() {
		return "", false
	}
	if e, err := st.Pause.V2.ErrorPayload(); err == nil && e != nil {
		return e.ErrorCode, true
	}
	return "", true
}

// pausedWithLastError reports whether the task is paused, by anyone, while
// an agent's LastError carries code: the nemesis's own operator pause can
// land between an agent's error report and the agent's pause (seen with
// seed 20261201), and then only the LastError says this fault needs a
// resume --clear-error.
func (n *nemesis) pausedWithLastError(ctx context.Context, code string) bool {
	st, err := n.m.GetTask(ctx, taskName)
	if err != nil || !st.Pause.Paused {
		return false
	}
	les, err := n.m.LastErrors(ctx, taskName)
	if err != nil {
		return false
	}
	for _, le := range les {
		if le.GetErrorCode() == code {
			return true
		}
	}
	return false
}

// storageOutage fails every storage request until the agents' retry budget
// is spent and the task is paused by a recoverable error; then the storage
// comes back and the coordinator must resume the task by itself.
func (n *nemesis) storageOutage(ctx context.Context) {
	if !n.waitRunning(ctx, 2*time.Minute) {
		return
	}
	f := n.begin("s3-outage", "storage answers 503 until the retry budget is spent")
	n.s3.SetFault(s3test.Fault{Status: 503, Remaining: -1, Match: agentRequests})
	wctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	for wctx.Err() == nil {
		if code, ok := n.pausedByError(wctx); ok {
			n.event("the task is paused by %s; storage comes back, the coordinator must resume it", code)
			break
		}
		sleepUntil(wctx, 200*time.Millisecond)
	}
	cancel()
	n.s3.ClearFault()
	n.heal(f)
}

// permissionLoss denies the agents' storage requests: a fatal fault. Each
// agent that meets it must report a LastError with the access-denied code
// and the task go to ERROR; then access comes back and the operator
// resumes the task with `br stream resume --clear-error`.
func (n *nemesis) permissionLoss(ctx context.Context, rng *rand.Rand) {
	if !n.waitRunning(ctx, 2*time.Minute) {
		return
	}
	code := string(errs.CodeStorageAccessDenied)
	e := n.orc.openEpoch(code)
	f := n.begin("s3-denied", "storage denies access (403), a fatal error")
	f.epoch = e
	n.s3.SetFault(s3test.Fault{Status: http.StatusForbidden, Remaining: -1, Match: agentRequests})
	// Bounded by the agents' flush interval and a generous margin; the
	// end of the run does not cut it short: the fault must be judged.
	// The summary judges the epoch: met and never surfaced is a violation.
	// A report can wait for PD/etcd or a restarted agent: wait longer then.
	deadline := time.Now().Add(n.o.FlushInterval + time.Minute)
	for {
		met, surfaced, firstMeet := n.orc.epochState(e)
		if surfaced {
			break
		}
		if met && time.Since(firstMeet) > 30*time.Second &&
			(time.Since(firstMeet) > 3*time.Minute || !n.disturbedAny(firstMeet, time.Now())) {
			n.event("an agent met the denied storage at %s and no LastError %s followed", firstMeet.Format("15:04:05.000"), code)
			break
		}
		if !met && time.Now().After(deadline) {
			n.event("no running agent met the denied storage (no flush with data meanwhile)")
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	hold(ctx, rng, 0, 2*time.Second)
	n.s3.ClearFault()
	n.orc.closeEpoch(e)
	// The operator's part: resume only what this fault paused.
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The agent writes its LastError before the pause, and both wait for
	// etcd and PD, which other faults can hold down for more than a
	// minute (a PD restart under -race took 80 s): give the pause a minute
	// of undisturbed time to appear rather than leave a task paused by
	// this fault behind, with no one to resume it.
	pauseBy := time.Now().Add(time.Minute)
	for rctx.Err() == nil {
		got, paused := n.pausedByError(rctx)
		if !paused && n.pausedWithLastError(rctx, code) {
			got, paused = code, true
		}
		if now := time.Now(); !paused && n.disturbedAny(now, now) {
			pauseBy = now.Add(time.Minute)
		}
		if !paused && time.Now().Before(pauseBy) {
			sleepUntil(rctx, 200*time.Millisecond)
			continue
		}
		if !paused || got != code {
			break
		}
		n.orc.resumingNow()
		if out, err := n.cli(rctx, "stream", "resume", "--task-name", taskName, "--clear-error"); err != nil {
			n.event("br stream resume --clear-error failed (retrying): %s", firstLine(out))
			sleepUntil(rctx, time.Second)
			continue
		}
		n.event("operator: br stream resume --clear-error")
		break
	}
	n.heal(f)
}

// restartPD stops PD and its etcd (one process, one address) and starts
// them again.
func (n *nemesis) restartPD(ctx context.Context, rng *rand.Rand) {
	f := n.begin("etcd-restart", "PD and its etcd stopped")
	end := n.disrupt("etcd-restart", 0)
	if err := n.c.StopPD(); err != nil {
		n.event("stop PD: %v", err)
	}
	hold(ctx, rng, time.Second, 10*time.Second)
	for i := 0; ; i++ {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := n.c.StartPD(sctx)
		cancel()
		if err == nil {
			break
		}
		if i == 5 {
			n.orc.violate("PD could not be started again: %v", err)
			break
		}
		time.Sleep(time.Second)
	}
	end()
	n.heal(f)
}

// operatorPause pauses the task with `br stream pause` and resumes it with
// `br stream resume`, as a person would.
func (n *nemesis) operatorPause(ctx context.Context, rng *rand.Rand) {
	if !n.waitRunning(ctx, 10*time.Second) {
		return
	}
	if out, err := n.cli(ctx, "stream", "pause", "--task-name", taskName, "--message", "nemesis: operator pause"); err != nil {
		n.event("br stream pause refused: %s", firstLine(out))
		return
	}
	f := n.begin("pause", "br stream pause, then br stream resume")
	hold(ctx, rng, time.Second, 10*time.Second)
	rctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for rctx.Err() == nil {
		out, err := n.cli(rctx, "stream", "resume", "--task-name", taskName)
		if err == nil {
			break
		}
		if strings.Contains(out, "paused by an error") {
			n.event("br stream resume refused: the task is paused by an error now; not the operator's to clear")
			break
		}
		n.event("br stream resume failed (retrying): %s", firstLine(out))
		sleepUntil(rctx, time.Second)
	}
	n.heal(f)
}

// cli runs the br command line's own code against the playground's PD.
func (n *nemesis) cli(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	args = append(args, "-u", n.pdAddr)
	if code := cli.Main(ctx, args, &out, &out); code != 0 {
		return out.String(), fmt.Errorf("br %s: exit %d", strings.Join(args[:2], " "), code)
	}
	return out.String(), nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// healAll undoes whatever a lane left behind (lanes heal their own faults;
// this is the safety net before the final checks).
func (n *nemesis) healAll() {
	n.s3.ClearFault()
	n.c.SetPDDown(false)
	for _, s := range n.agents.stores() {
		n.c.StoreUp(s)
		_ = n.agents.procs[s].release()
	}
}

// sabotage breaks the backup on purpose, once the run is under way, so a
// test can see the oracle fail.
func (n *nemesis) sabotage(ctx context.Context) {
	// Wait for a few global checkpoints: the oracle must have something
	// to compare against.
	var first uint64
	for first == 0 || n.orc.globalCheckpoint() <= first+uint64(2*time.Second/time.Millisecond)<<18 {
		if first == 0 {
			first = n.orc.globalCheckpoint()
		}
		if !sleepUntil(ctx, 100*time.Millisecond) {
			return
		}
	}
	switch n.o.Sabotage {
	case SabotageDropWrite:
		n.front.dropNextMeta()
		n.event("sabotage: the storage will acknowledge and lose the next meta file that lists data")
	case SabotageCheckpointBack:
		g := n.orc.globalCheckpoint()
		back := g - uint64(time.Second/time.Millisecond)<<18
		key := meta.GlobalCheckpointKey(taskName)
		if _, err := n.m.Raw().Put(ctx, key, string(meta.EncodeTS(back))); err != nil {
			n.event("sabotage failed: %v", err)
			return
		}
		n.event("sabotage: global checkpoint written back from %d to %d", g, back)
	}
}

// percentile is the nearest-rank p-th percentile of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}
