package br

import (
	"os"
	"time"

	"logbackup/meta"
)

// Env is what the commands need from the outside world. Tests build one
// around an embedded etcd and a fixed clock.
type Env struct {
	Meta     *meta.Client
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
