package br

import (
	"fmt"
	"strconv"
	"time"

	"github.com/tikv/client-go/v2/oracle"
)

// TiDB timestamps (TSO) keep the physical time in milliseconds in the high
// bits and an 18-bit logical counter in the low bits; client-go's oracle
// does every conversion.

// DefaultEndTS is BR's default end-ts for log tasks (about 2090-11-18).
const DefaultEndTS uint64 = 999999999999999999

// ComposeTS builds a TSO from a wall-clock time (logical part 0), from its
// milliseconds: oracle.GoTimeToTS goes through UnixNano, which wraps after
// 2262 (a LastError's happen_at is whatever etcd holds).
func ComposeTS(t time.Time) uint64 { return oracle.ComposeTS(t.UnixMilli(), 0) }

// PhysicalTime returns the wall-clock part of a TSO.
func PhysicalTime(ts uint64) time.Time { return oracle.GetTimeFromTS(ts) }

// FormatTS renders a TSO the way `br log status` does.
func FormatTS(ts uint64, loc *time.Location) string {
	return PhysicalTime(ts).In(loc).Format("2006-01-02 15:04:05.000 -0700")
}

// ParseTS reads a timestamp flag exactly as BR's ParseTSString does: a TSO
// when the whole string is an unsigned decimal integer, otherwise a
// datetime, which must name its zone, parsed as TiDB parses a TIMESTAMP
// literal (tidbdatetime.go): "2018-05-11 01:42:23+0800", any punctuation
// between the parts, T or a space between date and time, up to six
// fractional digits (more are rounded), the zone as Z, ±hh, ±hhmm or
// ±hh:mm (±14:00 at most, -00:00 refused), and TiDB's TIMESTAMP range,
// 1970-01-01 00:00:01 to 2038-01-19 03:14:07.999999 UTC (give a TSO for
// anything outside it). loc is unused: every accepted datetime carries its
// zone.
//
// Two differences from BR, both refusals: a TSO of 0 (BR reads it as "not
// given"), and a string whose zone TiDB reads back as a date or time part
// ("2024-01-01" ends in "-01"): BR's zone check passes it and TiDB then
// reads it in the machine's zone, which is what the check exists to
// prevent.
func ParseTS(s string, loc *time.Location) (uint64, error) {
	_ = loc
	if s == "" {
		return 0, fmt.Errorf("empty timestamp")
	}
	if ts, err := strconv.ParseUint(s, 10, 64); err == nil {
		if ts == 0 {
			return 0, fmt.Errorf("timestamp %q: a TSO must be positive", s)
		}
		return ts, nil
	} else if isDigits(s) {
		return 0, fmt.Errorf("timestamp %q: not a valid TSO: %w", s, err)
	}
	if idx, _, _, _, _ := tidbTimezone(s); idx < 0 {
		// BR's words (ParseTSString with tzCheck).
		return 0, fmt.Errorf("timestamp %q: must set timezone when using datetime format ts, e.g. '2018-05-11 01:42:23+0800'", s)
	}
	t, err := parseTiDBDatetime(s)
	if err != nil {
		return 0, err
	}
	if t.Before(minTimestamp) || !t.Before(maxTimestamp) {
		return 0, fmt.Errorf("timestamp %q is outside TiDB's TIMESTAMP range (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC); give a TSO instead", s)
	}
	return ComposeTS(t), nil
}

// TiDB's TIMESTAMP range: [min, max).
var (
	minTimestamp = time.Date(1970, 1, 1, 0, 0, 1, 0, time.UTC)
	maxTimestamp = time.Date(2038, 1, 19, 3, 14, 8, 0, time.UTC)
)

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// Gap is how far a TSO lags behind now, rounded to seconds, as `gap=` shows it.
func Gap(now time.Time, ts uint64) time.Duration {
	return now.Sub(PhysicalTime(ts)).Round(time.Second)
}
