package cli

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"logbackup/br/playground"
)

// playgroundCommand runs the whole system locally: embedded etcd, the
// simulated cluster, one agent per store, a workload, a task, and a final
// verification of the storage.
func playgroundCommand() *cobra.Command {
	var o playground.Options
	cmd := &cobra.Command{
		Use:   "playground",
		Short: "run etcd, a simulated TiKV cluster, one agent per store and a workload locally, then verify the backup",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return playground.Run(ctx, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "directory for etcd data and the default storage (default: a new temp dir)")
	f.StringVar(&o.EtcdAddr, "etcd-addr", "127.0.0.1:2379", "loopback address for the embedded etcd (a free port if taken)")
	f.StringVar(&o.Storage, "storage", "", "backup storage URL (default local://<dir>/backup)")
	f.DurationVar(&o.Duration, "duration", 20e9, "how long the workload runs (0 = until Ctrl-C)")
	f.IntVar(&o.Stores, "stores", 3, "simulated TiKV stores")
	f.IntVar(&o.Regions, "regions", 8, "initial regions")
	f.IntVar(&o.Rate, "rate", 100, "transactions per second")
	f.DurationVar(&o.FlushInterval, "flush-interval", 3e9, "agents' flush interval")
	return cmd
}
