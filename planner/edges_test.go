package planner

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/render"

	"github.com/pgtopo/pgtopo/snapshot"
)

// inSync is the in-sync fixture: primary east, standby west streaming.
func inSync(t *testing.T) (func(*snapshot.Snapshot) plan.Plan, *snapshot.Snapshot) {
	t.Helper()
	d := loadDesired(t, "testdata/two-sites.yaml")
	snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
	return func(s *snapshot.Snapshot) plan.Plan { return Compute(d, s, plan.Options{}) }, snap
}

func TestPlannerEdges(t *testing.T) {
	cases := []struct {
		name     string
		edit     func(s *snapshot.Snapshot)
		refusals []string // each in one refusal, and no more refusals
		notes    []string
		actions  []plan.Action
	}{
		{name: "in sync"},
		{name: "a site whose operator cannot take clusterReplication", edit: func(s *snapshot.Snapshot) {
			s.Sites[1].Unsupported = "this cluster's operator does not support cross-cluster replication"
		}, refusals: []string{"site west: this cluster's operator does not support cross-cluster replication"}},
		{name: "another major version live", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").Object.Spec.Version = "14" },
			refusals: []string{"orders-west runs PostgreSQL 14 but the file says 15: major upgrades are not something pgtopo does"}},
		{name: "no version on the CR is no refusal", edit: func(s *snapshot.Snapshot) { cs(s, "orders-east").Object.Spec.Version = "" },
			actions: []plan.Action{plan.ActionLock, plan.ActionUpdate}},
		{name: "a standby not streaming", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").PG.WalReceiver.Status = "waiting" },
			notes: []string{"orders-west is not streaming (wal receiver: waiting from 127.100.10.1:31388)"}},
		{name: "a standby without a receiver", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").PG.WalReceiver = nil },
			notes: []string{"orders-west is not streaming (wal receiver: none)"}},
		{name: "a standby that cannot be read", edit: func(s *snapshot.Snapshot) {
			w := cs(s, "orders-west")
			w.PG, w.PGError = nil, "connection refused"
		}, notes: []string{"cannot read orders-west's database: connection refused"}},
		{name: "a standby CR edited by hand", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").Object.Spec.Instances = 3 },
			actions: []plan.Action{plan.ActionLock, plan.ActionUpdate}},
		{name: "a hand-edited journal", edit: func(s *snapshot.Snapshot) {
			cs(s, "orders-west").Object.MarksError = "annotation pgtopo.dev/switchover: invalid character"
		},
			refusals: []string{"orders-west: annotation pgtopo.dev/switchover: invalid character; fix or remove the annotation by hand"}},
		{name: "a cluster that cannot be observed", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").Error = "read CR: timeout" },
			refusals: []string{"cannot observe orders-west: read CR: timeout"}},
		{name: "nothing writable, the primary a standby", edit: func(s *snapshot.Snapshot) {
			e := cs(s, "orders-east")
			e.PG.InRecovery, e.Object.Spec.Replication.IsReplica = true, true
		}, refusals: []string{"no cluster is writable: orders-east is a standby (isReplica true) and no pgtopo journal explains it"}},
		{name: "nothing writable, the primary gone", edit: func(s *snapshot.Snapshot) {
			e := cs(s, "orders-east")
			e.Exists, e.Object, e.PG = false, nil, nil
		}, refusals: []string{"no cluster is writable and orders-east, the primary in the file, does not exist, while other clusters do"}},
		{name: "the primary's credentials fail", edit: func(s *snapshot.Snapshot) {
			e := cs(s, "orders-east")
			e.PG, e.PGError, e.AuthFailed = nil, "password authentication failed", true
		}, refusals: []string{"credentials Secret postgres.orders-east.credentials.postgresql.acid.zalan.do (east/db) fails to authenticate to orders-east"}},
		// The primary's password was rotated and its role replicated: the
		// standby's own Secret is refreshed from the primary's.
		{name: "a standby's credentials fail where the primary's authenticate", edit: func(s *snapshot.Snapshot) {
			w := cs(s, "orders-west")
			w.PG, w.PGError, w.AuthFailed = nil, "password authentication failed", true
		}, actions: []plan.Action{plan.ActionLock, plan.ActionRefreshCredentials},
			notes: []string{"cannot read orders-west's database: password authentication failed"}},
		// With no primary that authenticates, there is nothing to copy.
		{name: "a standby's credentials fail and the primary's too", edit: func(s *snapshot.Snapshot) {
			w := cs(s, "orders-west")
			w.PG, w.PGError, w.AuthFailed = nil, "password authentication failed", true
			e := cs(s, "orders-east")
			e.PG, e.PGError, e.AuthFailed = nil, "password authentication failed", true
		}, refusals: []string{"credentials Secret postgres.orders-east.credentials.postgresql.acid.zalan.do (east/db) fails to authenticate to orders-east"},
			notes: []string{"credentials Secret postgres.orders-west.credentials.postgresql.acid.zalan.do (west/db) fails to authenticate to orders-west: fix the Secret's password (or the role's); pgtopo copies it to no standby meanwhile"}},
		{name: "a standby's credentials Secret unread (observer) fails: nothing copied", edit: func(s *snapshot.Snapshot) {
			w := cs(s, "orders-west")
			w.PG, w.PGError, w.AuthFailed = nil, "password authentication failed", true
			w.Credentials.Unread, w.Credentials.Exists = true, false
		}, notes: []string{"credentials Secret postgres.orders-west.credentials.postgresql.acid.zalan.do (west/db) fails to authenticate to orders-west: fix the Secret's password (or the role's); pgtopo copies it to no standby meanwhile",
			"cannot read orders-west's database: password authentication failed"}},
		{name: "a parameter set by hand on a standby is left, with a note", edit: func(s *snapshot.Snapshot) {
			setParameter(cs(s, "orders-west"), "work_mem", "64MB", true)
		}, notes: []string{"postgresql.parameters set outside pgtopo (work_mem): left alone; declare them in spec.postgres.parameters for pgtopo to manage them"}},
		{name: "a parameter pgtopo set that the file no longer declares is removed", edit: func(s *snapshot.Snapshot) {
			setParameter(cs(s, "orders-west"), "work_mem", "64MB", false)
		}, actions: []plan.Action{plan.ActionLock, plan.ActionUpdate}},
		{name: "the primary coming up", edit: func(s *snapshot.Snapshot) {
			e := cs(s, "orders-east")
			e.PG, e.PGError, e.Object.Status = nil, "connection refused", "Creating"
		}, actions: []plan.Action{plan.ActionLock, plan.ActionEnsurePrimary}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			planOf, snap := inSync(t)
			if tc.edit != nil {
				tc.edit(snap)
			}
			p := planOf(snap)
			if len(p.Refusals) != len(tc.refusals) {
				t.Fatalf("refusals %+v, want %q", p.Refusals, tc.refusals)
			}
			for i, want := range tc.refusals {
				if !strings.Contains(p.Refusals[i].Reason, want) {
					t.Errorf("refusal %q, want %q", p.Refusals[i].Reason, want)
				}
			}
			var notes []string
			for _, n := range p.Notes {
				notes = append(notes, n.Message)
			}
			if !slices.Equal(notes, tc.notes) {
				t.Errorf("notes %q, want %q", notes, tc.notes)
			}
			var actions []plan.Action
			for _, s := range p.Steps {
				actions = append(actions, s.Action)
			}
			if !slices.Equal(actions, tc.actions) {
				t.Errorf("actions %v, want %v", actions, tc.actions)
			}
		})
	}
}

