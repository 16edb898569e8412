package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/printable"
)

// Phase says what an event reports.
type Phase string

// Phases of events. A step's own events come between its PhaseStep and the
// next step's; the switchover's phases follow its protocol
// (docs/architecture.md, "Switchover").
const (
	PhaseStep      Phase = "step"       // a step begins
	PhaseWaiting   Phase = "waiting"    // a wait goes on (every few seconds)
	PhaseReached   Phase = "reached"    // a wait is over
	PhaseLock      Phase = "lock"       // the lock is held, or waited for
	PhaseSecret    Phase = "secret"     // a bootstrap secret was written
	PhaseRestart   Phase = "restart"    // a primary's restart for settings begins
	PhaseWrite     Phase = "write"      // a cluster's object was written
	PhaseJournal   Phase = "journal"    // a switchover begins: journaled
	PhaseResume    Phase = "resume"     // an interrupted switchover resumes
	PhaseFence     Phase = "fence"      // the old primary refuses new writes
	PhaseDemote    Phase = "demote"     // the old primary was told to become a standby
	PhaseUnfence   Phase = "unfence"    // the fence was lifted
	PhaseGateSet   Phase = "gate-set"   // the gate's LSN is journaled
	PhaseGate      Phase = "gate"       // the target replayed the gate's LSN
	PhasePromote   Phase = "promote"    // the target was told to become primary
	PhaseSwitched  Phase = "switched"   // the switchover is done, journal cleared
	PhaseBackOut   Phase = "back-out"   // the budget ran out or a wait stalled: backing out
	PhaseBackedOut Phase = "backed-out" // the old primary takes writes again
	PhaseReplan    Phase = "replan"     // a new plan replaces the one running
	PhaseConverged Phase = "converged"  // nothing is left to do
	PhaseStopped   Phase = "stopped"    // a shutdown stopped the run
)

// Event is one progress report of a run.
type Event struct {
	Time time.Time `json:"time"`
	// Elapsed is seconds since the run began.
	Elapsed float64 `json:"elapsed"`
	// Step counts from 1 in the plan running; 0 for the run's own events.
	Step    int         `json:"step,omitempty"`
	Steps   int         `json:"steps,omitempty"`
	Action  plan.Action `json:"action,omitempty"`
	Subject string      `json:"subject,omitempty"`
	Phase   Phase       `json:"phase"`
	Message string      `json:"message"`
	// Journal is the switchover journal's phase the event concerns.
	Journal string `json:"journal,omitempty"`
	// LSN and LagBytes are the WAL position a wait watches and how far
	// the watched cluster is from it.
	LSN      string `json:"lsn,omitempty"`
	LagBytes *int64 `json:"lagBytes,omitempty"`
	// Waited is how long a wait has lasted, in seconds.
	Waited float64 `json:"waited,omitempty"`
	// WritesRefused is how long a switchover refused writes, from the
	// fence until the new primary took them, in seconds (on its last
	// event).
	WritesRefused float64 `json:"writesRefused,omitempty"`
}

// TextProgress renders events for people, one line each:
// "[  2.3s]   fence: ...", indented inside a step.
func TextProgress(w io.Writer) func(Event) {
	return func(e Event) {
		indent := ""
		if e.Step > 0 && e.Phase != PhaseStep {
			indent = "  "
		}
		if e.Phase == PhaseStep && e.Steps > 0 {
			indent = fmt.Sprintf("step %d/%d: ", e.Step, e.Steps)
		}
		fmt.Fprintf(w, "[%6.1fs] %s%s\n", e.Elapsed, indent, printable.String(e.Message))
	}
}

// JSONProgress writes events as JSON lines.
func JSONProgress(w io.Writer) func(Event) {
	enc := json.NewEncoder(w)
	return func(e Event) { _ = enc.Encode(e) }
}

// LogProgress logs events through slog: steps and switchover phases at
// info, waits at debug.
func LogProgress(log *slog.Logger) func(Event) {
	return func(e Event) {
		level := slog.LevelInfo
		if e.Phase == PhaseWaiting || e.Phase == PhaseReached || e.Phase == PhaseWrite {
			level = slog.LevelDebug
		}
		attrs := []any{"phase", string(e.Phase), "elapsed", fmt.Sprintf("%.1fs", e.Elapsed)}
		if e.Step > 0 {
			attrs = append(attrs, "step", fmt.Sprintf("%d/%d", e.Step, e.Steps), "action", string(e.Action), "subject", e.Subject)
		}
		if e.LagBytes != nil {
			attrs = append(attrs, "lagBytes", *e.LagBytes)
		}
		if e.WritesRefused > 0 {
			attrs = append(attrs, "writesRefused", fmt.Sprintf("%.1fs", e.WritesRefused))
		}
		log.Log(context.Background(), level, e.Message, attrs...)
	}
}
