package playground

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"logbackup/streamagent/errs"
)

// verdict is what the nemesis run found.
type verdict struct {
	violations []string
}

// summarize prints the nemesis summary table and returns every violation
// of the oracle's rules: lost versions, checkpoints that moved backwards,
// fatal faults that did not surface (or too slowly, with a FatalSLO),
// faults that did not heal without a person.
func (n *nemesis) summarize(out io.Writer, fc *finalCheck, ran time.Duration) verdict {
	o := n.orc
	o.mu.Lock()
	defer o.mu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	v := verdict{violations: append([]string(nil), o.violations...)}

	fmt.Fprintf(out, "\n== nemesis summary: seed %d, %s of faults ==\n", n.o.Seed, ran.Round(time.Second))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fault\tinjected\trecovered\ttime to recover p50\tp99\tmax\t")
	byKind := map[string][]*faultRecord{}
	for _, f := range n.faults {
		byKind[f.kind] = append(byKind[f.kind], f)
	}
	total, totalRecovered := 0, 0
	var all, alone []time.Duration
	for _, k := range AllFaults() {
		fs := byKind[k]
		if len(fs) == 0 {
			if n.kinds[k] {
				fmt.Fprintf(tw, "%s\t0\t-\t-\t-\t-\t\n", k)
			}
			continue
		}
		var ttr []time.Duration
		for _, f := range fs {
			if !f.recovered.IsZero() {
				ttr = append(ttr, f.recovered.Sub(f.healed))
				if n.undisturbedLocked(f) {
					alone = append(alone, f.recovered.Sub(f.healed))
				}
			} else {
				v.violations = append(v.violations, fmt.Sprintf("%s (%s) at %s did not recover: the global checkpoint never passed the moment it was healed",
					f.kind, f.detail, f.start.Format("15:04:05")))
			}
		}
		total += len(fs)
		totalRecovered += len(ttr)
		all = append(all, ttr...)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t\n", k, len(fs), len(ttr), dur(percentile(ttr, 50)), dur(percentile(ttr, 99)), dur(percentile(ttr, 100)))
	}
	fmt.Fprintf(tw, "all\t%d\t%d\t%s\t%s\t%s\t\n", total, totalRecovered, dur(percentile(all, 50)), dur(percentile(all, 99)), dur(percentile(all, 100)))
	tw.Flush()
	fmt.Fprintln(out, "(time to recover: from the heal to the global checkpoint passing the cluster's time at the heal)")
	// What an operator reads: the figures above mix in the faults still
	// active at a heal (hundreds of overlapping faults make minutes of a
	// lone fault's seconds).
	fmt.Fprintf(out, "undisturbed time to recover (no other fault active from the heal until the checkpoint passed it): n=%d p50 %s p99 %s max %s (goal: p99 ≤ 30s)\n",
		len(alone), dur(percentile(alone, 50)), dur(percentile(alone, 99)), dur(percentile(alone, 100)))
	if n.calm > 0 {
		fmt.Fprintf(out, "longest checkpoint lag above flush interval + 30s with no fault active: %s, from %s\n", dur(n.calm), n.calmAt.Format("15:04:05"))
	} else {
		fmt.Fprintln(out, "longest checkpoint lag above flush interval + 30s with no fault active: none")
	}

	// Fatal faults: LastError with the right code, and how fast.
	var lat, undisturbed []time.Duration
	surfaced, met, slow, unreportable := 0, 0, 0, 0
	other := map[string]int{}
	for _, e := range o.epochs {
		unreportable += e.unreportable
		first, ok := e.firstMeet()
		if !ok {
			continue
		}
		met++
		if _, ok := e.surfaced(); ok {
			surfaced++
		} else {
			v.violations = append(v.violations, fmt.Sprintf("a fatal fault met at %s never surfaced as a LastError %s", first.Format("15:04:05.000"), e.code))
		}
		for c, k := range e.other {
			other[c] += k
		}
		for s, d := range e.latencies() {
			lat = append(lat, d)
			m := e.meets[s]
			if m.IsZero() {
				m = first
			}
			if n.disturbedLocked(s, m, m.Add(d)) {
				continue
			}
			undisturbed = append(undisturbed, d)
			if n.o.FatalSLO > 0 && d > n.o.FatalSLO {
				slow++
			}
		}
	}
	fmt.Fprintf(out, "fatal faults (storage access denied): %d injected, %d met by an agent, %d surfaced as LastError %s\n",
		len(o.epochs), met, surfaced, errs.CodeStorageAccessDenied)
	if len(lat) > 0 {
		fmt.Fprintf(out, "  agent met it → LastError written, per store: n=%d p50 %s p99 %s max %s; undisturbed n=%d p50 %s p99 %s max %s\n",
			len(lat), dur(percentile(lat, 50)), dur(percentile(lat, 99)), dur(percentile(lat, 100)),
			len(undisturbed), dur(percentile(undisturbed, 50)), dur(percentile(undisturbed, 99)), dur(percentile(undisturbed, 100)))
		fmt.Fprintln(out, "  (undisturbed: no PD/etcd outage and no kill of that agent between the two)")
	}
	if len(other) > 0 {
		fmt.Fprintf(out, "  other LastError codes while denied: %s\n", countList(other))
	}
	if unreportable > 0 {
		fmt.Fprintf(out, "  %d denied requests of final flushes (pause, graceful stop) or of probes of a paused task: no LastError is due for those\n", unreportable)
	}
	if slow > 0 {
		v.violations = append(v.violations, fmt.Sprintf("%d undisturbed fatal reports took longer than %s", slow, n.o.FatalSLO))
	}

	// Error pauses and automatic recovery.
	pauses := map[string]int{}
	var auto []time.Duration
	autoN, byNemesis, open := 0, 0, 0
	for _, p := range o.errorPauses {
		pauses[p.code]++
		switch {
		case p.resumed.IsZero():
			open++
			v.violations = append(v.violations, fmt.Sprintf("the error pause (%s) of %s was never lifted", p.code, p.at.Format("15:04:05")))
		case p.byNemesis:
			byNemesis++
			if recoverableCode(p.code) {
				v.violations = append(v.violations, fmt.Sprintf("the nemesis resumed an error pause with the recoverable code %s: that is the coordinator's job", p.code))
			}
		default:
			autoN++
			auto = append(auto, p.resumed.Sub(p.at))
			if !recoverableCode(p.code) {
				v.violations = append(v.violations, fmt.Sprintf("an error pause with the fatal code %s was lifted without the operator", p.code))
			}
		}
	}
	fmt.Fprintf(out, "error pauses: %d (%s); resumed automatically %d (pause → resume p50 %s p99 %s max %s); by the operator's --clear-error %d; still paused %d\n",
		len(o.errorPauses), countList(pauses), autoN, dur(percentile(auto, 50)), dur(percentile(auto, 99)), dur(percentile(auto, 100)), byNemesis, open)

	starts := 0
	for _, p := range n.agents.procs {
		p.mu.Lock()
		starts += p.starts
		p.mu.Unlock()
	}
	exits, why := n.agents.unexpectedExits()
	fmt.Fprintf(out, "agent processes: %d starts, %d exits nobody asked for (%s)\n", starts, exits, countList(why))
	for r, k := range why {
		if !startFailure(r) {
			v.violations = append(v.violations, fmt.Sprintf("agents exited by themselves %d time(s): %s", k, r))
		}
	}

	regressions := 0
	for _, s := range o.violations {
		if strings.Contains(s, "moved backwards") {
			regressions++
		}
	}
	fmt.Fprintf(out, "checkpoint regressions (global, store, storage in etcd and in storage): %d\n", regressions)
	// A version missing while running is missing at the end too (or came
	// late, which is as bad): lost is the larger count.
	lost, finalChecked, finalLost := o.lost, 0, 0
	if fc != nil {
		lost = max(lost, fc.lost)
		finalChecked, finalLost = fc.checked, fc.lost
		if fc.lost > 0 {
			v.violations = append(v.violations, fmt.Sprintf("the final check found %d of %d versions missing: %v", fc.lost, fc.checked, fc.samples))
		}
		for _, p := range fc.rep.Problems {
			v.violations = append(v.violations, "storage problem: "+p)
		}
	}
	fmt.Fprintf(out, "versions checked: %d while running (%d missing), %d at the end (%d missing); lost: %d\n", o.checked, o.lost, finalChecked, finalLost, lost)
	if d := n.front.droppedMeta(); d != "" {
		fmt.Fprintf(out, "sabotage: dropped %s\n", d)
	}
	if o.walkErr != "" {
		fmt.Fprintf(out, "last storage read error while running: %s\n", o.walkErr)
	}
	if len(v.violations) == 0 {
		fmt.Fprintln(out, "violations: none")
	} else {
		fmt.Fprintf(out, "violations: %d\n", len(v.violations))
		for _, s := range v.violations {
			fmt.Fprintf(out, "  - %s\n", s)
		}
	}
	return v
}

// recoverableCode: a retryable error that outlived the retry budget. Its
// cause can clear by itself, so no person should have to resume the task.
func recoverableCode(code string) bool { return errs.Lookup(errs.Code(code)).Class == errs.Retryable }

func dur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(100 * time.Millisecond).String()
	}
}

func countList(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
