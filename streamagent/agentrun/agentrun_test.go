package agentrun

import (
	"context"
	"io"
	"reflect"
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

// The process's soft memory limit follows the quota unless told
// otherwise, and an operator's GOMEMLIMIT wins.
func TestMemoryLimit(t *testing.T) {
	q := options{memoryQuota: 64 << 20}
	cases := []struct {
		limit  int64
		envSet bool
		want   int64
	}{
		{-1, false, 128 << 20},
		{0, false, 0},
		{1 << 30, false, 1 << 30},
		{-1, true, 0},
		{1 << 30, true, 0},
	}
	for _, c := range cases {
		o := q
		o.memoryLimit = c.limit
		if got := memoryLimit(o, c.envSet); got != c.want {
			t.Errorf("memoryLimit(limit %d, GOMEMLIMIT set %v) = %d, want %d", c.limit, c.envSet, got, c.want)
		}
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
