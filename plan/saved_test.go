package plan_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/internal/fixture"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"

	"github.com/pgtopo/pgtopo/snapshot"
)

func switchoverFixture(t *testing.T, dir string) (plan.Plan, *snapshot.Snapshot, func(*snapshot.Snapshot) plan.Plan) {
	t.Helper()
	d := fixture.Desired(t, "../planner/testdata/two-sites-west.yaml")
	snap := fixture.Snapshot(t, "../planner/testdata/"+dir+"/snapshot.json", d)
	planOf := func(s *snapshot.Snapshot) plan.Plan { return planner.Compute(d, s, plan.Options{}) }
	return planOf(snap), snap, planOf
}

// TestStaleness edits the live world behind a switchover plan, one fact at
// a time, and checks that the plan changes and that the reason names the
// object and what changed.
func TestStaleness(t *testing.T) {
	cases := []struct {
		name string
		edit func(s *snapshot.Snapshot)
		want string
	}{
		{"hand edit of a CR the plan touches", func(s *snapshot.Snapshot) {
			w := cs(s, "orders-west")
			w.Object.Spec.Instances, w.Object.ResourceVersion = 3, "1301"
		}, "orders-west: resourceVersion 1234 → 1301: numberOfInstances 1 → 3"},
		{"a journal appears", func(s *snapshot.Snapshot) {
			cs(s, "orders-east").Object.Marks.Journal = &snapshot.Journal{From: "orders-east", To: "orders-west", Phase: snapshot.PhaseDemoting}
		}, "orders-east: resourceVersion 1200 → 1200: pgtopo's marks"},
		{"the target's site is gone", func(s *snapshot.Snapshot) { s.Sites[1].Reachable = false }, "site west: reachable true → false"},
		{"the target streams elsewhere", func(s *snapshot.Snapshot) {
			cs(s, "orders-west").PG.WalReceiver.SenderPort = 30000
		}, "orders-west: streams from 127.100.10.1:31388 → 127.100.10.1:30000"},
		{"the target became writable", func(s *snapshot.Snapshot) { cs(s, "orders-west").PG.InRecovery = false }, "orders-west: role standby → primary"},
		{"the target lost its database", func(s *snapshot.Snapshot) { cs(s, "orders-west").PG = nil }, "orders-west: role standby → unreadable"},
		{"a new timeline", func(s *snapshot.Snapshot) { cs(s, "orders-west").PG.Timeline = 2 }, "orders-west: timeline 1 → 2"},
		{"another system", func(s *snapshot.Snapshot) { cs(s, "orders-west").PG.SystemID = "1" }, "orders-west: system identifier 7710640626635289495 → 1"},
		{"the endpoint moved", func(s *snapshot.Snapshot) { cs(s, "orders-west").Endpoint.Port = 32000 }, "orders-west: endpoint 127.100.20.1:32601 → 127.100.20.1:32000"},
		{"the CR is gone", func(s *snapshot.Snapshot) { cs(s, "orders-west").Exists = false }, "orders-west: exists true → false"},
		{"credentials rotated", func(s *snapshot.Snapshot) { cs(s, "orders-west").Credentials.ResourceVersion = "99" }, "orders-west: credentials Secret resourceVersion 10 → 99"},
		{"bootstrap secret replaced", func(s *snapshot.Snapshot) {
			cs(s, "orders-east").BootstrapSecret.ResourceVersion = "77"
		}, "orders-east: bootstrap Secret resourceVersion (none) → 77"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			was, snap, replan := switchoverFixture(t, "primary-changed")
			setVersions(snap)
			wasBasis := plan.BasisOf(snap)
			if again := replan(snap); !plan.Same(was, again) {
				t.Fatal("the same world plans differently")
			}
			tc.edit(snap)
			now := replan(snap)
			why := wasBasis.Since(plan.BasisOf(snap))
			if !slices.ContainsFunc(why, func(w string) bool { return strings.Contains(w, tc.want) }) {
				t.Fatalf("reasons %q, want one with %q", why, tc.want)
			}
			if got := plan.Staleness(was, wasBasis, now, plan.BasisOf(snap)); !slices.Equal(got, why) {
				t.Fatalf("Staleness %q, want the basis reasons %q", got, why)
			}
		})
	}
}

func setVersions(s *snapshot.Snapshot) {
	cs(s, "orders-east").Object.ResourceVersion = "1200"
	w := cs(s, "orders-west")
	w.Object.ResourceVersion, w.Credentials.ResourceVersion = "1234", "10"
}

// cs is the named cluster of s, to edit in place.
func cs(s *snapshot.Snapshot, name string) *snapshot.ClusterState {
	c, _ := s.Cluster(name)
	return c
}

