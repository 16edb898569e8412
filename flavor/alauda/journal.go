package alauda

import (
	"encoding/json"
	"fmt"
)

// Switchover phases recorded in the journal annotation.
const (
	PhaseDemoting = "demoting" // the old primary is being turned into a standby
	PhaseGated    = "gated"    // the target replayed the old primary's end of WAL
	PhasePromoted = "promoted" // the target was told to become primary
)

// Journal is the switchover record kept in the pgtopo.dev/switchover
// annotation of both CRs, so that a run killed at any point can be resumed
// from it and live state, and never promotes without the gate.
type Journal struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Phase    string `json:"phase"`
	SystemID string `json:"systemIdentifier,omitempty"`
	Timeline int    `json:"timeline,omitempty"`
	// GateLSN is the old primary's end of WAL once demoted; the target must
	// replay up to it before promotion.
	GateLSN string `json:"gateLSN,omitempty"`
}

// ParseJournal reads the annotation; ok is false when there is none.
func ParseJournal(annotations map[string]string) (Journal, bool, error) {
	raw, ok := annotations[AnnotationSwitchover]
	if !ok || raw == "" {
		return Journal{}, false, nil
	}
	var j Journal
	if err := json.Unmarshal([]byte(raw), &j); err != nil {
		return Journal{}, false, fmt.Errorf("annotation %s: %w", AnnotationSwitchover, err)
	}
	return j, true, nil
}

// Encode writes the annotation value.
func (j Journal) Encode() string {
	b, _ := json.Marshal(j)
	return string(b)
}
