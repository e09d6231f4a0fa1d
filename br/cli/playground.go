package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"logbackup/meta/embedetcd"
)

// playgroundCommand starts a local stand-in for PD's etcd so the stream
// commands can be tried without a cluster.
func playgroundCommand() *cobra.Command {
	var (
		dir      string
		addr     string
		duration time.Duration
	)
	cmd := &cobra.Command{
		Use:   "playground",
		Short: "run an embedded etcd on loopback to try the stream commands against",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if dir == "" {
				d, err := os.MkdirTemp("", "logbackup-playground-")
				if err != nil {
					return fmt.Errorf("create playground dir: %w", err)
				}
				dir = d
			}
			startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			srv, err := embedetcd.Start(startCtx, embedetcd.Config{
				Dir:       filepath.Join(dir, "etcd"),
				ClientURL: "http://" + addr,
				Fast:      true,
			})
			if err != nil {
				return fmt.Errorf("start embedded etcd on %s: %w", addr, err)
			}
			defer srv.Close()
			out := cmd.OutOrStdout()
			ep := srv.Endpoint()
			fmt.Fprintf(out, "Embedded etcd is serving on %s (data in %s).\n\n", ep, dir)
			fmt.Fprintf(out, "Try, from another terminal:\n")
			fmt.Fprintf(out, "  go run ./cmd/br stream start  -u %s --task-name pitr --storage local://%s\n", ep, filepath.Join(dir, "backup"))
			fmt.Fprintf(out, "  go run ./cmd/br stream status -u %s\n", ep)
			fmt.Fprintf(out, "  go run ./cmd/br stream pause  -u %s --task-name pitr --message maintenance\n", ep)
			fmt.Fprintf(out, "  go run ./cmd/br stream resume -u %s --task-name pitr\n", ep)
			fmt.Fprintf(out, "  go run ./cmd/br stream stop   -u %s --task-name pitr\n", ep)
			if duration > 0 {
				fmt.Fprintf(out, "\nStopping after %s (Ctrl-C to stop sooner).\n", duration)
				select {
				case <-ctx.Done():
				case <-time.After(duration):
				}
			} else {
				fmt.Fprintf(out, "\nPress Ctrl-C to stop.\n")
				<-ctx.Done()
			}
			fmt.Fprintf(out, "Playground stopped.\n")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for etcd data and the backup storage (default: a new temp dir)")
	cmd.Flags().StringVar(&addr, "etcd-addr", "127.0.0.1:2379", "loopback address for the embedded etcd")
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop after this long (0 = until interrupted)")
	return cmd
}
