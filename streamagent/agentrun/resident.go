package agentrun

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"time"
)

// --memory-limit is the process's resident memory, what an operator sees
// and a container's limit counts. The Go runtime's soft limit counts only
// the memory the runtime maps, not the pages of the binary the process has
// touched (~28 MiB of the agent's ~36 MiB idle RSS: its code and tables,
// docs/PERFORMANCE.md). So the runtime's limit is kept at --memory-limit
// less those file pages, measured as the process runs: they grow as code
// paths are first used.

// residentEvery is how often the file pages are measured.
const residentEvery = 100 * time.Millisecond

// minGoLimit is the least the runtime's limit is set to, when the file
// pages alone take (nearly) all of --memory-limit: the process cannot keep
// to such a limit, and a limit near zero would only make the collector
// run without end.
const minGoLimit = 8 << 20

// goLimit is the runtime's soft limit for a resident limit of limit bytes
// with filePages bytes of file-backed pages resident.
func goLimit(limit, filePages int64) int64 {
	return max(limit-filePages, minGoLimit)
}

// filePages is the process's resident file-backed (and shared) memory:
// the third field of /proc/self/statm, in pages.
func filePages() (int64, error) {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	f := bytes.Fields(raw)
	if len(f) < 3 {
		return 0, fmt.Errorf("/proc/self/statm: %q", raw)
	}
	n, err := strconv.ParseInt(string(f[2]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/self/statm: %w", err)
	}
	return n * int64(os.Getpagesize()), nil
}

// keepResident sets the runtime's soft limit from the resident limit now,
// and keeps it set as the file pages change until ctx ends. Where the file
// pages cannot be read (not Linux), the runtime's limit is the resident
// limit itself, as before.
func keepResident(ctx context.Context, limit int64) {
	var last int64
	set := func() bool {
		fp, err := filePages()
		if err != nil {
			debug.SetMemoryLimit(limit)
			return false
		}
		// Setting the limit makes the runtime re-plan its collections:
		// only when the file pages moved.
		if l := goLimit(limit, fp); l != last {
			debug.SetMemoryLimit(l)
			last = l
		}
		return true
	}
	if !set() {
		return
	}
	go func() {
		t := time.NewTicker(residentEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				set()
			}
		}
	}()
}
