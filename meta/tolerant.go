package meta

import (
	"errors"
	"fmt"
	"time"

	"github.com/tikv/client-go/v2/oracle"
)

// CorruptRecord is a value under /tidb/br-stream/ that could not be
// decoded (or holds an implausible timestamp), set apart so that the rest
// of a task can still be read and repaired.
type CorruptRecord struct {
	Key string
	Err error
}

// Tolerant returns a view of the client whose scans skip undecodable
// records and append them to sink instead of failing (for status, history
// and the repair commands: one corrupt record must not lock an operator
// out). Task reads keep a task with a corrupt info or pause value, marked
// by TaskStatus.InfoErr / PauseErr. The view is for one goroutine.
func (c *Client) Tolerant(sink *[]CorruptRecord) *Client {
	cc := *c
	cc.sink = sink
	return &cc
}

// tolerate records a malformed-record error when the view is tolerant and
// reports whether it did; any other error is never swallowed.
func (c *Client) tolerate(err error) bool {
	var m *MalformedError
	if c.sink == nil || !errors.As(err, &m) {
		return false
	}
	*c.sink = append(*c.sink, CorruptRecord{Key: m.Key, Err: m.Err})
	return true
}

// PlausibleMargin is how far in the future a checkpoint may lie before it
// is refused where written and reported where read: clocks of one cluster
// agree far better than this, and a checkpoint ahead of PD's clock would
// claim data that cannot exist yet (and, never moving back, stop every
// later checkpoint).
const PlausibleMargin = time.Hour

// ErrImplausible marks a timestamp too far in the future to be true.
var ErrImplausible = errors.New("implausible timestamp: beyond now + 1h")

// checkPlausible refuses ts beyond now + PlausibleMargin.
func (c *Client) checkPlausible(key string, ts uint64) error {
	limit := oracle.GoTimeToTS(c.now().Add(PlausibleMargin))
	if ts > limit {
		return malformed(key, fmt.Errorf("%w: %d (%s)", ErrImplausible, ts,
			oracle.GetTimeFromTS(ts).UTC().Format(time.RFC3339)))
	}
	return nil
}

// decodeCheckpoint decodes a checkpoint value and checks it is plausible.
func (c *Client) decodeCheckpoint(key string, v []byte) (uint64, error) {
	ts, err := DecodeTS(key, v)
	if err != nil {
		return 0, err
	}
	return ts, c.checkPlausible(key, ts)
}
