// Package matcher turns one region's CDC rows into complete committed
// changes. TiKV sends a PREWRITE (with the value) and later a COMMIT (keys and
// timestamps only); the matcher joins them on (start_ts, key). During the
// initial scan TiKV interleaves scan rows with live rows, so commits and
// rollbacks that arrive before INITIALIZED without their prewrite are held
// until the scan ends.
//
// A Matcher belongs to one region subscription and is used by one goroutine.
//
// The rows given to Rows may refer to the memory of the message they were
// decoded from (the agent decodes in place). The matcher keeps some past
// the call — prewrites until their commit, commits and rollbacks until the
// scan ends — so the caller calls Own once it is done with a message, and
// the matcher copies out what it still holds, rather than pinning a whole
// message for one long transaction's prewrite.
package matcher

import (
	"errors"
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"
)

// ErrPrewriteNotMatch means a COMMIT arrived after the initial scan with no
// prewrite for it: the subscription lost data and must be rebuilt from its
// checkpoint.
var ErrPrewriteNotMatch = errors.New("commit without a matching prewrite")

// ErrResolvedTsViolated means TiKV sent a commit at or below a resolved ts it
// had already promised: the stream is not trustworthy and must be rebuilt.
var ErrResolvedTsViolated = errors.New("commit at or below the resolved ts")

type txnKey struct {
	startTS uint64
	key     string
}

// Matcher joins prewrites and commits for one region subscription.
type Matcher struct {
	checkpoint  uint64 // the subscription's checkpoint_ts: commits at or below it are already stored
	initialized bool
	resolvedTS  uint64
	prewrites   map[txnKey]*cdcpb.Event_Row
	heldCommits []*cdcpb.Event_Row
	heldRollbck []*cdcpb.Event_Row
	// borrowed are the prewrites stored since the last Own, which may still
	// refer to a message's memory.
	borrowed []txnKey
}

// New returns a matcher for a subscription registered at checkpoint.
func New(checkpoint uint64) *Matcher {
	return &Matcher{checkpoint: checkpoint, resolvedTS: checkpoint, prewrites: map[txnKey]*cdcpb.Event_Row{}}
}

// Initialized reports whether the initial scan has finished.
func (m *Matcher) Initialized() bool { return m.initialized }

// ResolvedTS is the highest resolved ts accepted so far (the checkpoint
// before the first one).
func (m *Matcher) ResolvedTS() uint64 { return m.resolvedTS }

// PendingPrewrites is the number of prewrites waiting for their commit.
func (m *Matcher) PendingPrewrites() int { return len(m.prewrites) }

// MinPendingStartTS is the smallest start_ts of a pending prewrite, or 0.
// The region's data can only be called complete below it.
func (m *Matcher) MinPendingStartTS() uint64 {
	var min uint64
	for k := range m.prewrites {
		if min == 0 || k.startTS < min {
			min = k.startTS
		}
	}
	return min
}

// Rows feeds rows from one Event.Entries and calls emit for every complete
// committed change, in arrival order. Emitted rows have Type COMMITTED and
// carry the value.
func (m *Matcher) Rows(rows []*cdcpb.Event_Row, emit func(*cdcpb.Event_Row)) error {
	for _, r := range rows {
		if err := m.row(r, emit); err != nil {
			return err
		}
	}
	return nil
}

