// Package playground runs the whole system on one machine, in its deployed
// shape: the simulated TiKV cluster serving PD and its etcd on one address
// and CDC per store, one stream agent per store as a separate process
// (cmd/streamagent's code), a steady workload and a log backup task started
// through `br stream start`'s code; at the end it verifies that the storage
// holds every write up to the published checkpoint. With Nemesis it also
// injects faults and checks the system against its ledger all along.
package playground

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/log"
	"go.uber.org/zap/zapcore"

	"logbackup/br"
	"logbackup/br/cli"
	"logbackup/meta"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/streamagent/agentrun"
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

const taskName = "playground"

// Options are the playground's flags.
type Options struct {
	Dir string // PD/etcd data, agent logs, default storage; default a temp dir
	// TempDir says Dir was made for this run (set when Dir is empty): it
	// is removed when the run passes and named when it does not.
	TempDir bool
	Storage string // default local://<dir>/backup; the nemesis uses a loopback S3
	// PD is a PD the user runs ("127.0.0.1:2379", a pd-server v8.5.x):
	// the simulated stores join it as TiKV stores do (bootstrap, heartbeats,
	// its TSO) and the agents and br use it and its etcd. "" serves the
	// simulator's own PD.
	PD            string
	Duration      time.Duration // workload duration; 0 = until ctx ends
	Stores        int
	Regions       int
	Rate          int // transactions per second
	FlushInterval time.Duration

	// Nemesis injects faults while the workload runs and checks the
	// oracle's rules all along.
	Nemesis bool
	// Seed drives the nemesis's choices, the workload and the simulator;
	// 0 picks one from the clock. Printed, so a failing run can replay its
	// choices (not their exact timing).
	Seed int64
	// Faults lists the fault kinds to inject (AllFaults); nil means all,
	// an empty slice none.
	Faults []string
	// FaultGap is the mean pause between two faults of one lane (default
	// 20 s).
	FaultGap time.Duration
	// RetryBudget is the agents' retry budget (--retry-attempts,
	// --retry-duration); zero: the agent's default. A short one lets a
	// short run see a storage outage spend it, pause the task and be
	// resumed automatically.
	RetryBudget streamagent.RetryBudget
	// FatalSLO, when set, makes a fatal error reported slower than this
	// (from the agent meeting it to its LastError, undisturbed by other
	// faults) a violation; 0 only reports the distribution.
	FatalSLO time.Duration
	// Sabotage breaks the backup on purpose (SabotageDropWrite,
	// SabotageCheckpointBack), to prove the oracle fails.
	Sabotage string
}

// The playground's defaults, which its command's flags show too. Its
// agents flush every few seconds, not at TiKV's 3 minutes, so that a run of
// 20 s shows checkpoints advancing.
const (
	DefaultStores        = 3
	DefaultRegions       = 8
	DefaultRate          = 100 // transactions per second
	DefaultFlushInterval = 3 * time.Second
	DefaultFaultGap      = 20 * time.Second
)

