// Package br implements the logic of the `br stream` (alias `br log`)
// commands: each command is a function that reads and writes the task
// metadata through meta.Client and prints to an io.Writer. The cobra wiring
// lives in br/cli.
package br

import (
	"errors"
	"fmt"
)

// Error is a failure the operator can act on: what went wrong and what to do.
type Error struct {
	Msg  string
	Hint string
	Err  error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Msg + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

func userError(hint string, err error, format string, args ...any) *Error {
	return &Error{Msg: fmt.Sprintf(format, args...), Hint: hint, Err: err}
}

// HintOf returns the operator hint carried by err, if any.
func HintOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Hint
	}
	return ""
}
