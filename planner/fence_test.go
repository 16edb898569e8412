package planner

import (
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
)

func TestPlanFence(t *testing.T) {
	mark := FenceOptions{Mark: snapshot.Fence{By: "dba@host", At: "2026-12-01T12:00:00Z", Reason: "split brain"}}
	splitBrain := func(s *snapshot.Snapshot) { cs(s, "orders-west").PG.InRecovery = false }
	cases := []struct {
		name    string
		edit    func(s *snapshot.Snapshot)
		cluster string
		opt     FenceOptions
		steps   []plan.Action
		refusal string
		note    string
	}{
		{name: "one of two writable", edit: splitBrain, cluster: "orders-west", opt: mark, steps: []plan.Action{plan.ActionLock, plan.ActionFence}},
		{name: "the only writable", cluster: "orders-east", opt: mark, refusal: "orders-east is the only writable cluster: fencing it stops every write to the database; pass --force"},
		{name: "the only writable, forced", cluster: "orders-east", opt: FenceOptions{Force: true, Mark: mark.Mark}, steps: []plan.Action{plan.ActionLock, plan.ActionFence}},
		{name: "the other one fenced already counts as not writable", edit: func(s *snapshot.Snapshot) {
			splitBrain(s)
			w := cs(s, "orders-west")
			w.PG.ReadOnlyDefault, w.Object.Marks.Fence = true, &mark.Mark
		}, cluster: "orders-east", opt: mark, refusal: "orders-east is the only writable cluster"},
		{name: "fenced already", edit: func(s *snapshot.Snapshot) {
			splitBrain(s)
			w := cs(s, "orders-west")
			w.PG.ReadOnlyDefault, w.Object.Marks.Fence = true, &mark.Mark
		}, cluster: "orders-west", opt: mark, note: "orders-west is fenced already (by dba@host at 2026-12-01T12:00:00Z)"},
		{name: "a standby", cluster: "orders-west", opt: mark, note: "orders-west is a standby (in recovery): it takes no writes, nothing to fence"},
		{name: "not in the file", cluster: "orders-north", opt: mark, refusal: "orders-north is not a cluster of topology orders"},
		{name: "unreadable", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").PG = nil }, cluster: "orders-west", opt: mark, refusal: "cannot fence orders-west: cannot read its database"},
		{name: "no CR", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").Exists = false }, cluster: "orders-west", opt: mark, refusal: "cannot fence orders-west: its CR does not exist"},
		{name: "site unreachable", edit: func(s *snapshot.Snapshot) { s.Sites[1].Reachable, s.Sites[1].Error = false, "timeout" }, cluster: "orders-west", opt: mark, refusal: "site west unreachable: timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, snap := inSync(t)
			d := loadDesired(t, "testdata/two-sites.yaml")
			if tc.edit != nil {
				tc.edit(snap)
			}
			p := PlanFence(d, snap, tc.cluster, tc.opt)
			var actions []plan.Action
			for _, s := range p.Steps {
				actions = append(actions, s.Action)
			}
			if !slices.Equal(actions, tc.steps) {
				t.Fatalf("steps %v, want %v (refusals %+v)", actions, tc.steps, p.Refusals)
			}
			if tc.refusal != "" && (len(p.Refusals) != 1 || !strings.Contains(p.Refusals[0].Reason, tc.refusal)) {
				t.Fatalf("refusals %+v, want %q", p.Refusals, tc.refusal)
			}
			if tc.refusal == "" && p.Refused() {
				t.Fatalf("refused: %+v", p.Refusals)
			}
			if tc.note != "" && (len(p.Notes) == 0 || p.Notes[0].Message != tc.note) {
				t.Fatalf("notes %+v, want %q", p.Notes, tc.note)
			}
			if len(tc.steps) > 0 {
				s := p.Steps[1]
				if pay[*plan.Fence](s).Mark != tc.opt.Mark || s.Subject.Cluster != tc.cluster || !slices.ContainsFunc(s.Preconditions, func(c plan.Precondition) bool { return c.Kind == plan.CondWritable }) {
					t.Fatalf("fence step %+v", s)
				}
			}
		})
	}
}

func TestPlanUnfence(t *testing.T) {
	d := loadDesired(t, "testdata/two-sites.yaml")
	_, snap := inSync(t)
	if p := PlanUnfence(d, snap, "orders-east", FenceOptions{}); !p.InSync() || p.Notes[0].Message != "orders-east is not fenced" {
		t.Fatalf("plan %+v", p)
	}
	for name, edit := range map[string]func(c *snapshot.ClusterState){
		"fenced": func(c *snapshot.ClusterState) {
			c.PG.ReadOnlyDefault, c.Object.Marks.Fence = true, &snapshot.Fence{By: "x"}
		},
		"a mark only":        func(c *snapshot.ClusterState) { c.Object.Marks.Fence = &snapshot.Fence{By: "x"} },
		"read-only, no mark": func(c *snapshot.ClusterState) { c.PG.ReadOnlyDefault = true },
	} {
		_, snap := inSync(t)
		edit(cs(snap, "orders-east"))
		p := PlanUnfence(d, snap, "orders-east", FenceOptions{})
		if len(p.Steps) != 2 || p.Steps[1].Action != plan.ActionUnfence {
			t.Errorf("%s: steps %+v", name, p.Steps)
		}
	}
	_, snap = inSync(t)
	cs(snap, "orders-east").PG = nil
	if p := PlanUnfence(d, snap, "orders-east", FenceOptions{}); !p.Refused() {
		t.Fatal("unfencing an unreadable cluster is not refused")
	}
	if p := PlanUnfence(d, snap, "orders-north", FenceOptions{}); !p.Refused() {
		t.Fatal("unfencing a cluster not in the file is not refused")
	}

	// Another cluster takes writes: two writable primaries, refused
	// unless forced; a fenced standby is unfenced whatever the others do.
	_, snap = inSync(t)
	e := cs(snap, "orders-east")
	e.PG.ReadOnlyDefault, e.Object.Marks.Fence = true, &snapshot.Fence{By: "x"}
	cs(snap, "orders-west").PG.InRecovery = false
	p := PlanUnfence(d, snap, "orders-east", FenceOptions{})
	if len(p.Refusals) != 1 || !strings.Contains(p.Refusals[0].Reason, "orders-west takes writes: unfencing orders-east would make two writable primaries") {
		t.Fatalf("unfence beside a writable cluster: %+v", p)
	}
	if p := PlanUnfence(d, snap, "orders-east", FenceOptions{Force: true}); len(p.Steps) != 2 {
		t.Fatalf("forced: %+v", p)
	}
	e.PG.InRecovery = true
	if p := PlanUnfence(d, snap, "orders-east", FenceOptions{}); len(p.Steps) != 2 {
		t.Fatalf("a fenced standby: %+v", p)
	}
}

// A fenced cluster is said in every plan.
func TestPlansNoteAFence(t *testing.T) {
	planOf, snap := inSync(t)
	e := cs(snap, "orders-east")
	e.PG.ReadOnlyDefault, e.Object.Marks.Fence = true, &snapshot.Fence{By: "dba@host", At: "2026-12-01T12:00:00Z", Reason: "drill"}
	p := planOf(snap)
	if len(p.Notes) != 1 || p.Notes[0].Message != "orders-east is fenced (by dba@host at 2026-12-01T12:00:00Z: drill): it refuses new writes until pgtopo unfence orders-east" {
		t.Fatalf("notes %+v", p.Notes)
	}
}

// A cluster read-only by default with no fence mark and no switchover under
// way is said in every plan: as primary it refuses writes, as a standby it
// would once promoted. A switchover's own fence is not, nor a fence on
// return from a failover (the rejoin lifts it; policy manual keeps it).
func TestPlansNoteAnUnmarkedFence(t *testing.T) {
	for _, tc := range []struct {
		name, cluster string
		journal       bool
		returned      *snapshot.Returned
		want          string
	}{
		{"primary", "orders-east", false, nil, "orders-east starts new sessions read-only (default_transaction_read_only on) with no fence mark: it refuses writes; a fence left behind or set by hand: pgtopo unfence orders-east lifts it"},
		{"standby", "orders-west", false, nil, "orders-west starts new sessions read-only (default_transaction_read_only on) with no fence mark: it would refuse writes once primary; a fence left behind or set by hand: pgtopo unfence orders-west lifts it"},
		{"switchover under way", "orders-east", true, nil, ""},
		{"rejoin under way", "orders-west", false, &snapshot.Returned{Rejoin: "rewind"}, ""},
		{"rejoined, policy manual", "orders-west", false, &snapshot.Returned{Rejoin: "manual", Done: true}, ""},
		{"rejoined by rewind", "orders-west", false, &snapshot.Returned{Rejoin: "rewind", Done: true}, "orders-west starts new sessions read-only (default_transaction_read_only on) with no fence mark: it would refuse writes once primary; a fence left behind or set by hand: pgtopo unfence orders-west lifts it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			planOf, snap := inSync(t)
			c := cs(snap, tc.cluster)
			c.PG.ReadOnlyDefault = true
			if tc.returned != nil {
				c.Object.Marks.Failover = &snapshot.FailoverRecord{Epoch: 1, From: tc.cluster, To: "orders-east", Phase: snapshot.FailoverDone, Returned: tc.returned}
			}
			if tc.journal {
				for _, name := range []string{"orders-east", "orders-west"} {
					cs(snap, name).Object.Marks.Journal = &snapshot.Journal{Phase: snapshot.PhaseDemoting, From: "orders-east", To: "orders-west"}
				}
			}
			var got []string
			for _, n := range planOf(snap).Notes {
				if strings.Contains(n.Message, "no fence mark") {
					got = append(got, n.Message)
				}
			}
			var want []string
			if tc.want != "" {
				want = []string{tc.want}
			}
			if !slices.Equal(got, want) {
				t.Errorf("notes %q, want %q", got, want)
			}
		})
	}
}
