package awsauth

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Error is a failure to find or fetch credentials. Its text is one line,
// starts with "aws credentials: ", says what failed, and never holds a
// secret: a service's message goes in only after the secrets the request
// carried were cut out of it, and shortened; a body that is not the
// service's error document does not go in at all.
type Error struct {
	Op      string // what failed: "STS AssumeRole for arn:aws:iam::1:role/x"
	Status  int    // the HTTP status, when a service answered
	Code    string // the service's error code, when it gave one
	Message string // the service's message, made safe
	Err     error  // the cause, for errors.Is/As
}

func (e *Error) Error() string { return "aws credentials: " + e.text() }

func (e *Error) Unwrap() error { return e.Err }

// text is the message without the prefix, so that an Error caused by
// another reads as one sentence.
func (e *Error) text() string {
	var b strings.Builder
	b.WriteString(e.Op)
	switch {
	case e.Status != 0 && e.Code != "":
		fmt.Fprintf(&b, ": %d %s", e.Status, e.Code)
	case e.Status != 0:
		fmt.Fprintf(&b, ": %d", e.Status)
	case e.Code != "":
		b.WriteString(": " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Err != nil {
		b.WriteString(": ")
		if inner, ok := e.Err.(*Error); ok {
			b.WriteString(inner.text())
		} else {
			b.WriteString(e.Err.Error())
		}
	}
	return oneLine(b.String())
}

// maxMessage bounds what of a service's message goes into an error.
const maxMessage = 200

// safeMessage makes a service's message fit for an error: every secret
// the request carried is cut out first (a service may echo what it was
// sent), then it is made one line and shortened.
func safeMessage(msg string, secrets ...string) string {
	for _, s := range secrets {
		// Very short values would cut ordinary words; real secrets are long.
		if len(s) >= 4 {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	msg = strings.TrimSpace(oneLine(msg))
	if len(msg) > maxMessage {
		cut := maxMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return msg
}

// oneLine replaces control characters (newlines above all) with spaces.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isControl(r) {
			return ' '
		}
		return r
	}, s)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
