// Package cli wires the br commands to cobra. Each command is a thin shell
// over a function in package br; Main maps errors to an exit code and a hint
// in one place.
package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	pd "github.com/tikv/pd/client"

	"logbackup/br"
	"logbackup/meta"
	"logbackup/storage"
)

// globalFlags are BR's root flags that the stream commands use.
type globalFlags struct {
	pd          []string
	ca          string
	cert        string
	key         string
	dialTimeout time.Duration
}

// Main runs the br command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	// Errors can carry text from storage SDKs; strip credentials before
	// anything reaches the terminal.
	fmt.Fprintf(stderr, "Error: %s\n", storage.Redact(err.Error()))
	if hint := br.HintOf(err); hint != "" {
		fmt.Fprintf(stderr, "Hint: %s\n", hint)
	}
	return 1
}

// NewRootCommand builds `br` with the `stream` group (alias `log`).
func NewRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "br",
		Short:         "logbackup: log backup (PITR) tasks for TiKV clusters, BR-compatible",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringSliceVarP(&g.pd, "pd", "u", []string{"127.0.0.1:2379"}, "PD / etcd endpoints, comma-separated")
	pf.StringVar(&g.ca, "ca", "", "CA certificate path for TLS connections (TLS is on when set)")
	pf.StringVar(&g.cert, "cert", "", "certificate path for TLS connections")
	pf.StringVar(&g.key, "key", "", "private key path for TLS connections")
	pf.DurationVar(&g.dialTimeout, "dial-timeout", 5*time.Second, "how long to wait for etcd before giving up")

	stream := &cobra.Command{
		Use:     "stream",
		Aliases: []string{"log"},
		Short:   "manage the log backup task (also spelled `br log`)",
		Args:    cobra.NoArgs,
	}
	stream.AddCommand(startCommand(g), statusCommand(g), pauseCommand(g), resumeCommand(g), stopCommand(g), verifyCommand(), historyCommand(g))
	root.AddCommand(stream)
	return root
}

// withEnv dials etcd, runs fn and closes the connection.
func withEnv(cmd *cobra.Command, g *globalFlags, fn func(ctx context.Context, env *br.Env) error) error {
	ctx := cmd.Context()
	if len(g.pd) == 0 {
		return &br.Error{Msg: "no etcd endpoint", Hint: "pass -u/--pd host:port"}
	}
	if g.dialTimeout <= 0 {
		return &br.Error{Msg: fmt.Sprintf("invalid --dial-timeout %s", g.dialTimeout), Hint: "use a positive duration such as 5s"}
	}
	cli, err := meta.Dial(ctx, meta.DialConfig{
		Endpoints: g.pd, CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.dialTimeout,
	})
	if err != nil {
		return &br.Error{Msg: "cannot connect to etcd", Err: err,
			Hint: fmt.Sprintf("check that PD/etcd is reachable at %s (-u/--pd) and the TLS flags", strings.Join(g.pd, ","))}
	}
	defer cli.Close()
	env := br.NewEnv(meta.NewClient(cli))
	// PD answers on the same address as its etcd; dialled only by the
	// commands that need it (TSO, GC safepoints, stores).
	env.OpenPD = func(ctx context.Context) (pd.Client, error) {
		return meta.DialPD(ctx, meta.DialConfig{Endpoints: g.pd, CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.dialTimeout})
	}
	defer func() {
		if env.PD != nil {
			env.PD.Close()
		}
	}()
	return fn(ctx, env)
}

func requireTaskName(name string) error {
	if name == "" {
		return &br.Error{Msg: "missing parameter --task-name", Hint: "pass --task-name <name>"}
	}
	return nil
}

func startCommand(g *globalFlags) *cobra.Command {
	var o br.StartOptions
	cmd := &cobra.Command{
		Use:   "start",
		Short: "start a log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(o.TaskName); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Start(ctx, env, o, cmd.OutOrStdout())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.TaskName, "task-name", "", "the task name: letters, digits and underscores")
	f.StringVar(&o.StartTS, "start-ts", "", "start timestamp (TSO or datetime such as \"2006-01-02 15:04:05+0800\"); default now")
	f.StringVar(&o.EndTS, "end-ts", "", "end timestamp (TSO or datetime); default 999999999999999999")
	f.StringVarP(&o.Storage, "storage", "s", "", "storage URL: s3://, gcs://, azblob://, file:// or local://")
	f.StringSliceVarP(&o.Filters, "filter", "f", nil, "table filter; only '*.*' (every table) is supported")
	f.DurationVar(&o.GCTTL, "gc-ttl", br.DefaultStartGCTTL, "how long PD keeps the changes since --start-ts for the agents' first scans")
	return cmd
}

func statusCommand(g *globalFlags) *cobra.Command {
	var o br.StatusOptions
	cmd := &cobra.Command{
		Use:   "status",
		Short: "show the status of log backup tasks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Status(ctx, env, o, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&o.TaskName, "task-name", "*", "the task to show; '*' for all")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print one JSON array (BR's --json fields)")
	return cmd
}

func pauseCommand(g *globalFlags) *cobra.Command {
	var name, message string
	var gcTTL time.Duration
	cmd := &cobra.Command{
		Use:   "pause",
		Short: "pause a log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Pause(ctx, env, name, message, gcTTL, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task to pause")
	cmd.Flags().StringVar(&message, "message", "", "why the task is paused (shown by status)")
	cmd.Flags().DurationVar(&gcTTL, "gc-ttl", br.DefaultPauseGCTTL, "how long PD keeps the changes since the checkpoint while the task is paused")
	return cmd
}

func resumeCommand(g *globalFlags) *cobra.Command {
	var name string
	var clearError bool
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "resume a paused log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Resume(ctx, env, name, clearError, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task to resume")
	cmd.Flags().BoolVar(&clearError, "clear-error", false, "clear the stores' last errors; needed for a task paused by an error")
	return cmd
}

func stopCommand(g *globalFlags) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "stop a log backup task and delete its metadata",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.Stop(ctx, env, name, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task to stop")
	return cmd
}

func verifyCommand() *cobra.Command {
	var o br.VerifyOptions
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "read a log backup storage back: meta files, data files, checksums, decoded changes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Storage only: no etcd needed.
			return br.RunVerify(cmd.Context(), br.NewEnv(nil), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&o.Storage, "storage", "s", "", "storage URL the task writes to")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print the report as JSON")
	return cmd
}

func historyCommand(g *globalFlags) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history",
		Short: "show a task's recovery history: errors, pauses, resumes, automatic resumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return br.History(ctx, env, name, asJSON, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
