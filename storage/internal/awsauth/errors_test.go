package awsauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestSafeMessage(t *testing.T) {
	// A secret straddling the cut must not leave its first half behind.
	long := strings.Repeat("x", maxMessage-10) + srcSecret + strings.Repeat("y", 100)
	got := safeMessage(long, srcSecret)
	if strings.Contains(got, srcSecret[:10]) || len(got) > maxMessage+len("…") || !strings.HasSuffix(got, "…") {
		t.Errorf("safeMessage(long) = %q", got)
	}
	if got := safeMessage("  a\nb\r\tc  "); got != "a b  c" {
		t.Errorf("safeMessage = %q", got)
	}
	// Cut on a character boundary.
	if got := safeMessage(strings.Repeat("é", maxMessage)); !strings.HasSuffix(got, "é…") {
		t.Errorf("cut inside a character: %q", got[len(got)-8:])
	}
}

func TestErrorText(t *testing.T) {
	inner := &Error{Op: "EC2 instance metadata GET /x", Err: context.DeadlineExceeded}
	outer := &Error{Op: "STS AssumeRole for arn:r", Status: 403, Code: "AccessDenied", Message: "no\nway", Err: fmt.Errorf("wrapped: %w", inner)}
	want := "aws credentials: STS AssumeRole for arn:r: 403 AccessDenied: no way: wrapped: aws credentials: EC2 instance metadata GET /x: context deadline exceeded"
	if got := outer.Error(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	nested := &Error{Op: "a", Err: inner}
	if got := nested.Error(); got != "aws credentials: a: EC2 instance metadata GET /x: context deadline exceeded" {
		t.Errorf("nested: %s", got)
	}
	if !errors.Is(outer, context.DeadlineExceeded) {
		t.Error("errors.Is does not reach the cause")
	}
	if got := (&Error{Op: "x", Code: "C"}).Error(); got != "aws credentials: x: C" {
		t.Errorf("code only: %s", got)
	}
}