// A primary coming back (its CR there) is waited for until it takes
// writes, not until every member is ready; a new one is created and waited
// for until it is ready too.
func TestEnsurePrimaryOfAnExistingClusterWaitsForWrites(t *testing.T) {
	planOf, snap := inSync(t)
	e := cs(snap, "orders-east")
	e.PG, e.PGError, e.Object.Status = nil, "connection refused", "Creating"
	p := planOf(snap)
	i := slices.IndexFunc(p.Steps, func(s plan.Step) bool { return s.Action == plan.ActionEnsurePrimary })
	if i < 0 {
		t.Fatalf("no ensure-primary step: %+v", p.Steps)
	}
	if ep := p.Steps[i].Payload.(*plan.EnsurePrimary); !ep.Existing {
		t.Errorf("ensure-primary of an existing CR: Existing false, want true (%s)", p.Steps[i].Reason)
	}
	if want := "wait until orders-east takes writes"; !strings.Contains(p.Steps[i].Reason, want) {
		t.Errorf("reason %q, want %q", p.Steps[i].Reason, want)
	}
}

// A switchover whose target does not exist is refused once: the rest of
// the preflight cannot be judged.
func TestSwitchoverToAnAbsentTarget(t *testing.T) {
	d := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/primary-changed/snapshot.json", d)
	w := cs(snap, "orders-west")
	w.Exists, w.Object, w.PG = false, nil, nil
	p := Compute(d, snap, plan.Options{})
	if len(p.Refusals) != 1 || p.Refusals[0].Reason != "switchover to orders-west refused: orders-west does not exist" {
		t.Fatalf("refusals %+v", p.Refusals)
	}
	snap = loadSnapshot(t, "testdata/primary-changed/snapshot.json", d)
	cs(snap, "orders-west").PG = nil
	if p := Compute(d, snap, plan.Options{}); len(p.Refusals) != 1 || !strings.Contains(p.Refusals[0].Reason, "cannot read orders-west's database") {
		t.Fatalf("refusals %+v", p.Refusals)
	}
}

