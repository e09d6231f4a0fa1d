package retry

import (
	"errors"
	"strings"
	"testing"
	"time"

	"logbackup/streamagent/errs"
)

func TestBudget(t *testing.T) {
	b := Counter{Limit: Budget{Attempts: 3, Duration: time.Minute}}
	t0 := time.Unix(1000, 0)
	retryable := errs.Lookup(errs.CodeStorageUnavailable)
	for i := 0; i < 3; i++ {
		if f := b.Fail(t0.Add(time.Duration(i)*time.Second), retryable, errors.New("503")); f != nil {
			t.Fatalf("failure %d was fatal: %v", i+1, f)
		}
	}
	f := b.Fail(t0.Add(4*time.Second), retryable, errors.New("503"))
	if f == nil || f.Info.Code != errs.CodeStorageUnavailable || f.Info.Class != errs.Fatal || !strings.Contains(f.Error(), "retry budget exhausted (4 failures over 4s") {
		t.Fatalf("past the attempts: %v", f)
	}
	// A success resets; then the duration runs out before the attempts do.
	b.Succeed()
	if f := b.Fail(t0, retryable, errors.New("503")); f != nil {
		t.Fatal("the first failure after a success was fatal")
	}
	if f := b.Fail(t0.Add(2*time.Minute), retryable, errors.New("503")); f == nil || !strings.Contains(f.Error(), "over 2m0s") {
		t.Fatalf("past the duration: %v", f)
	}
	// A fatal class is fatal at once, budget or not.
	b.Succeed()
	if f := b.Fail(t0, errs.Lookup(errs.CodeStorageAccessDenied), errors.New("403")); f == nil || f.Info.Code != errs.CodeStorageAccessDenied {
		t.Fatalf("a fatal class: %v", f)
	}
}
