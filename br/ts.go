package br

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tikv/client-go/v2/oracle"
)

// TiDB timestamps (TSO) keep the physical time in milliseconds in the high
// bits and an 18-bit logical counter in the low bits; client-go's oracle
// does every conversion.

// DefaultEndTS is BR's default end-ts for log tasks (about 2090-11-18).
const DefaultEndTS uint64 = 999999999999999999

// ComposeTS builds a TSO from a wall-clock time (logical part 0).
func ComposeTS(t time.Time) uint64 { return oracle.GoTimeToTS(t) }

// PhysicalTime returns the wall-clock part of a TSO.
func PhysicalTime(ts uint64) time.Time { return oracle.GetTimeFromTS(ts) }

// FormatTS renders a TSO the way `br log status` does.
func FormatTS(ts uint64, loc *time.Location) string {
	return PhysicalTime(ts).In(loc).Format("2006-01-02 15:04:05.000 -0700")
}

// datetime layouts accepted by ParseTS, tried in order. Every one names
// its zone: BR refuses a datetime without one (it would be read in whatever
// zone the machine running the command happens to be in).
var tsLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999 -0700",
	"2006-01-02 15:04:05.999999999-0700",
	"2006-01-02 15:04:05.999999999 -07:00",
	"2006-01-02 15:04:05.999999999-07:00",
	"2006-01-02 15:04:05.999999999 MST",
}

// zoneless are datetimes BR refuses for lacking a zone.
var zoneless = []string{"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", "2006-01-02"}

// ParseTS reads a timestamp flag as BR does: either a TSO (an unsigned
// integer) or a datetime such as "2018-05-11 01:42:23+0800".
func ParseTS(s string, loc *time.Location) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty timestamp")
	}
	if isDigits(s) {
		ts, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("timestamp %q: not a valid TSO: %w", s, err)
		}
		if ts == 0 {
			return 0, fmt.Errorf("timestamp %q: a TSO must be positive", s)
		}
		return ts, nil
	}
	for _, layout := range tsLayouts {
		t, err := time.ParseInLocation(layout, s, loc)
		if err == nil {
			if t.UnixMilli() <= 0 {
				return 0, fmt.Errorf("timestamp %q is before 1970", s)
			}
			return ComposeTS(t), nil
		}
	}
	for _, layout := range zoneless {
		if _, err := time.Parse(layout, s); err == nil {
			// BR's words (ParseTSString with tzCheck).
			return 0, fmt.Errorf("timestamp %q: must set timezone when using datetime format ts, e.g. '2018-05-11 01:42:23+0800'", s)
		}
	}
	return 0, fmt.Errorf("timestamp %q is neither a TSO nor a datetime like \"2006-01-02 15:04:05+0800\"", s)
}

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
