// Command br manages logbackup's log backup tasks with BR's `br stream` /
// `br log` commands. The local playground is its own command,
// cmd/playground.
package main

import (
	"context"
	"os"

	"logbackup/br/cli"
)

func main() {
	os.Exit(cli.MainProcess(context.Background(), os.Args[1:]))
}
