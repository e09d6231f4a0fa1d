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
	"logbackup/tests/s3test"
	"logbackup/tests/simcluster"
)

const taskName = "playground"

// Options are the playground's flags.
type Options struct {
	Dir           string        // PD/etcd data, agent logs, default storage; default a temp dir
	Storage       string        // default local://<dir>/backup; the nemesis uses a loopback S3
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
	// FatalSLO, when set, makes a fatal error reported slower than this
	// (from the agent meeting it to its LastError, undisturbed by other
	// faults) a violation; 0 only reports the distribution.
	FatalSLO time.Duration
	// Sabotage breaks the backup on purpose (SabotageDropWrite,
	// SabotageCheckpointBack), to prove the oracle fails.
	Sabotage string
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "logbackup-playground-")
		if err != nil {
			return err
		}
		o.Dir = d
	}
	if o.Nemesis && o.Storage != "" {
		return errors.New("--nemesis writes to its own loopback S3 server (it injects storage faults there); leave out --storage")
	}
	if o.Storage == "" && !o.Nemesis {
		o.Storage = "local://" + filepath.Join(o.Dir, "backup")
	}
	if o.Stores <= 0 {
		o.Stores = 3
	}
	if o.Regions <= 0 {
		o.Regions = 8
	}
	if o.Rate <= 0 {
		o.Rate = 100
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 3 * time.Second
	}
	if o.FlushInterval < time.Second {
		return fmt.Errorf("--flush-interval %s is below the agents' 1s minimum", o.FlushInterval)
	}
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1e9
	}
	if o.FaultGap <= 0 {
		o.FaultGap = 20 * time.Second
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

// Run runs the playground and returns an error unless the final
// verification (and, with Nemesis, every rule of the oracle) passes.
func Run(ctx context.Context, o Options, out io.Writer) error {
	if err := o.defaults(); err != nil {
		return err
	}
	log.SetLevel(zapcore.ErrorLevel) // client-go's INFO chatter would drown the progress line
	pr := &printer{out: out, began: time.Now()}
	if o.Nemesis {
		pr.printf("nemesis seed: %d (replay its choices with --seed %d)\n", o.Seed, o.Seed)
	}

	var splits [][]byte
	for i := 1; i < o.Regions; i++ {
		splits = append(splits, []byte(fmt.Sprintf("t%04d", i*10000/o.Regions)))
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	cluster, err := simcluster.Start(sctx, simcluster.Config{Stores: o.Stores, SplitKeys: splits, Seed: o.Seed,
		ServePD: true, DataDir: filepath.Join(o.Dir, "pd")})
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
		return errors.New("br stream start failed")
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
			return g, fmt.Errorf("the global checkpoint did not reach the end of the workload within %s", limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
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
