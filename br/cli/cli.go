// Package cli wires the br commands to cobra. Each command is a thin shell
// over a function in package br; Main maps errors to an exit code and a hint
// in one place.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
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
	return Run(ctx, args, os.Stdin, stdout, stderr)
}

// Run is Main with the input that answers prompts (truncate's
// confirmation) given explicitly.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := NewRootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	// Errors can carry text from storage SDKs; strip credentials before
	// anything reaches the terminal.
	fmt.Fprintf(stderr, "Error: %s\n", storage.Redact(err.Error()))
	hint := br.HintOf(err)
	if hint == "" && cmd != nil {
		// cobra's own errors (unknown command or flag, bad flag value).
		hint = fmt.Sprintf("run `%s --help` for its commands and flags", cmd.CommandPath())
	}
	if hint != "" {
		fmt.Fprintf(stderr, "Hint: %s\n", hint)
	}
	return 1
}

// missingSubcommand makes a command group fail when called alone: cobra
// would print its help and exit 0, which a script takes for success.
func missingSubcommand(what string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		var names []string
		for _, c := range cmd.Commands() {
			if c.IsAvailableCommand() {
				names = append(names, c.Name())
			}
		}
		return &br.Error{Msg: "missing " + what + " for `" + cmd.CommandPath() + "`",
			Hint: fmt.Sprintf("use one of: %s (see `%s --help`)", strings.Join(names, ", "), cmd.CommandPath())}
	}
}

// NewRootCommand builds `br` with the `stream` group (alias `log`) and
// `playground`.
func NewRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "br",
		Short:         "logbackup: log backup (PITR) tasks for TiKV clusters, BR-compatible",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          missingSubcommand("command"),
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
		RunE:    missingSubcommand("subcommand"),
	}
	stream.AddCommand(startCommand(g), statusCommand(g), pauseCommand(g), resumeCommand(g), stopCommand(g),
		truncateCommand(g), metadataCommand(), verifyCommand(), historyCommand(g))
	root.AddCommand(stream, playgroundCommand())
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
	if err := (meta.TLSFiles{CA: g.ca, Cert: g.cert, Key: g.key}).Validate(); err != nil {
		return &br.Error{Msg: "invalid TLS flags", Err: err,
			Hint: "TLS is on with --ca; pass --ca with --cert/--key, and readable PEM files"}
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
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "start",
		Short: "start a log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(o.TaskName); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return wf.run(ctx, env, o.TaskName, cmd.OutOrStdout(), func() error {
					return br.Start(ctx, env, o, cmd.OutOrStdout())
				})
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
	wf.add(cmd)
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
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "resume a paused log backup task",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireTaskName(name); err != nil {
				return err
			}
			return withEnv(cmd, g, func(ctx context.Context, env *br.Env) error {
				return wf.run(ctx, env, name, cmd.OutOrStdout(), func() error {
					return br.Resume(ctx, env, name, clearError, cmd.OutOrStdout())
				})
			})
		},
	}
	cmd.Flags().StringVar(&name, "task-name", "", "the task to resume")
	cmd.Flags().BoolVar(&clearError, "clear-error", false, "clear the stores' last errors; needed for a task paused by an error")
	wf.add(cmd)
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

func truncateCommand(g *globalFlags) *cobra.Command {
	var o br.TruncateOptions
	cmd := &cobra.Command{
		Use:   "truncate",
		Short: "remove the log backup data no restore to --until or later needs",
		Long: "Removes the data files whose every entry is older than --until (kept longer where a later commit's\n" +
			"value is older, as BR does), deletes the meta files that list only them and rewrites the others.\n" +
			"Storage only; with -u/--pd given, etcd's checkpoint of a task writing to the storage is checked too.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.In = cmd.InOrStdin()
			env := br.NewEnv(nil)
			// etcd is asked only when named, and only if it answers: the
			// storage's own checkpoint is always checked.
			if o.Storage != "" && o.Until != "" && cmd.Flags().Changed("pd") {
				cli, err := meta.Dial(cmd.Context(), meta.DialConfig{
					Endpoints: g.pd, CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.dialTimeout,
				})
				if err != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "Note: etcd at %s is not reachable; checking --until against the storage's checkpoint only.\n",
						strings.Join(g.pd, ","))
				} else {
					defer cli.Close()
					env = br.NewEnv(meta.NewClient(cli))
				}
			}
			_, err := br.RunTruncate(cmd.Context(), env, o, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Until, "until", "", "remove what only restores before this TSO or datetime (\"2006-01-02 15:04:05+0800\") need")
	f.BoolVar(&o.DryRun, "dry-run", false, "print what would be removed and change nothing")
	f.BoolVarP(&o.Yes, "yes", "y", false, "do not ask for confirmation")
	f.StringVarP(&o.Storage, "storage", "s", "", "storage URL of the log backup")
	return cmd
}

func metadataCommand() *cobra.Command {
	var o br.MetadataOptions
	cmd := &cobra.Command{
		Use:   "metadata",
		Short: "print the storage's log min and max ts (what a restore can reach); storage only",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return br.RunMetadata(cmd.Context(), br.NewEnv(nil), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&o.Storage, "storage", "s", "", "storage URL of the log backup")
	return cmd
}

// waitFlags are `--wait [--timeout D]` of start and resume.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

func (wf *waitFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&wf.wait, "wait", false, "return once every store leading the task's regions has an agent that observes them and has flushed past this moment")
	cmd.Flags().DurationVar(&wf.timeout, "timeout", br.DefaultWaitTimeout, "how long --wait waits; past it the command fails naming each store that did not catch up")
}

// run runs the command and, with --wait, waits past the moment it began.
func (wf *waitFlags) run(ctx context.Context, env *br.Env, task string, w io.Writer, fn func() error) error {
	if !wf.wait {
		return fn()
	}
	since, err := br.TSO(ctx, env)
	if err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err
	}
	return br.Wait(ctx, env, task, since, wf.timeout, w)
}
