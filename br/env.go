package br

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/tikv/client-go/v2/oracle"
	pd "github.com/tikv/pd/client"

	"logbackup/br/tidbschema"
	"logbackup/meta"
)

// Env is what the commands need from the outside world. Tests build one
// around an embedded etcd, the simulated cluster's PD and a fixed clock.
type Env struct {
	Meta *meta.Client
	// PD is PD's API (TSO, GC safepoints, stores). Commands that need it
	// get it through pd(), which dials it with OpenPD the first time.
	PD     pd.Client
	OpenPD func(ctx context.Context) (pd.Client, error)
	// Schema reads TiDB's schema (table filters). Commands that need it get
	// it through schema(), which opens it with OpenSchema the first time.
	Schema     tidbschema.Source
	OpenSchema func(ctx context.Context) (tidbschema.Source, error)
	// Log is the command's own log (--log-file, --log-level); nil discards.
	Log *slog.Logger

	Now      func() time.Time
	Location *time.Location
	// Hostname and PID identify the operator in PauseV2 records.
	Hostname string
	PID      int
}

// NewEnv returns an Env for the current process.
func NewEnv(m *meta.Client) *Env {
	host, err := os.Hostname()
	if err != nil {
		host = "[err: " + err.Error() + "]"
	}
	return &Env{Meta: m, Now: time.Now, Location: time.Local, Hostname: host, PID: os.Getpid()}
}

// WithPD sets PD's client.
func (e *Env) WithPD(c pd.Client) *Env { e.PD = c; return e }

// pd returns PD's client, dialling it on first use.
func (e *Env) pd(ctx context.Context) (pd.Client, error) {
	if e.PD != nil {
		return e.PD, nil
	}
	if e.OpenPD == nil {
		return nil, userError("pass PD's address with -u/--pd", nil, "this command needs PD, and no PD is configured")
	}
	c, err := e.OpenPD(ctx)
	if err != nil {
		return nil, userError("check that PD is reachable at -u/--pd and the TLS flags", err, "cannot connect to PD")
	}
	e.PD = c
	return c, nil
}

// tso takes a timestamp from PD: time comes from the cluster, never from
// the local clock.
func (e *Env) tso(ctx context.Context) (uint64, error) {
	pdc, err := e.pd(ctx)
	if err != nil {
		return 0, err
	}
	rctx, cancel := meta.PDCallContext(ctx, 10*time.Second)
	defer cancel()
	phys, logical, err := pdc.GetTS(rctx)
	if err != nil {
		return 0, userError("check PD's health", err, "cannot get a timestamp from PD")
	}
	return oracle.ComposeTS(phys, logical), nil
}

func (e *Env) now() time.Time {
	if e.Now == nil {
		return time.Now()
	}
	return e.Now()
}

func (e *Env) loc() *time.Location {
	if e.Location == nil {
		return time.Local
	}
	return e.Location
}

// schema returns the schema source, opening it on first use.
func (e *Env) schema(ctx context.Context) (tidbschema.Source, error) {
	if e.Schema != nil {
		return e.Schema, nil
	}
	if e.OpenSchema == nil {
		return nil, userError("pass PD's address with -u/--pd", nil, "resolving a table filter needs TiDB's schema, and no cluster is configured")
	}
	src, err := e.OpenSchema(ctx)
	if err != nil {
		return nil, userError("check that PD and the TiKV stores are reachable, and the TLS flags", err, "cannot read TiDB's schema")
	}
	e.Schema = src
	return src, nil
}

func (e *Env) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}
