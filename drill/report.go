package drill

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgtopo/pgtopo/snapshot"
)

// Text is the report as people read it in a terminal.
func (r *Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Drill %s of %s: %s (%s → %s)\n", r.Drill, r.Topology, r.Result, r.Started.UTC().Format("2006-01-02 15:04:05Z"), r.Finished.UTC().Format("15:04:05Z"))
	fmt.Fprintf(&b, "  started from: %s\n", r.Ready)
	if iso := r.Isolation; iso != nil {
		iso.text(&b)
		fmt.Fprintf(&b, "  heartbeats on production: %d acknowledged, %d missing afterwards\n", r.Acknowledged, r.Missing)
		if r.Error != "" {
			fmt.Fprintf(&b, "  error: %s\n", r.Error)
		}
		return b.String()
	}
	for _, m := range r.Moves {
		fmt.Fprintf(&b, "  %s → %s: %.1fs, longest write gap %.2fs, target %d bytes behind when it began", m.From, m.To, m.Seconds, m.LongestGap, m.LagBytes)
		if m.Error != "" {
			fmt.Fprintf(&b, "; %s", m.Error)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "  held %s between the moves\n", r.Hold)
	fmt.Fprintf(&b, "  heartbeats: %d acknowledged, %d missing afterwards\n", r.Acknowledged, r.Missing)
	if r.StreamingAfter > 0 {
		fmt.Fprintf(&b, "  every standby streaming again %.1fs after the last move\n", r.StreamingAfter)
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "  error: %s\n", r.Error)
	}
	return b.String()
}

// Markdown is the report for a ticket or a pull-request comment.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## pgtopo drill %s: %s — %s\n\n", r.Drill, r.Topology, r.Result)
	fmt.Fprintf(&b, "%s to %s (UTC). Started from: %s.\n\n", r.Started.UTC().Format("2006-01-02 15:04:05"), r.Finished.UTC().Format("15:04:05"), r.Ready)
	if iso := r.Isolation; iso != nil {
		iso.markdown(&b)
		fmt.Fprintf(&b, "\nHeartbeats on production: **%d acknowledged, %d missing**.\n", r.Acknowledged, r.Missing)
		if r.Error != "" {
			fmt.Fprintf(&b, "\n**Error:** %s\n", cell(r.Error))
		}
		return b.String()
	}
	b.WriteString("| move | took | longest write gap | target behind at start | result |\n|---|---|---|---|---|\n")
	for _, m := range r.Moves {
		res := "done"
		if m.Error != "" {
			res = strings.ReplaceAll(m.Error, "|", "\\|")
		}
		fmt.Fprintf(&b, "| %s → %s | %.1f s | %.2f s | %d B | %s |\n", m.From, m.To, m.Seconds, m.LongestGap, m.LagBytes, res)
	}
	fmt.Fprintf(&b, "\nHeld %s. Heartbeats: **%d acknowledged, %d missing**.", r.Hold, r.Acknowledged, r.Missing)
	if r.StreamingAfter > 0 {
		fmt.Fprintf(&b, " Every standby streaming again %.1f s after the last move.", r.StreamingAfter)
	}
	b.WriteString("\n")
	if r.Error != "" {
		fmt.Fprintf(&b, "\n**Error:** %s\n", strings.ReplaceAll(r.Error, "\n", " "))
	}
	return b.String()
}

