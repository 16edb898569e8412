package plan

import (
	"strings"
	"testing"
)

// Actions has every action once, with an executor, ranks that order
// the plan and no bucket for bookkeeping steps.
func TestActions(t *testing.T) {
	order := []Action{ActionLock, ActionRejoin, ActionEnsurePrimary, ActionEnsureSlot, ActionCheckpoint, ActionBootstrapSecret, ActionRefreshCredentials, ActionRebuild, ActionCreateStandby,
		ActionSwitchover, ActionFailover, ActionRepoint, ActionUpdate, ActionRestart, ActionFillExternalIP, ActionDeleteCluster, ActionDropSlot, ActionRecord, ActionFence, ActionUnfence}
	if len(Actions) != len(order) {
		t.Fatalf("%d actions in Actions, want %d", len(Actions), len(order))
	}
	for i, a := range order {
		k := Actions[a]
		if k.run == nil || k.decode == nil || k.Symbol == "" || k.Metric == "" || k.Rank != i {
			t.Errorf("%s: %+v", a, k)
		}
		// The payload type Actions binds is the action's own.
		if p, err := k.decode([]byte("{}")); err != nil || p.Action() != a {
			t.Errorf("%s decodes a payload of %T (%v)", a, p, err)
		}
	}
	if !Actions[ActionLock].Recheck || Actions[ActionRecord].Recheck {
		t.Error("only the lock re-checks the plan")
	}
	steps := []Step{{Action: ActionRecord, Subject: Subject{Cluster: "b"}}, {Action: ActionRecord, Subject: Subject{Cluster: "a"}}, {Action: ActionSwitchover}, {Action: ActionLock}}
	SortSteps(steps)
	var got []string
	for _, s := range steps {
		got = append(got, string(s.Action)+":"+s.Subject.Cluster)
	}
	if strings.Join(got, " ") != "lock: switchover: record:a record:b" {
		t.Fatalf("sorted %v", got)
	}
	c := (&Plan{Steps: []Step{{Action: ActionLock}, {Action: ActionSwitchover}, {Action: ActionCreateStandby}, {Action: ActionRecord}, {Action: ActionRepoint}}, Refusals: []Refusal{{}}}).Count()
	if c != (Count{Switchovers: 1, Create: 1, Update: 2, Refused: 1}) {
		t.Fatalf("count %+v", c)
	}
}
