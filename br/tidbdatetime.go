package br

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// This file reads datetime literals the way TiDB's types.ParseTime reads a
// TIMESTAMP (pkg/types/time.go: GetTimezone, splitDateTime,
// ParseDateFormat, parseDatetime, ParseFrac), which is what BR's
// ParseTSString calls for --start-ts, --end-ts and --until. It is our own
// code following TiDB's rules, including the ones that surprise (a zone
// that can be read as a date part is read so).

// isPunct is TiDB's isPunctuation: printable ASCII that is not a letter or
// a digit (the space is not one).
func isPunct(c byte) bool {
	return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// tidbTimezone finds a trailing zone (TiDB's GetTimezone): Z, ±hh, ±hhmm or
// ±hh:mm at the very end. idx is where it starts, -1 when there is none.
func tidbTimezone(lit string) (idx int, sign, hour, sep, minute string) {
	zidx, sidx, spidx := -1, -1, -1
	l := len(lit)
	for i := l - 1; i >= 0; i-- {
		if lit[i] == 'Z' {
			zidx = i
			break
		}
		if sidx == -1 && (lit[i] == '-' || lit[i] == '+') {
			sidx = i
		}
		if spidx == -1 && lit[i] == ':' {
			spidx = i
		}
	}
	k := 0
	if l-zidx == 1 {
		k += 100
	}
	if t := l - sidx; sidx >= 0 && (t == 3 || t == 5 || t == 6) {
		k += t * 10
	}
	if spidx >= 0 && l-spidx == 3 {
		k += 3
	}
	// position of the hour and minute digits from the end, by form
	forms := map[int][2]int{100: {0, 0}, 30: {2, 0}, 50: {4, 2}, 63: {5, 2}}
	f, ok := forms[k]
	if !ok {
		return -1, "", "", "", ""
	}
	idx = -1
	digits := func(v string) bool { return isDigit(v[0]) && isDigit(v[1]) }
	if sidx != -1 {
		sign, idx = lit[sidx:sidx+1], sidx
	}
	if zidx != -1 {
		idx = zidx
	}
	if spidx >= 0 && l-spidx == 3 {
		sep = lit[spidx : spidx+1]
	}
	if f[0] != 0 {
		if hour = lit[l-f[0] : l-f[0]+2]; !digits(hour) {
			return -1, "", "", "", ""
		}
	}
	if f[1] != 0 {
		if minute = lit[l-f[1] : l-f[1]+2]; !digits(minute) {
			return -1, "", "", "", ""
		}
	}
	return idx, sign, hour, sep, minute
}

// fracIndex is TiDB's GetFracIndex: the '.' that starts the fraction,
// found as the last punctuation (signs aside) before any zone; -1 if none.
func fracIndex(s string) int {
	end := len(s) - 1
	if tz, _, _, _, _ := tidbTimezone(s); tz != -1 {
		end = tz - 1
	}
	for i := end; i >= 0; i-- {
		if s[i] != '+' && s[i] != '-' && isPunct(s[i]) {
			if s[i] == '.' {
				return i
			}
			break
		}
	}
	return -1
}

// dateParts is TiDB's ParseDateFormat: the digit groups, split at any
// punctuation, at a space or T between date and time, and at anything but
// a digit after the fifth part. nil when the string is not of that shape.
func dateParts(format string) []string {
	format = strings.TrimSpace(format)
	if format == "" || !isDigit(format[0]) {
		return nil
	}
	separates := func(c byte, parts int) bool {
		if isPunct(c) {
			return true
		}
		if parts == 2 && (c == 'T' || c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r') {
			return true
		}
		return parts > 4 && !isDigit(c)
	}
	var seps []string
	start := 0
	for i := 1; i < len(format)-1; i++ {
		if separates(format[i], len(seps)) {
			parts := len(seps)
			seps = append(seps, format[start:i])
			start = i + 1
			for j := i + 1; j < len(format) && separates(format[j], parts); j++ {
				start++
				i++
			}
			continue
		}
		if !isDigit(format[i]) {
			return nil
		}
	}
	return append(seps, format[start:])
}

// fracMicros is TiDB's ParseFrac at six digits: the microseconds, rounded
// half up, and whether rounding carried into the next second.
func fracMicros(s string) (int, bool, error) {
	if s == "" {
		return 0, false, nil
	}
	if len(s) <= 6 {
		v, err := strconv.Atoi(s)
		if err != nil {
			return 0, false, err
		}
		for range 6 - len(s) {
			v *= 10
		}
		return v, false, nil
	}
	v, err := strconv.Atoi(s[:7])
	if err != nil {
		return 0, false, err
	}
	v = (v + 5) / 10
	if v >= 1000000 {
		return 0, true, nil
	}
	return v, false, nil
}

// adjustYear reads a one- or two-digit year as MySQL does.
func adjustYear(y int) int {
	switch {
	case y >= 0 && y <= 69:
		return 2000 + y
	case y >= 70 && y <= 99:
		return 1900 + y
	}
	return y
}

// parseTiDBDatetime is TiDB's parseDatetime for a string literal, with the
// zone required: a zone that TiDB's rules absorb into the date or time is
// no zone, and refused as BR refuses a datetime without one.
func parseTiDBDatetime(str string) (time.Time, error) {
	bad := func() (time.Time, error) {
		return time.Time{}, fmt.Errorf("timestamp %q is not a valid datetime; write it as TiDB does, e.g. '2018-05-11 01:42:23+0800', '2018-05-11T01:42:23.5Z'", str)
	}
	// splitDateTime: zone, fraction, then the parts.
	format := str
	tzIdx, tzSign, tzHour, tzSep, tzMinute := tidbTimezone(format)
	hasTZ := false
	if tzIdx > 0 {
		hasTZ = true
		for ; tzIdx > 0 && isPunct(format[tzIdx-1]); tzIdx-- {
		}
		format = format[:tzIdx]
	}
	fracStr := ""
	if fi := fracIndex(format); fi > 0 {
		end := fi + 1
		for end < len(format) && isDigit(format[end]) {
			end++
		}
		fracStr = format[fi+1 : end]
		for ; fi > 0 && isPunct(format[fi-1]); fi-- {
		}
		format = format[:fi]
	}
	seps := dateParts(format)

	// A fraction or zone that cannot belong to a full date and time is a
	// part of it (TiDB's "absorb").
	noAbsorb := len(seps) > 5 || (len(seps) == 1 && len(seps[0]) > 4)
	if fracStr != "" && !noAbsorb {
		seps, fracStr = append(seps, fracStr), ""
	}
	if hasTZ && tzSign != "" && !noAbsorb && !(tzMinute != "" && tzSep == "") {
		if tzHour != "" {
			seps = append(seps, tzHour)
		}
		if tzMinute != "" {
			seps = append(seps, tzMinute)
		}
		hasTZ = false
	}

	var year, month, day, hour, minute, second int
	hhmmss := false
	scan := func(parts []string, args ...*int) bool {
		if len(parts) != len(args) {
			return false
		}
		for i, p := range parts {
			v, err := strconv.Atoi(p)
			if err != nil || v < 0 {
				return false
			}
			*args[i] = v
		}
		return true
	}
	digitsAt := func(s string, widths ...int) []string {
		var out []string
		for _, w := range widths {
			if len(s) < w {
				w = len(s)
			}
			out = append(out, s[:w])
			s = s[w:]
		}
		return out
	}
	ok := true
	switch len(seps) {
	case 0, 2:
		return bad()
	case 1:
		s := seps[0]
		switch l := len(s); l {
		case 14:
			ok, hhmmss = scan(digitsAt(s, 4, 2, 2, 2, 2, 2), &year, &month, &day, &hour, &minute, &second), true
		case 12:
			ok, hhmmss = scan(digitsAt(s, 2, 2, 2, 2, 2, 2), &year, &month, &day, &hour, &minute, &second), true
			year = adjustYear(year)
		case 11:
			ok, hhmmss = scan(digitsAt(s, 2, 2, 2, 2, 2, 1), &year, &month, &day, &hour, &minute, &second), true
			year = adjustYear(year)
		case 10:
			ok = scan(digitsAt(s, 2, 2, 2, 2, 2), &year, &month, &day, &hour, &minute)
			year = adjustYear(year)
		case 9:
			ok = scan(digitsAt(s, 2, 2, 2, 2, 1), &year, &month, &day, &hour, &minute)
			year = adjustYear(year)
		case 8:
			ok = scan(digitsAt(s, 4, 2, 2), &year, &month, &day)
		case 7:
			ok = scan(digitsAt(s, 2, 2, 2, 1), &year, &month, &day, &hour)
			year = adjustYear(year)
		case 6, 5:
			ok = scan(digitsAt(s, 2, 2, 2), &year, &month, &day)
			year = adjustYear(year)
		default:
			return bad()
		}
		// The fraction of a date-only number is its time, or its seconds
		// (TiDB warns and goes on when it does not parse).
		switch l := len(s); {
		case (l == 5 || l == 6 || l == 8) && fracStr != "":
			switch n := len(fracStr); {
			case n <= 2:
				scan([]string{fracStr}, &hour)
			case n <= 4:
				scan(digitsAt(fracStr, 2, 2), &hour, &minute)
			default:
				scan(digitsAt(fracStr, 2, 2, 2), &hour, &minute, &second)
			}
		case (l == 9 || l == 10) && fracStr != "":
			scan(digitsAt(fracStr, 2), &second)
		}
	case 3:
		ok = scan(seps, &year, &month, &day)
	case 4:
		ok = scan(seps, &year, &month, &day, &hour)
	case 5:
		ok = scan(seps, &year, &month, &day, &hour, &minute)
	default:
		// Parts past the sixth are dropped (TiDB warns).
		ok, hhmmss = scan(seps[:6], &year, &month, &day, &hour, &minute, &second), true
	}
	if !ok {
		return bad()
	}
	if len(seps[0]) <= 2 && len(seps) > 1 {
		year = adjustYear(year)
	}
	micros, carry := 0, false
	if hhmmss {
		var err error
		if micros, carry, err = fracMicros(fracStr); err != nil {
			return bad()
		}
	}
	if !hasTZ {
		return time.Time{}, fmt.Errorf("timestamp %q: must set timezone when using datetime format ts, e.g. '2018-05-11 01:42:23+0800' (what ends it is read as part of the date or time)", str)
	}
	if !hhmmss {
		return bad() // a zone needs hours, minutes and seconds
	}
	dh, dm := 0, 0
	if tzHour != "" {
		dh, _ = strconv.Atoi(tzHour)
	}
	if tzMinute != "" {
		dm, _ = strconv.Atoi(tzMinute)
	}
	if dh > 14 || dm > 59 || (dh == 14 && dm != 0) || (tzSign == "-" && dh == 0 && dm == 0) {
		return time.Time{}, fmt.Errorf("timestamp %q: zone offset out of range (at most ±14:00; -00:00 is not one)", str)
	}
	offset := dh*3600 + dm*60
	if tzSign == "-" {
		offset = -offset
	}
	zone := time.FixedZone("", offset)
	t := time.Date(year, time.Month(month), day, hour, minute, second, micros*1000, zone)
	// A valid datetime survives the round trip (TiDB's GoTime check):
	// month 13, February 30 or hour 24 do not.
	if y, mo, d := t.Date(); y != year || int(mo) != month || d != day || t.Hour() != hour || t.Minute() != minute || t.Second() != second {
		return bad()
	}
	if carry {
		t = t.Add(time.Second)
	}
	return t, nil
}