func TestSinceASiteGone(t *testing.T) {
	_, snap := inSync(t)
	was := plan.BasisOf(snap)
	now := was
	now.Sites = now.Sites[1:]
	if got := was.Since(now); len(got) != 1 || got[0] != "site east: reachable true → false" {
		t.Fatalf("%q", got)
	}
	// The first site coming back says so.
	down := was
	down.Sites = slices.Clone(was.Sites)
	down.Sites[0].Reachable = false
	if got := down.Since(was); len(got) != 1 || got[0] != "site east: reachable false → true" {
		t.Fatalf("%q", got)
	}
	now = was
	now.Clusters = now.Clusters[:1]
	if got := was.Since(now); len(got) != 1 || got[0] != "orders-west: no longer observed" {
		t.Fatalf("%q", got)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestPullRequestHeadlinesAndErrors(t *testing.T) {
	head := strings.Repeat("a", 40)
	cases := []struct {
		intents []plan.Intent
		want    string
	}{
		{nil, "merging aaaaaaaaaaaa changes nothing in topology.yaml"},
		{[]plan.Intent{{Kind: plan.IntentChange, Text: "x"}, {Kind: plan.IntentNewCluster, Text: "y"}}, "merging aaaaaaaaaaaa: 2 change(s) to topology.yaml"},
		{[]plan.Intent{{Kind: plan.IntentChange, Text: "x"}, {Kind: plan.IntentSwitchover, Text: "switchover: primary a → b"}}, "merging aaaaaaaaaaaa: switchover: primary a → b"},
		{[]plan.Intent{{Kind: plan.IntentNewTopology, Text: "new topology orders"}}, "merging aaaaaaaaaaaa: new topology orders"},
	}
	for _, tc := range cases {
		pr := &render.PullRequest{Head: head, Path: "topology.yaml", Intents: tc.intents}
		if got := pr.Headline(); got != tc.want {
			t.Errorf("headline %q, want %q", got, tc.want)
		}
		var b bytes.Buffer
		if err := pr.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		if has := strings.Contains(b.String(), "What merging does:"); has != (len(tc.intents) > 0) {
			t.Errorf("%q: says what merging does: %v", b.String(), has)
		}
		if err := pr.WriteText(failingWriter{}); err == nil {
			t.Error("text: a failed write is no error")
		}
		if err := pr.WriteMarkdown(failingWriter{}); err == nil {
			t.Error("markdown: a failed write is no error")
		}
	}
}

// A standby that stays a standby but follows another primary says so.
func TestDescribeStandbyFollowsTheNewPrimary(t *testing.T) {
	three := strings.NewReplacer(
		"    - {name: west, context: lab-west}\n", "    - {name: west, context: lab-west}\n    - {name: south, context: lab-south}\n",
		"  primary: orders-east", "    - {name: orders-south, site: south, namespace: db, volume: {size: 1Gi}, instances: 1}\n  primary: orders-east",
	).Replace(baseTopology)
	moved := strings.Replace(three, "primary: orders-east", "primary: orders-west", 1)
	var texts []string
	for _, in := range Describe(desiredFrom(t, three), desiredFrom(t, moved)) {
		texts = append(texts, in.Text)
	}
	if !slices.Contains(texts, "orders-south: streams from orders-east → orders-west") {
		t.Fatalf("intents %q", texts)
	}
	for _, txt := range texts {
		if strings.HasPrefix(txt, "orders-east: streams from") || strings.HasPrefix(txt, "orders-west: streams from") {
			t.Fatalf("a cluster changing role is described as a standby: %q", txt)
		}
	}
}

// Going back to the old file while a switchover is unfinished backs it out
// when the target was not promoted, and is refused once it was.
func TestGoingBackDuringASwitchover(t *testing.T) {
	east := loadDesired(t, "testdata/two-sites.yaml")
	for _, tc := range []struct {
		phase, want string
		abort       bool
	}{
		{snapshot.PhaseDemoting, "back out switchover orders-east → orders-west (phase demoting, the target not promoted): the file names orders-east as primary again", true},
		{snapshot.PhaseGated, "back out switchover orders-east → orders-west (phase gated", true},
		{snapshot.PhaseAborting, "finish backing out switchover orders-east → orders-west", true},
		{snapshot.PhasePromoted, "past the point of no return: orders-west was told to become primary", false},
	} {
		t.Run(tc.phase, func(t *testing.T) {
			snap := loadSnapshot(t, "testdata/resume-journal/snapshot.json", east)
			for _, c := range []string{"orders-east", "orders-west"} {
				cs(snap, c).Object.Marks.Journal.Phase = tc.phase
			}
			p := Compute(east, snap, plan.Options{})
			if !tc.abort {
				if len(p.Refusals) != 1 || !strings.Contains(p.Refusals[0].Reason, tc.want) {
					t.Fatalf("refusals %+v", p.Refusals)
				}
				return
			}
			i := slices.IndexFunc(p.Steps, func(s plan.Step) bool { return s.Action == plan.ActionSwitchover })
			if p.Refused() || i < 0 {
				t.Fatalf("plan %+v", p)
			}
			s := p.Steps[i]
			if pay[*plan.Switchover](s).Resume != snapshot.PhaseAborting || !strings.Contains(s.Reason, tc.want) || s.Subject.Cluster != "orders-east" {
				t.Fatalf("step %+v", s)
			}
			if pay[*plan.Switchover](s).Restore.Replication.IsReplica || pay[*plan.Switchover](s).Restore.Instances != 2 {
				t.Fatalf("restore spec %+v", pay[*plan.Switchover](s).Restore)
			}
			if p.Headline() != "topology orders: primary orders-east" && !strings.Contains(p.Headline(), "orders-east") {
				t.Fatalf("headline %q", p.Headline())
			}
		})
	}
	// The file that started it resumes it, whatever its budget says.
	west := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/resume-journal/snapshot.json", west)
	p := Compute(west, snap, plan.Options{})
	if i := slices.IndexFunc(p.Steps, func(s plan.Step) bool { return s.Action == plan.ActionSwitchover }); i < 0 || pay[*plan.Switchover](p.Steps[i]).Resume != snapshot.PhaseGated || pay[*plan.Switchover](p.Steps[i]).MaxWritePauseSeconds != 30 {
		t.Fatalf("plan %+v", p.Steps)
	}
}

// Whatever a plan carries from the file, a CR or a server is printed with
// its control characters escaped, in text and markdown alike.
func TestRenderersEscapeValues(t *testing.T) {
	p := plan.Plan{Topology: "orders", Steps: []plan.Step{{Action: plan.ActionUpdate, Subject: plan.Subject{Site: "east", Namespace: "db", Cluster: "orders-east"},
		Reason:  "x\n::error file=a::INJECTED",
		Changes: []plan.Change{{Field: "postgresql.parameters.work_mem", Before: "4MB\narchive_command = 'x'", After: "8MB"}}}},
		Refusals: []plan.Refusal{}, Notes: []plan.Note{{Message: "note\r\nforged"}}}
	for name, render := range map[string]func(*bytes.Buffer) error{
		"text":     func(b *bytes.Buffer) error { return render.Text(b, &p) },
		"markdown": func(b *bytes.Buffer) error { return render.Markdown(b, &p) },
		"pr": func(b *bytes.Buffer) error {
			return (&render.PullRequest{Head: "h", Path: "t.yaml\n::x", Plan: &p}).WriteText(b)
		},
	} {
		var b bytes.Buffer
		if err := render(&b); err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(b.String(), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "::") || strings.HasPrefix(line, "archive_command") || strings.HasPrefix(line, "forged") || strings.Contains(line, "\r") {
				t.Fatalf("%s: a value made a line of its own: %q\n%s", name, line, b.String())
			}
		}
		if !strings.Contains(b.String(), `x\n::error file=a::INJECTED`) {
			t.Fatalf("%s: the reason is not shown escaped:\n%s", name, b.String())
		}
	}
}

func setParameter(c *snapshot.ClusterState, key, value string, foreign bool) {
	if c.Object.Spec.Parameters == nil {
		c.Object.Spec.Parameters = map[string]string{}
	}
	c.Object.Spec.Parameters[key] = value
	if foreign {
		c.Object.ForeignParameters = append(c.Object.ForeignParameters, key)
	}
}

// Parameters are pgtopo's by key: the ones it set follow the file (a key
// the file drops is removed), the ones someone else set are left unless the
// file declares the same key.
func TestParametersByOwner(t *testing.T) {
	want := snapshot.Spec{Instances: 1, Parameters: map[string]string{"max_slot_wal_keep_size": "10GB"}}
	live := func(foreign []string, params map[string]string) *snapshot.Object {
		return &snapshot.Object{Spec: snapshot.Spec{Instances: 1, Parameters: params}, ForeignParameters: foreign}
	}
	declaring := want
	declaring.Parameters = map[string]string{"max_slot_wal_keep_size": "10GB", "work_mem": "128MB"}
	cases := []struct {
		name string
		live *snapshot.Object
		want snapshot.Spec
		out  []plan.Change
	}{
		{"the same", live(nil, map[string]string{"max_slot_wal_keep_size": "10GB"}), want, nil},
		{"someone else's key, not declared", live([]string{"work_mem"}, map[string]string{"max_slot_wal_keep_size": "10GB", "work_mem": "64MB"}), want, nil},
		{"pgtopo's key, dropped from the file", live(nil, map[string]string{"max_slot_wal_keep_size": "10GB", "work_mem": "64MB"}), want,
			[]plan.Change{{Field: "postgresql.parameters.work_mem", Before: "64MB", After: ""}}},
		{"someone else's key, declared with another value", live([]string{"work_mem"}, map[string]string{"max_slot_wal_keep_size": "10GB", "work_mem": "64MB"}), declaring,
			[]plan.Change{{Field: "postgresql.parameters.work_mem", Before: "64MB", After: "128MB"}}},
		{"someone else's key, declared with its value", live([]string{"work_mem"}, map[string]string{"max_slot_wal_keep_size": "10GB", "work_mem": "128MB"}), declaring, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []plan.Change
			for _, c := range specChanges(tc.live, tc.want, "") {
				if strings.HasPrefix(c.Field, "postgresql.parameters.") {
					got = append(got, c)
				}
			}
			if !slices.Equal(got, tc.out) {
				t.Errorf("parameter changes %+v, want %+v", got, tc.out)
			}
			if len(tc.out) == 0 && len(specChanges(tc.live, tc.want, "")) > 0 {
				t.Errorf("changes %+v, want none", specChanges(tc.live, tc.want, ""))
			}
		})
	}
}

