// Package playground runs the whole system on one machine: an embedded
// etcd, the simulated TiKV cluster, one agent per store, a steady workload
// and a log backup task to local (or any) storage, then verifies that the
// storage holds every write up to the published checkpoint.
package playground

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/log"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	"go.uber.org/zap/zapcore"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/meta/embedetcd"
	"logbackup/storage"
	"logbackup/streamagent"
	"logbackup/tests/simcluster"
)

// Options are the playground's flags.
type Options struct {
	Dir           string        // etcd data and default storage; default a temp dir
	EtcdAddr      string        // default 127.0.0.1:2379, falling back to a free port
	Storage       string        // default local://<dir>/backup
	Duration      time.Duration // workload duration; 0 = until ctx ends
	Stores        int
	Regions       int
	Rate          int // transactions per second
	FlushInterval time.Duration
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "logbackup-playground-")
		if err != nil {
			return err
		}
		o.Dir = d
	}
	if o.EtcdAddr == "" {
		o.EtcdAddr = "127.0.0.1:2379"
	}
	if o.Storage == "" {
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
	return nil
}

// Run runs the playground and returns an error unless the final
// verification passes.
func Run(ctx context.Context, o Options, out io.Writer) error {
	if err := o.defaults(); err != nil {
		return err
	}
	log.SetLevel(zapcore.ErrorLevel) // client-go's INFO chatter would drown the progress line

	etcd, err := startEtcd(ctx, o)
	if err != nil {
		return err
	}
	defer etcd.Close()
	cli, err := meta.Dial(ctx, meta.DialConfig{Endpoints: []string{etcd.Endpoint()}})
	if err != nil {
		return err
	}
	defer cli.Close()
	m := meta.NewClient(cli)

	var splits [][]byte
	for i := 1; i < o.Regions; i++ {
		splits = append(splits, []byte(fmt.Sprintf("t%04d", i*10000/o.Regions)))
	}
	cluster, err := simcluster.Start(ctx, simcluster.Config{Stores: o.Stores, SplitKeys: splits})
	if err != nil {
		return fmt.Errorf("start the simulated cluster: %w", err)
	}
	defer cluster.Close()

	startTS, err := cluster.TSO(ctx)
	if err != nil {
		return err
	}
	env := br.NewEnv(m).WithPD(cluster.PD())
	if err := br.Start(ctx, env, br.StartOptions{TaskName: "playground", StartTS: fmt.Sprint(startTS), Storage: o.Storage}, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\netcd: %s — try `go run ./cmd/br stream status -u %s` from another terminal.\n", etcd.Endpoint(), etcd.Endpoint())
	fmt.Fprintf(out, "cluster: %d stores, %d regions; one agent per store; %d txn/s; flush every %s.\n\n", o.Stores, o.Regions, o.Rate, o.FlushInterval)

	agentCtx, stopAgents := context.WithCancel(context.Background())
	var agentsWG sync.WaitGroup
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, s := range cluster.StoreIDs() {
		a, err := streamagent.New(streamagent.Config{StoreID: s, PD: cluster.PD(), Meta: m, ClusterID: cluster.ClusterID(),
			FlushInterval: o.FlushInterval, ReconcileInterval: time.Second, CoordinatorInterval: time.Second, Logger: quiet}, nil)
		if err != nil {
			stopAgents()
			return err
		}
		agentsWG.Add(1)
		go func() { defer agentsWG.Done(); a.Run(agentCtx) }()
	}
	stopAgentsOnce := sync.OnceFunc(func() { stopAgents(); agentsWG.Wait() })
	defer stopAgentsOnce()

	// Workload, with a leader transfer or a split now and then.
	wctx := ctx
	if o.Duration > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	var txns atomic.Int64
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		workload(wctx, cluster, o.Rate, &txns)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
progress:
	for {
		select {
		case <-workDone:
			break progress
		case <-tick.C:
			printProgress(ctx, out, m, txns.Load(), startTS, cluster)
		}
	}
	fmt.Fprintln(out)
	end, err := cluster.TSO(context.Background())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Workload stopped; waiting for the global checkpoint to pass it...\n")
	wait, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var global uint64
	for {
		g, ok, err := m.GlobalCheckpoint(wait, "playground")
		if err == nil && ok && g >= end {
			global = g
			break
		}
		if wait.Err() != nil {
			return fmt.Errorf("the global checkpoint did not reach the end of the workload within 2 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopAgentsOnce()
	return verify(context.Background(), out, o.Storage, cluster, startTS, global)
}

func startEtcd(ctx context.Context, o Options) (*embedetcd.Server, error) {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dir := filepath.Join(o.Dir, "etcd")
	srv, err := embedetcd.Start(sctx, embedetcd.Config{Dir: dir, ClientURL: "http://" + o.EtcdAddr, Fast: true})
	if err != nil && o.EtcdAddr == "127.0.0.1:2379" {
		// Something already serves the default port: take a free one.
		srv, err = embedetcd.Start(sctx, embedetcd.Config{Dir: dir, ClientURL: "http://127.0.0.1:0", Fast: true})
	}
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	return srv, nil
}

func workload(ctx context.Context, c *simcluster.Cluster, rate int, txns *atomic.Int64) {
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	every := time.Second / time.Duration(rate)
	next := time.Now()
	for i := 0; ctx.Err() == nil; i++ {
		if i > 0 && i%(rate*3) == 0 {
			regions := c.Regions()
			r := regions[rng.Intn(len(regions))]
			if rng.Intn(2) == 0 {
				c.TransferLeader(r.Meta.Id, c.StoreIDs()[rng.Intn(len(c.StoreIDs()))])
			} else {
				c.Split([]byte(fmt.Sprintf("t%04d", rng.Intn(10000))))
			}
		}
		st, err := c.Txn(ctx, func(txn *transaction.KVTxn) error {
			for j := 0; j < 1+rng.Intn(4); j++ {
				k := []byte(fmt.Sprintf("t%04d", rng.Intn(10000)))
				if err := txn.Set(k, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, 20+rng.Intn(200))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil && st != 0 {
			c.ResolveTxn(context.Background(), st)
		}
		if err == nil {
			txns.Add(1)
		}
		next = next.Add(every)
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
	}
}

func printProgress(ctx context.Context, out io.Writer, m *meta.Client, txns int64, startTS uint64, c *simcluster.Cluster) {
	g, ok, _ := m.GlobalCheckpoint(ctx, "playground")
	lag := "-"
	if ok && g > startTS {
		lag = br.Gap(time.Now(), g).String()
	}
	flushed := 0
	if st, err := m.GetTask(ctx, "playground"); err == nil {
		if scs, err := m.SpanCheckpoints(ctx, "playground", st.Incarnation); err == nil {
			flushed = len(scs)
		}
	}
	fmt.Fprintf(out, "\rtxns committed: %d  regions: %d  stores flushed: %d  checkpoint lag: %s        ", txns, len(c.Regions()), flushed, lag)
}

// verify decodes the storage and checks it holds every version the cluster
// committed between the task start and the global checkpoint.
func verify(ctx context.Context, out io.Writer, url string, c *simcluster.Cluster, startTS, global uint64) error {
	st, err := storage.OpenURL(ctx, url)
	if err != nil {
		return err
	}
	defer st.Close()
	rep, err := br.Verify(ctx, st, true)
	if err != nil {
		return err
	}
	have := map[string][]byte{}
	for _, d := range rep.Decoded() {
		have[fmt.Sprintf("%x@%d", d.Key, d.CommitTS)] = d.Value
	}
	want := c.Committed(startTS, global)
	missing := 0
	for _, v := range want {
		got, ok := have[fmt.Sprintf("%x@%d", v.Key, v.CommitTS)]
		if !ok || (!v.Delete && !bytes.Equal(got, v.Value)) {
			missing++
		}
	}
	fmt.Fprintf(out, "verify: %d meta files, %d data files (checksums match), %d changes over %d keys in %s\n",
		rep.MetaFiles, rep.DataFiles, rep.Changes, rep.Keys, rep.Storage)
	if missing > 0 || len(rep.Problems) > 0 {
		return errors.New(fmt.Sprintf("verify FAILED: %d of %d committed versions up to the checkpoint are missing or differ; problems: %v", missing, len(want), rep.Problems))
	}
	fmt.Fprintf(out, "verify: OK — all %d versions committed up to the global checkpoint are in storage\n", len(want))
	return nil
}
