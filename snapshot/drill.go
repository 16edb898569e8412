package snapshot

import (
	"slices"
	"strings"
)

// DrillRecord is one DR drill as the sites keep it: what an auditor files.
type DrillRecord struct {
	Drill    string `json:"drill"`
	Result   string `json:"result"`
	Started  string `json:"started"` // RFC 3339, UTC
	Finished string `json:"finished"`
	// RTOSeconds is the longest write gap an application saw.
	RTOSeconds float64 `json:"rtoSeconds"`
	// MissingHeartbeats is the acknowledged heartbeats lost: the data loss
	// the drill showed, as rows.
	MissingHeartbeats int `json:"missingHeartbeats"`
	// RPOSeconds is the span of acknowledged writes lost (an isolated
	// failover drill's clone lacked them).
	RPOSeconds   float64 `json:"rpoSeconds,omitempty"`
	Acknowledged int     `json:"acknowledgedHeartbeats"`
	Summary      string  `json:"summary"`
}

// DrillsKept is how many drills the sites keep per topology.
const DrillsKept = 10

// Drills are the drills every site keeps, newest first, each once.
func (s *Snapshot) Drills() []DrillRecord {
	var out []DrillRecord
	for _, st := range s.Sites {
		for _, d := range st.Drills {
			if !slices.ContainsFunc(out, func(o DrillRecord) bool { return o.Started == d.Started && o.Drill == d.Drill }) {
				out = append(out, d)
			}
		}
	}
	slices.SortFunc(out, func(a, b DrillRecord) int { return strings.Compare(b.Started, a.Started) })
	return out
}

// LastDrillPassed is the newest drill of a kind that passed, if any.
func (s *Snapshot) LastDrillPassed(kind string) *DrillRecord {
	for _, d := range s.Drills() {
		if d.Drill == kind && d.Result == "passed" {
			return &d
		}
	}
	return nil
}