// defaults fills in the zero values. Negative values are refused here;
// the command refuses zeros too (CheckFlags), where a zero was typed.
func (o *Options) defaults() error {
	if o.Stores < 0 || o.Regions < 0 || o.Rate < 0 || o.Duration < 0 || o.FlushInterval < 0 || o.FaultGap < 0 || o.FatalSLO < 0 {
		return fmt.Errorf("negative option in %+v", *o)
	}
	if o.Regions > MaxRegions {
		return fmt.Errorf("--regions %d: at most %d", o.Regions, MaxRegions)
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "logbackup-playground-")
		if err != nil {
			return fmt.Errorf("make a temp dir (or pass --dir): %w", err)
		}
		o.Dir, o.TempDir = d, true
	}
	if o.Nemesis && o.PD != "" {
		return errors.New("--nemesis restarts and fails PD itself, which it cannot do to a PD you run; leave out --pd")
	}
	if o.Nemesis && o.Storage != "" {
		return errors.New("--nemesis writes to its own loopback S3 server (it injects storage faults there); leave out --storage")
	}
	if o.Storage == "" && !o.Nemesis {
		o.Storage = "local://" + filepath.Join(o.Dir, "backup")
	}
	if o.Stores <= 0 {
		o.Stores = DefaultStores
	}
	if o.Regions <= 0 {
		o.Regions = DefaultRegions
	}
	if o.Rate <= 0 {
		o.Rate = DefaultRate
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.FlushInterval < agentrun.MinFlushInterval {
		return fmt.Errorf("--flush-interval %s is below the agents' %s minimum", o.FlushInterval, agentrun.MinFlushInterval)
	}
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1e9
	}
	if o.FaultGap <= 0 {
		o.FaultGap = DefaultFaultGap
	}
	known := map[string]bool{}
	for _, k := range AllFaults() {
		known[k] = true
	}
	for _, k := range o.Faults {
		if !known[k] {
			return fmt.Errorf("unknown fault kind %q; known: %s", k, strings.Join(AllFaults(), ", "))
		}
	}
	switch o.Sabotage {
	case "", SabotageDropWrite, SabotageCheckpointBack:
	default:
		return fmt.Errorf("unknown sabotage %q", o.Sabotage)
	}
	if o.Sabotage != "" && !o.Nemesis {
		return errors.New("a sabotage needs --nemesis (its oracle is what must catch it)")
	}
	return nil
}

// printer serialises output from the run's goroutines.
type printer struct {
	mu    sync.Mutex
	out   io.Writer
	began time.Time
	mid   bool // a progress line without a newline is on screen
}

func (p *printer) eventf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mid {
		fmt.Fprintln(p.out)
		p.mid = false
	}
	el := time.Since(p.began).Round(100 * time.Millisecond)
	fmt.Fprintf(p.out, "[%s] %s\n", el, fmt.Sprintf(format, args...))
}

// progress rewrites one line in place.
func (p *printer) progress(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "\r"+format+"        ", args...)
	p.mid = true
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mid {
		fmt.Fprintln(p.out)
		p.mid = false
	}
	fmt.Fprintf(p.out, format, args...)
}

