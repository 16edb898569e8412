package diff

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/snapshot"
)

func fixture(t *testing.T, dir string) (Plan, *snapshot.Snapshot, func(*snapshot.Snapshot) Plan) {
	t.Helper()
	d := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/"+dir+"/snapshot.json", d)
	plan := func(s *snapshot.Snapshot) Plan { return Compute(d, s, Options{}) }
	return plan(snap), snap, plan
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
			was, snap, replan := fixture(t, "primary-changed")
			setVersions(snap)
			wasBasis := BasisOf(snap)
			if again := replan(snap); !Same(was, again) {
				t.Fatal("the same world plans differently")
			}
			tc.edit(snap)
			now := replan(snap)
			why := wasBasis.Since(BasisOf(snap))
			if !slices.ContainsFunc(why, func(w string) bool { return strings.Contains(w, tc.want) }) {
				t.Fatalf("reasons %q, want one with %q", why, tc.want)
			}
			if got := Staleness(was, wasBasis, now, BasisOf(snap)); !slices.Equal(got, why) {
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

func cs(s *snapshot.Snapshot, name string) *snapshot.ClusterState {
	c, _ := s.Cluster(name)
	return c
}

// A plan that changes while nothing its basis records did names the step.
func TestStalenessWithoutABasisChange(t *testing.T) {
	was, snap, _ := fixture(t, "primary-changed")
	b := BasisOf(snap)
	now := was
	now.Steps = slices.Clone(was.Steps)
	sw := *pay[*Switchover](now.Steps[2])
	sw.MaxLagBytes++
	now.Steps[2].Payload = &sw
	if Same(was, now) {
		t.Fatal("a changed payload is the same plan")
	}
	if got := Staleness(was, b, now, b); len(got) != 1 || got[0] != "step 3 switchover orders-west (west/db) changed" {
		t.Fatalf("%q", got)
	}
	if got := Staleness(was, b, Plan{Steps: was.Steps[:2]}, b); got[0] != "step 3 switchover orders-west (west/db) is no longer needed" {
		t.Fatalf("%q", got)
	}
	longer := Plan{Steps: append(slices.Clone(was.Steps), Step{Action: ActionRecord, Subject: Subject{Site: "east", Namespace: "db", Cluster: "orders-east"}})}
	if got := Staleness(was, b, longer, b); got[0] != "a step was added: record orders-east (east/db)" {
		t.Fatalf("%q", got)
	}
	refused := Plan{Steps: was.Steps, Refusals: []Refusal{{Reason: "site west unreachable"}}}
	if got := Staleness(was, b, refused, b); got[0] != "the plan is now refused: site west unreachable" {
		t.Fatalf("%q", got)
	}
	if got := Staleness(was, b, was, b); got[0] != "the plan changed" {
		t.Fatalf("%q", got)
	}
}

// Same ignores reasons and notes but not refusals, digest or revision.
func TestSame(t *testing.T) {
	was, _, _ := fixture(t, "primary-changed")
	reworded := was
	reworded.Steps = slices.Clone(was.Steps)
	reworded.Steps[0].Reason = "other words"
	reworded.Notes = []Note{{Message: "a note"}}
	if !Same(was, reworded) {
		t.Fatal("reasons and notes made plans differ")
	}
	for name, edit := range map[string]func(p *Plan){
		"refusal":  func(p *Plan) { p.Refusals = []Refusal{{Reason: "no"}} },
		"digest":   func(p *Plan) { p.Digest = "x" },
		"revision": func(p *Plan) { p.Revision = "x" },
		"changes":  func(p *Plan) { p.Steps[1].Changes = nil },
	} {
		p := was
		p.Steps = slices.Clone(was.Steps)
		edit(&p)
		if Same(was, p) {
			t.Errorf("%s: plans are the same", name)
		}
	}
}

func TestSavedPlanRoundTrip(t *testing.T) {
	was, snap, _ := fixture(t, "primary-changed")
	var b bytes.Buffer
	src := Source{Name: "west.yaml", Content: "apiVersion: pgtopo.dev/v1alpha1\n"}
	opt := Options{Revision: "abc", History: map[string]History{"def": HistoryForward}}
	if err := Save(&b, was, BasisOf(snap), opt, src); err != nil {
		t.Fatal(err)
	}
	sp, err := LoadSaved("p.json", &b)
	if err != nil {
		t.Fatal(err)
	}
	if !Same(was, sp.Plan) || sp.Source != src || sp.Options.History["def"] != HistoryForward || len(sp.Basis.Since(BasisOf(snap))) != 0 {
		t.Fatalf("round trip lost something: %+v", sp)
	}
	for _, tc := range []struct{ doc, want string }{
		{`{"apiVersion":"pgtopo.dev/v1alpha1","kind":"Plan"}`, `p.json: kind "Plan" apiVersion "pgtopo.dev/v1alpha1": want SavedPlan`},
		{`{"kind":"SavedPlan","apiVersion":"v0"}`, `apiVersion "v0"`},
		{`{"kind":"SavedPlan","unknown":1}`, `p.json: not a saved plan: json: unknown field "unknown"`},
		{`not json`, "p.json: not a saved plan"},
		{`{"kind":"SavedPlan","apiVersion":"pgtopo.dev/v1alpha1","plan":{"refusals":[{"reason":"site west unreachable"}]}}`, "p.json: the saved plan is refused: site west unreachable"},
	} {
		if _, err := LoadSaved("p.json", strings.NewReader(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.doc, err, tc.want)
		}
	}
}

// The catalogue has every action once, with an executor, ranks that order
// the plan and no bucket for bookkeeping steps.
func TestCatalogue(t *testing.T) {
	order := []Action{ActionLock, ActionRejoin, ActionEnsurePrimary, ActionEnsureSlot, ActionCheckpoint, ActionBootstrapSecret, ActionRefreshCredentials, ActionRebuild, ActionCreateStandby,
		ActionSwitchover, ActionFailover, ActionRepoint, ActionUpdate, ActionRestart, ActionFillExternalIP, ActionDeleteCluster, ActionDropSlot, ActionRecord, ActionFence, ActionUnfence}
	if len(Catalogue) != len(order) {
		t.Fatalf("%d actions in the catalogue, want %d", len(Catalogue), len(order))
	}
	for i, a := range order {
		k := Catalogue[a]
		if k.run == nil || k.decode == nil || k.Symbol == "" || k.Metric == "" || k.Rank != i {
			t.Errorf("%s: %+v", a, k)
		}
		// The payload type the catalogue binds is the action's own.
		if p, err := k.decode([]byte("{}")); err != nil || p.payloadOf() != a {
			t.Errorf("%s decodes a payload of %T (%v)", a, p, err)
		}
	}
	if !Catalogue[ActionLock].Recheck || Catalogue[ActionRecord].Recheck {
		t.Error("only the lock re-checks the plan")
	}
	steps := []Step{{Action: ActionRecord, Subject: Subject{Cluster: "b"}}, {Action: ActionRecord, Subject: Subject{Cluster: "a"}}, {Action: ActionSwitchover}, {Action: ActionLock}}
	sortSteps(steps)
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
