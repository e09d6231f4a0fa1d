// Command profsummary says where a benchmark's CPU went, by who did the
// work (the agent's stages, the simulated cluster, etcd, the loopback S3
// server, the Go runtime) and, inside the agent, by what (compression,
// hashing, protobuf, allocation, copying, system calls). It reads the
// stacks of a CPU profile through `go tool pprof -traces`, so it needs
// nothing beyond the Go toolchain:
//
//	go test -run '^$' -bench 'AgentThroughput/value=1024/regions=16/local' -benchtime 300000x -cpuprofile cpu.out ./tests/e2e/
//	go run ./tests/profsummary cpu.out
//
// Each sample counts once, for the first role found walking its stack from
// the goroutine's entry (the outermost frame) inwards; the benchmark's own
// set-up is in the profile too, and small next to a run of many rows.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// roles are matched from the outermost frame inwards; the first frame
// that matches any role decides.
var roles = []struct{ name, frame string }{
	{"Go GC (background mark, sweep, scavenge)", "runtime.gcBgMarkWorker"},
	{"Go GC (background mark, sweep, scavenge)", "runtime.bgsweep"},
	{"Go GC (background mark, sweep, scavenge)", "runtime.bgscavenge"},
	{"simulator: bulk writer", "logbackup/tests/simcluster.(*BulkWriter)"},
	{"simulator: stores (routing, resolved ts, CDC send)", "logbackup/tests/simcluster."},
	{"loopback S3 server", "logbackup/tests/s3test."},
	{"etcd server (PD's etcd)", "go.etcd.io/etcd/server/"},
	{"agent", "logbackup/streamagent."},
	{"agent", "logbackup/streamagent/"},
	{"agent", "logbackup/storage."},
	{"agent", "gocloud.dev/"},
	{"agent", "logbackup/storage/internal/"},
	{"gRPC transport, client side (agent, etcd and PD clients)", "google.golang.org/grpc/internal/transport.(*http2Client)"},
	{"gRPC transport, server side (stores, PD, etcd)", "google.golang.org/grpc/internal/transport.(*http2Server)"},
	{"gRPC transport, writers (both sides)", "google.golang.org/grpc/internal/transport.(*loopyWriter)"},
	{"gRPC transport, writers (both sides)", "google.golang.org/grpc/internal/transport.newHTTP2"},
	{"etcd and PD clients", "go.etcd.io/etcd/client/"},
	{"etcd and PD clients", "github.com/tikv/pd/client"},
}

// stages refine "agent" by the first of them found anywhere in the stack.
var stages = []struct{ name, frame string }{
	{"agent: receive (EventFeed stream, decode)", "logbackup/streamagent/task.(*Runner).ensureStream.func"},
	{"agent: receive (EventFeed stream, decode)", "logbackup/streamagent/feedcodec."},
	{"agent: flush (build files, compress, upload, checkpoints)", "logbackup/streamagent/task.(*flusher)"},
	{"agent: flush (build files, compress, upload, checkpoints)", "logbackup/streamagent/logfile.(*Builder).compressAll"},
	{"agent: flush (build files, compress, upload, checkpoints)", "logbackup/storage."},
	{"agent: flush (build files, compress, upload, checkpoints)", "gocloud.dev/"},
	{"agent: flush (build files, compress, upload, checkpoints)", "logbackup/storage/internal/"},
	{"agent: task loop (placement, match, buffer, spill, freeze)", "logbackup/streamagent/task.(*Runner)"},
}

