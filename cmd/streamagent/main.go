// Command streamagent runs the log-backup agent of one TiKV store: it
// observes the regions whose leader is on that store, flushes their changes
// to the task's storage in TiKV's log-backup format and advances the
// task's checkpoints in etcd. The command line lives in package
// streamagent/agentrun, which the playground runs too.
package main

import (
	"os"

	"logbackup/streamagent/agentrun"
)

func main() {
	os.Exit(agentrun.Main(os.Args[1:], os.Stderr))
}
