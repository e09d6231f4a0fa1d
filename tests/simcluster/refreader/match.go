package refreader

import (
	"bytes"
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"
)

type txnKey struct {
	startTS uint64
	key     string
}

// sub is one region subscription and its own prewrite/commit matcher: a
// direct reading of TiKV's row contract, checking each promise as it goes.
type sub struct {
	reqID, regionID, store uint64
	stream                 *storeStream
	span                   span // encoded, what was requested
	checkpoint             uint64
	initialized            bool
	resolved               uint64 // starts at the checkpoint
	prewrites              map[txnKey]*cdcpb.Event_Row
	scanned                map[txnKey]bool        // COMMITTED rows of this subscription
	held                   []*cdcpb.Event_Row     // COMMIT/ROLLBACK rows before INITIALIZED without their prewrite
	emit                   func(*cdcpb.Event_Row) // a complete committed change
	problem                func(error)
}

func (s *sub) inSpan(raw []byte) bool {
	ek := encodeKey(raw)
	return bytes.Compare(ek, s.span.start) >= 0 && (len(s.span.end) == 0 || bytes.Compare(ek, s.span.end) < 0)
}

func (s *sub) row(r *cdcpb.Event_Row) {
	if r.Type != cdcpb.Event_INITIALIZED && !s.inSpan(r.Key) {
		s.problem(fmt.Errorf("%v row for key %q outside the requested range", r.Type, r.Key))
		return
	}
	switch r.Type {
	case cdcpb.Event_INITIALIZED:
		if s.initialized {
			s.problem(fmt.Errorf("second INITIALIZED"))
			return
		}
		s.initialized = true
		held := s.held
		s.held = nil
		for _, h := range held {
			k := txnKey{h.StartTs, string(h.Key)}
			if _, ok := s.prewrites[k]; ok {
				s.row(h)
				continue
			}
			// A commit held without its prewrite must have been sent by
			// the scan as COMMITTED; anything else lost the write.
			if h.Type == cdcpb.Event_COMMIT && h.CommitTs > s.checkpoint && !s.scanned[k] {
				s.problem(fmt.Errorf("COMMIT %q@%d (txn %d) matched neither a prewrite nor a scanned row", h.Key, h.CommitTs, h.StartTs))
			}
		}
	case cdcpb.Event_PREWRITE:
		k := txnKey{r.StartTs, string(r.Key)}
		if old, ok := s.prewrites[k]; ok {
			// TiKV resends a lock when it is rewritten (heartbeat,
			// min_commit_ts push); the value, when present, is the same.
			if len(r.Value) > 0 && !bytes.Equal(old.Value, r.Value) || old.OpType != r.OpType {
				s.problem(fmt.Errorf("PREWRITE %q txn %d resent with different contents", r.Key, r.StartTs))
			}
			return
		}
		if r.OpType == cdcpb.Event_Row_PUT && len(r.Value) == 0 {
			s.problem(fmt.Errorf("first PREWRITE %q txn %d is a PUT without a value", r.Key, r.StartTs))
		}
		s.prewrites[k] = r
	case cdcpb.Event_COMMIT:
		k := txnKey{r.StartTs, string(r.Key)}
		pw, ok := s.prewrites[k]
		if !ok {
			switch {
			case !s.initialized:
				s.held = append(s.held, r)
			case r.CommitTs > s.checkpoint:
				s.problem(fmt.Errorf("COMMIT %q@%d (txn %d) after INITIALIZED without a prewrite", r.Key, r.CommitTs, r.StartTs))
			}
			return
		}
		delete(s.prewrites, k)
		if len(r.Value) > 0 && !bytes.Equal(r.Value, pw.Value) {
			s.problem(fmt.Errorf("COMMIT %q@%d carries a value different from its prewrite", r.Key, r.CommitTs))
		}
		if r.OpType != pw.OpType {
			s.problem(fmt.Errorf("COMMIT %q@%d op %v, prewrite op %v", r.Key, r.CommitTs, r.OpType, pw.OpType))
		}
		out := *pw
		out.Type, out.CommitTs = cdcpb.Event_COMMITTED, r.CommitTs
		s.committed(&out)
	case cdcpb.Event_COMMITTED:
		if s.initialized {
			s.problem(fmt.Errorf("COMMITTED %q@%d after INITIALIZED (no 1PC in the simulator)", r.Key, r.CommitTs))
		}
		if r.CommitTs <= s.checkpoint {
			s.problem(fmt.Errorf("scan sent %q@%d, not after the checkpoint %d", r.Key, r.CommitTs, s.checkpoint))
			return
		}
		s.scanned[txnKey{r.StartTs, string(r.Key)}] = true
		s.committed(r)
	case cdcpb.Event_ROLLBACK:
		k := txnKey{r.StartTs, string(r.Key)}
		if _, ok := s.prewrites[k]; !ok && !s.initialized {
			s.held = append(s.held, r)
			return
		}
		delete(s.prewrites, k)
	default:
		s.problem(fmt.Errorf("row of unknown type %v", r.Type))
	}
}

func (s *sub) committed(r *cdcpb.Event_Row) {
	if r.CommitTs <= s.checkpoint {
		return // stored before this subscription began
	}
	if s.initialized && r.CommitTs <= s.resolved {
		s.problem(fmt.Errorf("%q@%d arrived at or below the resolved ts %d", r.Key, r.CommitTs, s.resolved))
	}
	s.emit(r)
}

// resolve takes a resolved ts for the region; it reports whether it moved
// the subscription forward. TiKV sends one every round, advanced or not,
// and may send one below the checkpoint; neither moves anything.
func (s *sub) resolve(ts uint64) bool {
	if !s.initialized {
		s.problem(fmt.Errorf("resolved ts %d before INITIALIZED", ts))
		return false
	}
	if ts <= s.resolved {
		return false
	}
	s.resolved = ts
	return true
}