// works are what an agent sample is doing, matched from the innermost
// frame outwards.
var works = []struct{ name, frame string }{
	{"zstd", "github.com/klauspost/compress/zstd"},
	{"sha256", "crypto/sha256"},
	{"sha256", "crypto/internal/fips140/sha256"}, // Go 1.24+: the digest's own frames
	{"crc64 / crc32", "hash/crc"},
	{"crc64 / crc32", "logbackup/streamagent/logfile.crc"}, // the builder's own CRC-64 loop
	{"protobuf decode/encode", "/proto"},
	{"protobuf decode/encode", "kvproto/pkg/"},
	{"allocation", "runtime.mallocgc"},
	{"GC assist", "runtime.gcAssist"},
	{"copying (memmove)", "runtime.memmove"},
	{"system calls (files, network)", "syscall."},
	{"system calls (files, network)", "internal/runtime/syscall"},
	// sync.(*WaitGroup).Go starts the compressing goroutines: a frame that
	// says nothing about the work (it took in sha256 and the CRC before).
	{"locks and scheduling", "sync.(*Mutex)"},
	{"locks and scheduling", "sync.(*RWMutex)"},
	{"locks and scheduling", "sync.(*Cond)"},
	{"locks and scheduling", "sync.(*Pool)"},
	{"locks and scheduling", "sync.runtime_"},
	{"locks and scheduling", "runtime.chan"},
	{"locks and scheduling", "runtime.select"},
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: profsummary CPU_PROFILE")
		os.Exit(2)
	}
	out, err := exec.Command("go", "tool", "pprof", "-traces", os.Args[1]).Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "profsummary: go tool pprof -traces %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	byRole, byWork, total, agent := summarize(parse(out))
	if total == 0 {
		fmt.Fprintln(os.Stderr, "profsummary: no samples")
		os.Exit(1)
	}
	fmt.Printf("| who | CPU s | share |\n|---|---|---|\n")
	table(byRole, total)
	fmt.Printf("\nInside the agent (%.1f s, %.0f%% of all):\n\n| doing | CPU s | share of the agent |\n|---|---|---|\n", agent.Seconds(), 100*agent.Seconds()/total.Seconds())
	if agent > 0 {
		table(byWork, agent)
	}
}

// summarize adds up the samples by role and, for the agent's, by work.
func summarize(traces []trace) (byRole, byWork map[string]time.Duration, total, agent time.Duration) {
	byRole, byWork = map[string]time.Duration{}, map[string]time.Duration{}
	for _, tr := range traces {
		total += tr.d
		role := "other (runtime, timers, the benchmark itself)"
	find:
		for i := len(tr.frames) - 1; i >= 0; i-- {
			for _, r := range roles {
				if strings.HasPrefix(tr.frames[i], r.frame) {
					role = r.name
					break find
				}
			}
		}
		if role == "agent" {
			role = "agent: other (coordinator, prober, status, metrics)"
		stage:
			for _, st := range stages {
				for _, f := range tr.frames {
					if strings.HasPrefix(f, st.frame) {
						role = st.name
						break stage
					}
				}
			}
		}
		byRole[role] += tr.d
		if !strings.HasPrefix(role, "agent") {
			continue
		}
		agent += tr.d
		w := "the agent's own code and the rest"
	work:
		for _, f := range tr.frames {
			for _, k := range works {
				if strings.Contains(f, k.frame) {
					w = k.name
					break work
				}
			}
		}
		byWork[w] += tr.d
	}
	return byRole, byWork, total, agent
}

func table(m map[string]time.Duration, of time.Duration) {
	type row struct {
		k string
		d time.Duration
	}
	var rows []row
	for k, d := range m {
		rows = append(rows, row{k, d})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].d > rows[j].d })
	for _, r := range rows {
		fmt.Printf("| %s | %.1f | %.0f%% |\n", r.k, r.d.Seconds(), 100*r.d.Seconds()/of.Seconds())
	}
}

type trace struct {
	d      time.Duration
	frames []string // innermost first
}

// parse reads pprof's -traces text: blocks separated by dashed lines, the
// first line of each "<duration>   <innermost frame>", then one frame a line.
func parse(out []byte) []trace {
	var traces []trace
	var cur *trace
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----------+") {
			cur = nil
			continue
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if cur == nil {
			d, err := parseDuration(fields[0])
			if err != nil || len(fields) < 2 {
				continue // the header
			}
			traces = append(traces, trace{d: d})
			cur = &traces[len(traces)-1]
			fields = fields[1:]
		}
		cur.frames = append(cur.frames, fields[0])
	}
	return traces
}

// parseDuration reads pprof's sample values ("10ms", "1.20s", "500us").
func parseDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	v, err := strconv.ParseFloat(strings.TrimRight(s, "a-z"), 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(v * float64(time.Second)), nil
}