// What pgtopo could not read it does not plan from: a site-wide read that
// was denied (the Lease, the list of orphans) refuses the plan, naming it.
func TestADeniedReadRefuses(t *testing.T) {
	d := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
	snap.Sites[1].ReadErrors = []string{`context lab-west: get Lease db/pgtopo-orders: leases "pgtopo-orders" is forbidden: User "reader" cannot get resource "leases"`}
	p := Compute(d, snap, plan.Options{})
	if !p.Refused() || len(p.Steps) != 0 {
		t.Fatalf("want a refusal and no steps: %+v %+v", p.Steps, p.Refusals)
	}
	want := `site west: cannot read what the plan depends on, so nothing is planned from it: context lab-west: get Lease db/pgtopo-orders: leases "pgtopo-orders" is forbidden`
	if !strings.Contains(p.Refusals[0].Reason, want) {
		t.Fatalf("refusal %q lacks %q", p.Refusals[0].Reason, want)
	}
}

// A switchover to a target its operator does not report ready says so: it
// will wait for it before the fence.
func TestSwitchoverToATargetNotReadySaysItWaits(t *testing.T) {
	d := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/primary-changed/snapshot.json", d)
	w := cs(snap, "orders-west")
	w.Object.Ready, w.Object.Status = false, "Creating"
	p := Compute(d, snap, plan.Options{})
	if p.Refused() || !slices.ContainsFunc(p.Steps, func(s plan.Step) bool { return s.Action == plan.ActionSwitchover }) {
		t.Fatalf("want the switchover planned: %+v %+v", p.Steps, p.Refusals)
	}
	want := "orders-west's operator reports it Creating, not ready: the switchover waits until it does (up to the step timeout) before it fences orders-east"
	if !slices.ContainsFunc(p.Notes, func(n plan.Note) bool { return n.Message == want+", and refuses if it never does" }) {
		t.Fatalf("notes %+v lack %q", p.Notes, want)
	}
}

// A switchover from a primary its operator does not report ready (an
// instance it builds will take a base backup from it) says it waits.
func TestSwitchoverFromAPrimaryNotReadySaysItWaits(t *testing.T) {
	d := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/primary-changed/snapshot.json", d)
	e := cs(snap, "orders-east")
	e.Object.Ready, e.Object.Status = false, "Creating"
	p := Compute(d, snap, plan.Options{})
	if p.Refused() || !slices.ContainsFunc(p.Steps, func(s plan.Step) bool { return s.Action == plan.ActionSwitchover }) {
		t.Fatalf("want the switchover planned: %+v %+v", p.Steps, p.Refusals)
	}
	want := "orders-east's operator reports it Creating, not ready: an instance it builds would take a base backup from it, so the switchover waits up to 20s"
	if !slices.ContainsFunc(p.Notes, func(n plan.Note) bool { return strings.HasPrefix(n.Message, want) }) {
		t.Fatalf("notes %+v lack %q", p.Notes, want)
	}
}