// Write lets the printer stand in for out (the br commands' output).
func (p *printer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// MaxRegions bounds --regions: the initial split keys are t0000…t9999.
const MaxRegions = 10000

// CheckFlags refuses flag values the playground cannot run with; unlike
// the Options' zero values, a zero typed on the command line is an error
// rather than a default.
func CheckFlags(o Options) error {
	bad := func(flag string, v any, want string) error {
		return fmt.Errorf("--%s %v: %s", flag, v, want)
	}
	switch {
	case o.Duration < 0:
		return bad("duration", o.Duration, "want a positive duration, or 0 to run until Ctrl-C")
	case o.Stores < 1:
		return bad("stores", o.Stores, "want at least 1 store")
	case o.Regions < 1 || o.Regions > MaxRegions:
		return bad("regions", o.Regions, fmt.Sprintf("want 1 to %d regions", MaxRegions))
	case o.Rate < 1:
		return bad("rate", o.Rate, "want at least 1 transaction per second")
	case o.FlushInterval < agentrun.MinFlushInterval:
		return bad("flush-interval", o.FlushInterval, fmt.Sprintf("the agents flush at most once every %s; want %s or more", agentrun.MinFlushInterval, agentrun.MinFlushInterval))
	case o.FaultGap <= 0:
		return bad("fault-gap", o.FaultGap, "want a positive duration")
	case o.FatalSLO < 0:
		return bad("fatal-slo", o.FatalSLO, "want a positive duration, or 0 to only report")
	}
	return nil
}

// Run runs the playground and returns an error unless the final
// verification (and, with Nemesis, every rule of the oracle) passes. A
// temp dir it made is removed when the run passes; otherwise its path is
// printed.
func Run(ctx context.Context, o Options, out io.Writer) error {
	if err := o.defaults(); err != nil {
		if o.TempDir {
			_ = os.RemoveAll(o.Dir)
		}
		return err
	}
	pr := &printer{out: out, began: time.Now()}
	if o.TempDir {
		pr.printf("data dir: %s (a temp dir: removed when the run passes; --dir keeps one)\n", o.Dir)
	} else {
		pr.printf("data dir: %s\n", o.Dir)
	}
	err := prepareDir(&o, pr)
	if err == nil {
		err = run(ctx, o, pr)
	}
	if o.TempDir {
		if err == nil {
			if rerr := os.RemoveAll(o.Dir); rerr != nil {
				pr.printf("could not remove the temp dir %s: %v\n", o.Dir, rerr)
			} else {
				pr.printf("removed the temp dir %s\n", o.Dir)
			}
		} else {
			pr.printf("kept the temp dir %s (PD data, agent logs, backup) to look into; remove it when done\n", o.Dir)
		}
	}
	return err
}

// dirMarker marks a directory the playground has run in.
const dirMarker = ".logbackup-playground"

// prepareDir starts afresh in a --dir a previous run used: the PD data it
// kept holds that run's task (one task per cluster), so a new run cannot
// start its own there. Only the playground's own files are replaced, and
// only in a directory the playground marked (or laid out) as its own.
func prepareDir(o *Options, pr *printer) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("--dir %s: %w", o.Dir, err)
	}
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(o.Dir, name))
		return err == nil
	}
	if exists("pd") {
		if !exists(dirMarker) && !exists("agent-1.log") {
			return fmt.Errorf("--dir %s holds a pd/ directory the playground did not make; pick a new or empty --dir", o.Dir)
		}
		old, _ := filepath.Glob(filepath.Join(o.Dir, "agent-*"))
		old = append(old, filepath.Join(o.Dir, "pd"))
		what := "its PD data and agent logs"
		if o.Storage == "local://"+filepath.Join(o.Dir, "backup") {
			old = append(old, filepath.Join(o.Dir, "backup"))
			what = "its PD data, agent logs and backup"
		}
		pr.printf("--dir %s holds a previous playground run: starting afresh (%s are replaced; pick a new --dir to keep them)\n", o.Dir, what)
		for _, p := range old {
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("remove the previous run's %s: %w", p, err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(o.Dir, dirMarker), []byte("a logbackup playground ran here\n"), 0o644); err != nil {
		return fmt.Errorf("--dir %s: %w", o.Dir, err)
	}
	return nil
}

func run(ctx context.Context, o Options, pr *printer) error {
	log.SetLevel(zapcore.ErrorLevel) // client-go's INFO chatter would drown the progress line
	if o.Nemesis {
		pr.printf("nemesis seed: %d (replay its choices with --seed %d)\n", o.Seed, o.Seed)
	}

	var splits [][]byte
	for i := 1; i < o.Regions; i++ {
		splits = append(splits, []byte(fmt.Sprintf("t%04d", i*10000/o.Regions)))
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	scfg := simcluster.Config{Stores: o.Stores, SplitKeys: splits, Seed: o.Seed, ServePD: true, DataDir: filepath.Join(o.Dir, "pd")}
	if o.PD != "" {
		scfg.ServePD, scfg.DataDir, scfg.ExternalPD = false, "", o.PD
	}
	cluster, err := simcluster.Start(sctx, scfg)
	cancel()
	if err != nil {
		return fmt.Errorf("start the simulated cluster: %w", err)
	}
	defer cluster.Close()
	pdAddr := cluster.PDAddr() // stays the same across PD restarts

	etcdCli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{pdAddr}})
	if err != nil {
		return err
	}
	defer etcdCli.Close()
	m := meta.NewClient(etcdCli, meta.WithRequestTimeout(5*time.Second))

	storageURL, oracleURL := o.Storage, o.Storage
	var s3 *s3test.Server
	var front *s3Front
	if o.Nemesis {
		if s3, err = s3test.New("backup"); err != nil {
			return err
		}
		defer s3.Close()
		if front, err = newS3Front(s3.Endpoint(), "backup", "log"); err != nil {
			return err
		}
		defer front.Close()
		oracleURL = s3.URL("backup", "log")
		if storageURL, err = front.URL(oracleURL); err != nil {
			return err
		}
	}

	// The task, through `br stream start`'s own code, against PD's address.
	if code := cli.Main(ctx, []string{"stream", "start", "-u", pdAddr, "--task-name", taskName, "--storage", storageURL}, pr, pr); code != 0 {
		return errors.New("br stream start failed (see above); if --storage holds an earlier run's backup, pick a new --storage")
	}
	st, err := m.GetTask(ctx, taskName)
	if err != nil {
		return err
	}
	startTS := st.Info.StartTs

	agents, err := newAgentSet(pdAddr, o.Dir, o.FlushInterval, cluster.StoreIDs(), pr.eventf)
	if err != nil {
		return err
	}
	if b := o.RetryBudget; b.Attempts > 0 || b.Duration > 0 {
		b = streamagent.Config{RetryBudget: b}.WithDefaults().RetryBudget
		agents.extra = []string{"--retry-attempts", fmt.Sprint(b.Attempts), "--retry-duration", b.Duration.String()}
	}
	defer agents.stopAll(30 * time.Second)
	if err := agents.startAll(); err != nil {
		return err
	}
	pr.printf("\nPD and its etcd: %s — try `go run ./cmd/br stream status -u %s` from another terminal.\n", pdAddr, pdAddr)
	for _, s := range agents.stores() {
		p := agents.procs[s]
		pr.printf("agent of store %d: http://%s/metrics and /status, log %s\n", s, p.addr(), p.logPath)
	}
	pr.printf("cluster: %d stores, %d regions; one agent process per store; %d txn/s; flush every %s.\n\n", o.Stores, o.Regions, o.Rate, o.FlushInterval)

	var orc *oracle
	var nem *nemesis
	if o.Nemesis {
		ost, err := storage.OpenURL(ctx, oracleURL)
		if err != nil {
			return err
		}
		defer ost.Close()
		orc = newOracle(cluster, m, ost, taskName, startTS, pr.eventf)
		nem = &nemesis{o: o, c: cluster, pdAddr: pdAddr, m: m, agents: agents, s3: s3, front: front, orc: orc, event: pr.eventf,
			kinds: kindSet(o.Faults), active: map[string]int{}, storeDown: map[uint64]bool{}, stopping: map[uint64]bool{}}
		front.met, front.stored = nem.met, orc.storedObject
		orc.start(3 * time.Second)
		defer orc.close()
	}

	// The workload, and the nemesis beside it.
	wctx := ctx
	if o.Duration > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	var txns atomic.Int64
	workDone := make(chan struct{})
	var up func(uint64) bool
	if nem != nil {
		up = nem.storeUp
	}
	go func() {
		defer close(workDone)
		workload(wctx, cluster, o.Rate, o.Seed, up, &txns)
	}()
	nemDone := make(chan struct{})
	faultsBegan := time.Now()
	go func() {
		defer close(nemDone)
		if nem != nil {
			nem.run(wctx)
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
progress:
	for i := 1; ; i++ {
		select {
		case <-workDone:
			break progress
		case <-tick.C:
			if nem == nil {
				printProgress(ctx, pr, m, txns.Load(), startTS, cluster)
			} else if i%10 == 0 {
				nem.printProgress(pr, txns.Load())
			}
		}
	}
	if nem != nil {
		pr.printf("\n")
		pr.eventf("workload stopped; healing the faults still in place...")
	}
	<-nemDone
	ran := time.Since(faultsBegan)
	pr.printf("\n")
	end, err := cluster.TSO(context.Background())
	if err != nil {
		return err
	}
	limit := 2 * time.Minute
	if nem != nil {
		// An error pause is resumed by the coordinator after a backoff
		// (30 s, doubling): give it time.
		limit = 10 * time.Minute
	}
	pr.eventf("waiting (up to %s) for the global checkpoint to pass the end of the workload...", limit)
	global, waitErr := waitGlobal(m, end, limit)
	if waitErr != nil {
		waitErr = fmt.Errorf("%w; agent logs: %s", waitErr, filepath.Join(o.Dir, "agent-*.log"))
	}
	if waitErr != nil && orc != nil {
		orc.violate("%v", waitErr)
		global = orc.globalCheckpoint()
	}
	agents.stopAll(30 * time.Second)
	if waitErr != nil && nem == nil {
		return waitErr
	}
	fc, err := verifyStorage(context.Background(), oracleURL, cluster, startTS, global)
	if err != nil {
		if nem == nil {
			return err
		}
		orc.violate("the final read of the storage failed: %v", err)
	}
	if nem == nil {
		return fc.print(pr)
	}
	orc.close()
	if fc != nil {
		_ = fc.print(pr)
	}
	v := nem.summarize(pr, fc, ran)
	if len(v.violations) > 0 {
		return fmt.Errorf("nemesis FAILED with %d violation(s) (seed %d); first: %s", len(v.violations), o.Seed, v.violations[0])
	}
	pr.printf("nemesis: OK (seed %d)\n", o.Seed)
	return nil
}

func kindSet(faults []string) map[string]bool {
	set := map[string]bool{}
	if faults == nil {
		faults = AllFaults()
	}
	for _, k := range faults {
		set[k] = true
	}
	return set
}

// waitGlobal waits until the global checkpoint reaches end.
func waitGlobal(m *meta.Client, end uint64, limit time.Duration) (uint64, error) {
	wait, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		g, ok, err := m.GlobalCheckpoint(wait, taskName)
		if err == nil && ok && g >= end {
			return g, nil
		}
		if wait.Err() != nil {
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return g, fmt.Errorf("the global checkpoint did not reach the end of the workload within %s; %s", limit, stallReason(rctx, m))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stallReason says what the task's records tell about a checkpoint that
// does not move: its pause, and each store's LastError.
func stallReason(ctx context.Context, m *meta.Client) string {
	st, err := m.GetTask(ctx, taskName)
	if err != nil {
		return fmt.Sprintf("the task cannot be read: %v", err)
	}
	errs, err := m.LastErrors(ctx, taskName)
	if err != nil {
		return fmt.Sprintf("its last errors cannot be read: %v", err)
	}
	var b strings.Builder
	switch {
	case st.Pause.Paused && (len(errs) > 0 || (st.Pause.V2 != nil && st.Pause.V2.Severity == meta.SeverityError)):
		b.WriteString("the task is paused by an error")
	case st.Pause.Paused:
		b.WriteString("the task is paused")
	default:
		b.WriteString("the task is running")
	}
	if len(errs) == 0 {
		b.WriteString("; no store reported an error (LastError)")
	}
	stores := make([]uint64, 0, len(errs))
	for s := range errs {
		stores = append(stores, s)
	}
	sort.Slice(stores, func(i, j int) bool { return stores[i] < stores[j] })
	for _, s := range stores {
		// An agent's message can quote a storage URL; never its keys.
		fmt.Fprintf(&b, "; store %d's LastError: %s: %s", s, errs[s].ErrorCode, storage.Redact(errs[s].ErrorMessage))
	}
	return b.String()
}

func printProgress(ctx context.Context, pr *printer, m *meta.Client, txns int64, startTS uint64, c *simcluster.Cluster) {
	g, ok, _ := m.GlobalCheckpoint(ctx, taskName)
	lag := "-"
	if ok && g > startTS {
		lag = br.Gap(time.Now(), g).String()
	}
	flushed := 0
	if st, err := m.GetTask(ctx, taskName); err == nil {
		if scs, err := m.SpanCheckpoints(ctx, taskName, st.Incarnation); err == nil {
			flushed = len(scs)
		}
	}
	pr.progress("txns committed: %d  regions: %d  stores flushed: %d  checkpoint lag: %s", txns, len(c.Regions()), flushed, lag)
}

// printProgress prints one line on the nemesis's state.
func (n *nemesis) printProgress(pr *printer, txns int64) {
	checked, lost, g := n.orc.progress()
	lag := "-"
	if g > 0 {
		lag = br.Gap(time.Now(), g).Round(100 * time.Millisecond).String()
	}
	n.mu.Lock()
	var active []string
	for k, c := range n.active {
		if c > 0 {
			active = append(active, k)
		}
	}
	injected := len(n.faults)
	n.mu.Unlock()
	sort.Strings(active)
	pr.eventf("progress: %d txns, %d faults injected (now: %s), checkpoint lag %s, versions checked %d, lost %d",
		txns, injected, strings.Join(active, " ")+map[bool]string{true: "none", false: ""}[len(active) == 0], lag, checked, lost)
}