// A plan that changes while nothing its basis records did names the step.
func TestStalenessWithoutABasisChange(t *testing.T) {
	was, snap, _ := switchoverFixture(t, "primary-changed")
	b := plan.BasisOf(snap)
	now := was
	now.Steps = slices.Clone(was.Steps)
	sw := *now.Steps[2].Payload.(*plan.Switchover)
	sw.MaxLagBytes++
	now.Steps[2].Payload = &sw
	if plan.Same(was, now) {
		t.Fatal("a changed payload is the same plan")
	}
	if got := plan.Staleness(was, b, now, b); len(got) != 1 || got[0] != "step 3 switchover orders-west (west/db) changed" {
		t.Fatalf("%q", got)
	}
	if got := plan.Staleness(was, b, plan.Plan{Steps: was.Steps[:2]}, b); got[0] != "step 3 switchover orders-west (west/db) is no longer needed" {
		t.Fatalf("%q", got)
	}
	longer := plan.Plan{Steps: append(slices.Clone(was.Steps), plan.Step{Action: plan.ActionRecord, Subject: plan.Subject{Site: "east", Namespace: "db", Cluster: "orders-east"}})}
	if got := plan.Staleness(was, b, longer, b); got[0] != "a step was added: record orders-east (east/db)" {
		t.Fatalf("%q", got)
	}
	refused := plan.Plan{Steps: was.Steps, Refusals: []plan.Refusal{{Reason: "site west unreachable"}}}
	if got := plan.Staleness(was, b, refused, b); got[0] != "the plan is now refused: site west unreachable" {
		t.Fatalf("%q", got)
	}
	if got := plan.Staleness(was, b, was, b); got[0] != "the plan changed" {
		t.Fatalf("%q", got)
	}
}

// Same ignores reasons and notes but not refusals, digest or revision.
func TestSame(t *testing.T) {
	was, _, _ := switchoverFixture(t, "primary-changed")
	reworded := was
	reworded.Steps = slices.Clone(was.Steps)
	reworded.Steps[0].Reason = "other words"
	reworded.Notes = []plan.Note{{Message: "a note"}}
	if !plan.Same(was, reworded) {
		t.Fatal("reasons and notes made plans differ")
	}
	for name, edit := range map[string]func(p *plan.Plan){
		"refusal":  func(p *plan.Plan) { p.Refusals = []plan.Refusal{{Reason: "no"}} },
		"digest":   func(p *plan.Plan) { p.Digest = "x" },
		"revision": func(p *plan.Plan) { p.Revision = "x" },
		"changes":  func(p *plan.Plan) { p.Steps[1].Changes = nil },
	} {
		p := was
		p.Steps = slices.Clone(was.Steps)
		edit(&p)
		if plan.Same(was, p) {
			t.Errorf("%s: plans are the same", name)
		}
	}
}

func TestSavedPlanRoundTrip(t *testing.T) {
	was, snap, _ := switchoverFixture(t, "primary-changed")
	var b bytes.Buffer
	src := plan.Source{Name: "west.yaml", Content: "apiVersion: pgtopo.dev/v1alpha1\n"}
	opt := plan.Options{Revision: "abc", History: map[string]plan.History{"def": plan.HistoryForward}}
	if err := plan.Save(&b, was, plan.BasisOf(snap), opt, src); err != nil {
		t.Fatal(err)
	}
	sp, err := plan.LoadSaved("p.json", &b)
	if err != nil {
		t.Fatal(err)
	}
	if !plan.Same(was, sp.Plan) || sp.Source != src || sp.Options.History["def"] != plan.HistoryForward || len(sp.Basis.Since(plan.BasisOf(snap))) != 0 {
		t.Fatalf("round trip lost something: %+v", sp)
	}
	for _, tc := range []struct{ doc, want string }{
		{`{"apiVersion":"pgtopo.dev/v1alpha1","kind":"Plan"}`, `p.json: kind "Plan" apiVersion "pgtopo.dev/v1alpha1": want SavedPlan`},
		{`{"kind":"SavedPlan","apiVersion":"v0"}`, `apiVersion "v0"`},
		{`{"kind":"SavedPlan","unknown":1}`, `p.json: not a saved plan: json: unknown field "unknown"`},
		{`not json`, "p.json: not a saved plan"},
		{`{"kind":"SavedPlan","apiVersion":"pgtopo.dev/v1alpha1","plan":{"refusals":[{"reason":"site west unreachable"}]}}`, "p.json: the saved plan is refused: site west unreachable"},
	} {
		if _, err := plan.LoadSaved("p.json", strings.NewReader(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.doc, err, tc.want)
		}
	}
}
