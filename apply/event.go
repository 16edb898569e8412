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

// EventType says what an event reports.
type EventType string

// Types of events. A step's own events come between its EventStep and the
// next step's; the switchover's events follow its protocol
// (docs/architecture.md, "Switchover").
const (
	EventStep      EventType = "step"       // a step begins
	EventWaiting   EventType = "waiting"    // a wait goes on (every few seconds)
	EventReached   EventType = "reached"    // a wait is over
	EventLock      EventType = "lock"       // the lock is held, or waited for
	EventSecret    EventType = "secret"     // a bootstrap secret was written
	EventRestart   EventType = "restart"    // a primary's restart for settings begins
	EventWrite     EventType = "write"      // a cluster's object was written
	EventJournal   EventType = "journal"    // a switchover begins: journaled
	EventResume    EventType = "resume"     // an interrupted switchover resumes
	EventFence     EventType = "fence"      // the old primary refuses new writes
	EventDemote    EventType = "demote"     // the old primary was told to become a standby
	EventUnfence   EventType = "unfence"    // the fence was lifted
	EventGateSet   EventType = "gate-set"   // the gate's LSN is journaled
	EventGate      EventType = "gate"       // the target replayed the gate's LSN
	EventPromote   EventType = "promote"    // the target was told to become primary
	EventSwitched  EventType = "switched"   // the switchover is done, journal cleared
	EventBackOut   EventType = "back-out"   // the budget ran out or a wait stalled: backing out
	EventBackedOut EventType = "backed-out" // the old primary takes writes again
	EventReplan    EventType = "replan"     // a new plan replaces the one running
	EventConverged EventType = "converged"  // nothing is left to do
	EventStopped   EventType = "stopped"    // a shutdown stopped the run
	EventNote      EventType = "note"       // something the run does otherwise than it would, and why
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
	Type    EventType   `json:"event"`
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
		if e.Step > 0 && e.Type != EventStep {
			indent = "  "
		}
		if e.Type == EventStep && e.Steps > 0 {
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
		if e.Type == EventWaiting || e.Type == EventReached || e.Type == EventWrite {
			level = slog.LevelDebug
		}
		attrs := []any{"event", string(e.Type), "elapsed", fmt.Sprintf("%.1fs", e.Elapsed)}
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
