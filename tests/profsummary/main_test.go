package main

import (
	"testing"
	"time"
)

// TestSummarize: samples go to the role of their outermost matching frame,
// agent samples to their stage and to what their innermost frames do.
func TestSummarize(t *testing.T) {
	out := []byte(`File: e2e.test
Duration: 1s, Total samples = 100ms (10%)
-----------+-------------------------------------------------------
      30ms   github.com/klauspost/compress/zstd.(*Encoder).Write
             logbackup/streamagent/logfile.(*Builder).Finish
             logbackup/streamagent/task.(*flusher).attempt
             logbackup/streamagent/task.(*Runner).Run.func1
-----------+-------------------------------------------------------
     1.2s   runtime.memmove
             logbackup/tests/simcluster.(*BulkWriter).Write
-----------+-------------------------------------------------------
      20ms   runtime.mallocgc
             logbackup/streamagent/matcher.(*Matcher).Add
             logbackup/streamagent/task.(*Runner).handle
             logbackup/streamagent/task.(*Runner).Run
             logbackup/streamagent.(*Agent).startTask.func1
-----------+-------------------------------------------------------
      10ms   runtime.scanobject
             runtime.gcBgMarkWorker
`)
	byRole, byWork, total, agent := summarize(parse(out))
	ms := time.Millisecond
	if total != 1260*ms || agent != 50*ms {
		t.Fatalf("total %v agent %v; want 1.26s and 50ms", total, agent)
	}
	for k, want := range map[string]time.Duration{
		"agent: flush (build files, compress, upload, checkpoints)":  30 * ms,
		"agent: task loop (placement, match, buffer, spill, freeze)": 20 * ms,
		"simulator: bulk writer":                                     1200 * ms,
		"Go GC (background mark, sweep, scavenge)":                   10 * ms,
	} {
		if byRole[k] != want {
			t.Errorf("%s: %v, want %v (all: %v)", k, byRole[k], want, byRole)
		}
	}
	if byWork["zstd"] != 30*ms || byWork["allocation"] != 20*ms {
		t.Errorf("work: %v", byWork)
	}
}
