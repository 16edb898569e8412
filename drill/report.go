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
	var moves []string
	for _, m := range r.Moves {
		rec.RTOSeconds = max(rec.RTOSeconds, m.LongestGap)
		moves = append(moves, fmt.Sprintf("%s → %s gap %.2fs", m.From, m.To, m.LongestGap))
	}
	rec.Summary = fmt.Sprintf("%s %s: %s; %d of %d heartbeats missing", r.Drill, r.Result, strings.Join(moves, ", "), r.Missing, r.Acknowledged)
	return rec
}
