// Command playground runs logbackup locally in its deployed shape, in the
// spirit of `tiup playground`: a simulated TiKV cluster (PD and its etcd on
// one address, CDC per store), one stream agent process per store, a
// workload and a log backup task, ending with a verification of the
// backup. With --nemesis it injects faults meanwhile and checks the backup
// against the cluster's ledger all along.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"logbackup/playground"
	"logbackup/streamagent/agentrun"
)

func main() {
	// The playground starts its agents by running this binary again.
	playground.RunAgentIfAsked()
	if err := command().Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s\n", err)
		os.Exit(1)
	}
}

// interrupts turns the first Ctrl-C (or SIGTERM) into a graceful end —
// the workload stops, the backup catches up and is verified, which can
// take minutes — and the second into an exit at once. The agents die with
// the playground (their parent-death signal); the files stay in dir.
func interrupts(ctx context.Context, stop context.CancelFunc, sigs <-chan os.Signal, w io.Writer, dir string) {
	select {
	case <-sigs:
	case <-ctx.Done():
		return
	}
	stop()
	fmt.Fprintln(w, "\nstopping: the workload ends, then the backup catches up and is verified; press Ctrl-C again to exit at once")
	<-sigs
	fmt.Fprintf(w, "\nsecond interrupt: exiting now, without the final verification; the agents exit with the playground; its files stay in %s\n", dir)
	os.Exit(130)
}

func command() *cobra.Command {
	var o playground.Options
	var faults string
	cmd := &cobra.Command{
		Use:           "playground",
		Short:         "run a simulated TiKV cluster, one stream agent process per store, a workload and a log backup task locally, then verify the backup",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := playground.CheckFlags(o); err != nil {
				return err
			}
			switch faults {
			case "all":
			case "none":
				o.Faults = []string{}
			default:
				o.Faults = strings.Split(faults, ",")
			}
			if !o.Nemesis {
				o.FatalSLO = 0
			}
			if o.Dir == "" {
				// Made here, so that a second Ctrl-C can say where it is.
				d, err := os.MkdirTemp("", "logbackup-playground-")
				if err != nil {
					return fmt.Errorf("make a temp dir (or pass --dir): %w", err)
				}
				o.Dir, o.TempDir = d, true
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			go interrupts(ctx, cancel, sigs, cmd.ErrOrStderr(), o.Dir)
			return playground.Run(ctx, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "directory for PD/etcd data, agent logs and the default storage (default: a new temp dir)")
	f.StringVar(&o.Storage, "storage", "", "backup storage URL (default local://<dir>/backup)")
	f.StringVar(&o.PD, "pd", "", "a PD you run (host:port of a fresh pd-server v8.5.x): the simulated stores bootstrap and join it as TiKV stores do (default: the simulator's own PD)")
	f.DurationVar(&o.Duration, "duration", 20*time.Second, "how long the workload runs (0 = until Ctrl-C)")
	f.IntVar(&o.Stores, "stores", playground.DefaultStores, "simulated TiKV stores")
	f.IntVar(&o.Regions, "regions", playground.DefaultRegions, "initial regions")
	f.IntVar(&o.Rate, "rate", playground.DefaultRate, "transactions per second")
	f.DurationVar(&o.FlushInterval, "flush-interval", playground.DefaultFlushInterval, fmt.Sprintf("agents' flush interval (at least %s)", agentrun.MinFlushInterval))
	f.BoolVar(&o.Nemesis, "nemesis", false, "inject faults while the workload runs and check the backup against the cluster's ledger all along")
	f.Int64Var(&o.Seed, "seed", 0, "the nemesis's random seed (default: from the clock; printed)")
	f.StringVar(&faults, "faults", "all", "fault kinds to inject, comma-separated, or all, or none: "+strings.Join(playground.AllFaults(), ","))
	f.DurationVar(&o.FaultGap, "fault-gap", playground.DefaultFaultGap, "mean pause between two faults of one nemesis lane")
	f.DurationVar(&o.FatalSLO, "fatal-slo", time.Second, "with --nemesis: a fatal error must reach its LastError this fast after the agent meets it (0: only report)")
	f.StringVar(&o.Sabotage, "sabotage", "", "break the backup on purpose to see the oracle fail: drop-write or checkpoint-back")
	_ = f.MarkHidden("sabotage")
	return cmd
}
