package diff

import (
	"encoding/json"
	"testing"
)

// pay is a step's payload as the type its action takes (nil when not).
func pay[P Payload](s Step) P {
	p, _ := s.Payload.(P)
	return p
}

// checkPayloads fails unless every step carries its action's payload and
// the plan reads back from its JSON as the same plan.
func checkPayloads(t *testing.T, p Plan) {
	t.Helper()
	for _, s := range p.Steps {
		if s.Payload == nil || s.Payload.payloadOf() != s.Action {
			t.Errorf("%s %s carries %T", s.Action, s.Subject, s.Payload)
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back Plan
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("the plan does not read back: %v", err)
	}
	if !Same(p, back) {
		t.Errorf("the plan reads back changed")
	}
}