// Record is the drill as the sites keep it.
func (r *Report) Record() snapshot.DrillRecord {
	rec := snapshot.DrillRecord{Drill: r.Drill, Result: r.Result, Started: r.Started.UTC().Format(time.RFC3339),
		Finished: r.Finished.UTC().Format(time.RFC3339), MissingHeartbeats: r.Missing, Acknowledged: r.Acknowledged}
	if iso := r.Isolation; iso != nil {
		rec.RTOSeconds, rec.RPOSeconds, rec.MissingHeartbeats = iso.RTO, iso.RPO, iso.LostHeartbeats
		rec.Summary = fmt.Sprintf("%s %s: clone of %s writable %.2fs after the cut, %d heartbeat(s) (%.2fs) short; %d/%d checks passed; production %s",
			r.Drill, r.Result, iso.From, iso.RTO, iso.LostHeartbeats, iso.RPO, iso.passed(), len(iso.Checks), iso.Production)
		return rec
	}
	var moves []string
	for _, m := range r.Moves {
		rec.RTOSeconds = max(rec.RTOSeconds, m.LongestGap)
		moves = append(moves, fmt.Sprintf("%s → %s gap %.2fs", m.From, m.To, m.LongestGap))
	}
	rec.Summary = fmt.Sprintf("%s %s: %s; %d of %d heartbeats missing", r.Drill, r.Result, strings.Join(moves, ", "), r.Missing, r.Acknowledged)
	return rec
}

func (iso *Isolation) passed() int {
	n := 0
	for _, c := range iso.Checks {
		if c.Passed {
			n++
		}
	}
	return n
}

func (iso *Isolation) text(b *strings.Builder) {
	for _, c := range iso.Removed {
		fmt.Fprintf(b, "  removed %s, a clone an earlier drill left\n", c)
	}
	fmt.Fprintf(b, "  clone %s of %s: streaming %.1fs after its creation\n", iso.Clone, iso.From, iso.StreamingAfter)
	fmt.Fprintf(b, "  RTO %.2fs (cut loose → took a write); RPO %.2fs (%d heartbeat(s) acknowledged before the cut it lacks; replayed %d at the cut, kept %d)\n",
		iso.RTO, iso.RPO, iso.LostHeartbeats, iso.ReplayedAtCut, iso.KeptAfterPromotion)
	for _, c := range iso.Checks {
		if c.Passed {
			fmt.Fprintf(b, "  check %s: passed\n", c.Name)
		} else {
			fmt.Fprintf(b, "  check %s: FAILED: %s\n", c.Name, c.Error)
		}
	}
	fmt.Fprintf(b, "  production: %s\n", iso.Production)
	for _, ch := range iso.Changes {
		fmt.Fprintf(b, "    %s\n", ch)
	}
	for _, ch := range iso.StatusOnly {
		fmt.Fprintf(b, "    (status only) %s\n", ch)
	}
}

func (iso *Isolation) markdown(b *strings.Builder) {
	for _, c := range iso.Removed {
		fmt.Fprintf(b, "Removed `%s`, a clone an earlier drill left.\n\n", c)
	}
	b.WriteString("| measure | value |\n|---|---|\n")
	fmt.Fprintf(b, "| clone | `%s`, a standby of %s |\n", iso.Clone, iso.From)
	fmt.Fprintf(b, "| streaming after creation | %.1f s |\n", iso.StreamingAfter)
	fmt.Fprintf(b, "| **RTO** (cut loose → took a write) | **%.2f s** |\n", iso.RTO)
	fmt.Fprintf(b, "| **RPO** (acknowledged before the cut, lacking) | **%.2f s**, %d heartbeat(s) |\n", iso.RPO, iso.LostHeartbeats)
	fmt.Fprintf(b, "| production | %s |\n", iso.Production)
	if len(iso.Checks) > 0 {
		b.WriteString("\n| check | result |\n|---|---|\n")
		for _, c := range iso.Checks {
			res := "passed"
			if !c.Passed {
				res = "**failed**: " + cell(c.Error)
			}
			fmt.Fprintf(b, "| %s | %s |\n", c.Name, res)
		}
	}
	if len(iso.Changes)+len(iso.StatusOnly) > 0 {
		b.WriteString("\n")
	}
	for _, ch := range iso.Changes {
		fmt.Fprintf(b, "- changed: %s\n", cell(ch))
	}
	for _, ch := range iso.StatusOnly {
		fmt.Fprintf(b, "- status only: %s\n", cell(ch))
	}
}

// cell makes text safe in a markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ")
}