func (m *Matcher) row(r *cdcpb.Event_Row, emit func(*cdcpb.Event_Row)) error {
	switch r.Type {
	case cdcpb.Event_INITIALIZED:
		return m.initialize(emit)
	case cdcpb.Event_COMMITTED:
		return m.emitCommitted(r, emit)
	case cdcpb.Event_PREWRITE:
		k := txnKey{r.StartTs, string(r.Key)}
		// A prewrite with an empty value can follow a transaction heartbeat
		// (min_commit_ts push); it must not replace the real one.
		if old, ok := m.prewrites[k]; ok && len(r.Value) == 0 && len(old.Value) > 0 {
			return nil
		}
		m.prewrites[k] = r
		m.borrowed = append(m.borrowed, k)
		return nil
	case cdcpb.Event_COMMIT:
		k := txnKey{r.StartTs, string(r.Key)}
		pw, ok := m.prewrites[k]
		if !ok {
			if !m.initialized {
				m.heldCommits = append(m.heldCommits, ownRow(r)) // rare: only during the scan
				return nil
			}
			if r.CommitTs <= m.checkpoint {
				return nil // already stored before this subscription began
			}
			return fmt.Errorf("%w: key %q start_ts %d commit_ts %d", ErrPrewriteNotMatch, r.Key, r.StartTs, r.CommitTs)
		}
		delete(m.prewrites, k)
		out := *pw
		out.Type = cdcpb.Event_COMMITTED
		out.CommitTs = r.CommitTs
		return m.emitCommitted(&out, emit)
	case cdcpb.Event_ROLLBACK:
		k := txnKey{r.StartTs, string(r.Key)}
		if _, ok := m.prewrites[k]; !ok && !m.initialized {
			m.heldRollbck = append(m.heldRollbck, ownRow(r))
			return nil
		}
		delete(m.prewrites, k)
		return nil
	default:
		return fmt.Errorf("unknown row type %v for key %q", r.Type, r.Key)
	}
}

func (m *Matcher) emitCommitted(r *cdcpb.Event_Row, emit func(*cdcpb.Event_Row)) error {
	if r.CommitTs <= m.checkpoint {
		return nil // at or below the checkpoint: already in storage
	}
	if m.initialized && r.CommitTs <= m.resolvedTS {
		return fmt.Errorf("%w: key %q commit_ts %d, resolved ts %d", ErrResolvedTsViolated, r.Key, r.CommitTs, m.resolvedTS)
	}
	emit(r)
	return nil
}

func (m *Matcher) initialize(emit func(*cdcpb.Event_Row)) error {
	if m.initialized {
		return nil
	}
	m.initialized = true
	commits, rollbacks := m.heldCommits, m.heldRollbck
	m.heldCommits, m.heldRollbck = nil, nil
	for _, c := range commits {
		k := txnKey{c.StartTs, string(c.Key)}
		if _, ok := m.prewrites[k]; !ok {
			// The scan already sent this write as a COMMITTED row.
			continue
		}
		if err := m.row(c, emit); err != nil {
			return err
		}
	}
	for _, r := range rollbacks {
		delete(m.prewrites, txnKey{r.StartTs, string(r.Key)})
	}
	return nil
}

// Resolve accepts a resolved ts for the region. It is ignored before the
// initial scan finishes and never moves backwards. It reports whether the
// resolved ts advanced.
func (m *Matcher) Resolve(ts uint64) bool {
	if !m.initialized || ts <= m.resolvedTS {
		return false
	}
	m.resolvedTS = ts
	return true
}

// Own copies the prewrites stored since the last call and still waiting
// for their commit into memory of their own, so that the message they were
// decoded from can be collected. A prewrite matched within its message is
// never copied.
func (m *Matcher) Own() {
	for _, k := range m.borrowed {
		if r, ok := m.prewrites[k]; ok {
			m.prewrites[k] = ownRow(r)
		}
	}
	clear(m.borrowed)
	m.borrowed = m.borrowed[:0]
}

// ownRow returns a copy of r whose key, value and old value are its own
// (one allocation for the three).
func ownRow(r *cdcpb.Event_Row) *cdcpb.Event_Row {
	out := *r
	buf := make([]byte, 0, len(r.Key)+len(r.Value)+len(r.OldValue))
	take := func(p []byte) []byte {
		if p == nil {
			return nil
		}
		at := len(buf)
		buf = append(buf, p...)
		return buf[at:len(buf):len(buf)]
	}
	out.Key, out.Value, out.OldValue = take(r.Key), take(r.Value), take(r.OldValue)
	return &out
}
