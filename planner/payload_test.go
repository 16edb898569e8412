package planner

import (
	"encoding/json"
	"testing"

	"github.com/pgtopo/pgtopo/plan"
)

// pay is a step's payload as the type its action takes (nil when not).
func pay[P plan.Payload](s plan.Step) P {
	p, _ := s.Payload.(P)
	return p
}

// checkPayloads fails unless every step carries its action's payload and
// the plan reads back from its JSON as the same plan.
func checkPayloads(t *testing.T, p plan.Plan) {
	t.Helper()
	for _, s := range p.Steps {
		if s.Payload == nil || s.Payload.Action() != s.Action {
			t.Errorf("%s %s carries %T", s.Action, s.Subject, s.Payload)
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back plan.Plan
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("the plan does not read back: %v", err)
	}
	if !plan.Same(p, back) {
		t.Errorf("the plan reads back changed")
	}
}
