package agentrun

import (
	"context"
	"io"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"logbackup/streamagent"
)

// Bad flags are refused with a clear error before anything connects; an
// unreachable PD is waited for (it may come up after its agents) and named
// when the agent is stopped meanwhile.
func TestRunRejectsBadInput(t *testing.T) {
	base := options{pd: "127.0.0.1:1", statusAddr: "127.0.0.1:0", flushInterval: time.Minute, reconcileInterval: time.Second, coordinatorInterval: time.Second, fileSizeLimit: 1 << 20, memoryQuota: 64 << 20, dialTimeout: time.Second}
	cases := []struct {
		name string
		mod  func(*options)
		want string
	}{
		{"no store", func(o *options) {}, "--store-id or --store-addr"},
		{"flush too fast", func(o *options) { o.storeID = 1; o.flushInterval = time.Millisecond }, "--flush-interval"},
		{"reconcile too fast", func(o *options) { o.storeID = 1; o.reconcileInterval = time.Millisecond }, "--reconcile-interval"},
		{"tiny files", func(o *options) { o.storeID = 1; o.fileSizeLimit = 10 }, "--file-size-limit"},
		{"tiny memory quota", func(o *options) { o.storeID = 1; o.memoryQuota = 1000 }, "--memory-quota 1000 is below 1 MiB"},
		{"no dial timeout", func(o *options) { o.storeID = 1; o.dialTimeout = 0 }, "--dial-timeout"},
		{"no pd", func(o *options) { o.storeID = 1; o.pd = " , " }, "--pd"},
		{"unreachable pd", func(o *options) { o.storeID = 1 }, "127.0.0.1:1"},
		{"cert without ca", func(o *options) { o.storeID = 1; o.cert, o.key = "/etc/x.pem", "/etc/x-key.pem" }, "--cert and --key are given without --ca"},
		{"unreadable ca", func(o *options) { o.storeID = 1; o.ca = "/nonexistent/ca.pem" }, "--ca /nonexistent/ca.pem: cannot read"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := base
			c.mod(&o)
			began := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := run(ctx, o, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("run: %v, want an error mentioning %q", err, c.want)
			}
			if took := time.Since(began); took > 20*time.Second {
				t.Fatalf("took %s", took)
			}
		})
	}
}

// The process's resident memory limit follows the quota (+ 32 MiB, never
// below 96 MiB) unless told otherwise, and an operator's GOMEMLIMIT wins.
func TestMemoryLimit(t *testing.T) {
	cases := []struct {
		quota  int
		limit  int64
		envSet bool
		want   int64
	}{
		{64 << 20, -1, false, 96 << 20},
		{256 << 20, -1, false, 288 << 20},
		{1 << 20, -1, false, 96 << 20},
		{64 << 20, 0, false, 0},
		{64 << 20, 1 << 30, false, 1 << 30},
		{64 << 20, -1, true, 0},
		{64 << 20, 1 << 30, true, 0},
	}
	for _, c := range cases {
		o := options{memoryQuota: c.quota, memoryLimit: c.limit}
		if got := memoryLimit(o, c.envSet); got != c.want {
			t.Errorf("memoryLimit(quota %d, limit %d, GOMEMLIMIT set %v) = %d, want %d", c.quota, c.limit, c.envSet, got, c.want)
		}
	}
}

// A --memory-limit the agent could not keep to, or that is not a size, is
// refused before anything starts.
func TestMemoryLimitRefused(t *testing.T) {
	for _, v := range []string{"-2", "1000", "67108863"} {
		var out strings.Builder
		if code := Main([]string{"--store-id", "1", "--flush-interval", "1ms", "--memory-limit", v}, &out); code != 2 || !strings.Contains(out.String(), "--memory-limit "+v+" must be -1, 0 or at least 67108864 bytes") {
			t.Errorf("--memory-limit %s: exit %d, %q; want 2 and the limit named", v, code, out.String())
		}
	}
}

// The runtime's soft limit is the resident limit less the file pages the
// process maps: they count in its RSS, but not in what the runtime
// manages.
func TestKeepResident(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const limit = 512 << 20
	keepResident(ctx, limit)
	fp, err := filePages()
	if err != nil {
		t.Skipf("no /proc/self/statm here: %v", err)
	}
	if fp < 1<<20 {
		t.Fatalf("%d bytes of file pages: the test binary's own code is more", fp)
	}
	got := debug.SetMemoryLimit(-1)
	// The file pages may grow between the two reads, by little.
	if got >= limit || got < limit-fp-(4<<20) || got > limit-fp+(4<<20) {
		t.Fatalf("runtime limit %d, want %d less the %d bytes of file pages", got, int64(limit), fp)
	}
	// The floor: file pages larger than the limit leave minGoLimit.
	if g := goLimit(16<<20, 20<<20); g != minGoLimit {
		t.Fatalf("goLimit(16 MiB, 20 MiB of file pages) = %d, want %d", g, minGoLimit)
	}
}

// The flags' defaults are the agent's: the command run with no flags gives
// the agent exactly the settings New would fill in for a Config that sets
// none, so a default changed in one place cannot drift from the other.
func TestFlagDefaultsAreTheAgents(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got := o.settings()
	want := streamagent.Config{}.WithDefaults()
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	compared := map[string]bool{}
	for i := range gv.NumField() {
		name := gv.Type().Field(i).Name
		if gv.Field(i).IsZero() {
			continue // not given by a flag (or a flag whose default is off)
		}
		compared[name] = true
		if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
			t.Errorf("the flag for %s defaults to %v; the agent's default is %v", name, gv.Field(i).Interface(), wv.Field(i).Interface())
		}
	}
	// Every setting with a flag was compared: a flag defaulting to zero
	// would leave its default to the agent but show none in --help.
	for _, name := range []string{"FlushInterval", "FileSizeLimit", "MemoryQuota", "TempDir", "ReconcileInterval", "CoordinatorInterval"} {
		if !compared[name] {
			t.Errorf("the flag for %s has no default", name)
		}
	}
}
