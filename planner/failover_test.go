package planner

import (
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/render"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// lostEast is the in-sync fixture with east's site lost: its cluster
// unobserved, west's receiver gone.
func lostEast(t *testing.T) (*topology.Desired, *snapshot.Snapshot) {
	t.Helper()
	d := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
	site, _ := snap.Site("east")
	site.Reachable, site.Error, site.NodeIPs = false, "site east (context lab-east) unreachable: connection refused", nil
	*cs(snap, "orders-east") = snapshot.ClusterState{Name: "orders-east", Site: "east", Namespace: "db"}
	w := cs(snap, "orders-west")
	w.PG.WalReceiver, w.PG.LastReplayedCommit = nil, "2026-12-02T12:03:11.000Z"
	return d, snap
}

func consentFor(snap *snapshot.Snapshot) *topology.Consent {
	w := cs(snap, "orders-west")
	return &topology.Consent{Cluster: "orders-east", SystemIdentifier: w.PG.SystemID, Timeline: w.PG.Timeline}
}

// Consent is the failover's gate: each case that does not consent, or
// consents to another failover, is refused and plans no step.
func TestFailoverConsent(t *testing.T) {
	cases := []struct {
		name    string
		edit    func(d *topology.Desired, s *snapshot.Snapshot, o *plan.Options)
		refusal string // "" plans the failover
	}{
		{name: "no consent", refusal: "failover to orders-west needs consent to lose orders-east's writes"},
		{name: "the file consents", edit: func(d *topology.Desired, s *snapshot.Snapshot, _ *plan.Options) { d.AcceptDataLoss = consentFor(s) }},
		{name: "the flag consents", edit: func(_ *topology.Desired, _ *snapshot.Snapshot, o *plan.Options) { o.AcceptDataLoss = "orders-east" }},
		{name: "the flag names another cluster", edit: func(_ *topology.Desired, _ *snapshot.Snapshot, o *plan.Options) { o.AcceptDataLoss = "orders-west" },
			refusal: "--accept-data-loss names orders-west, but the lost primary is orders-east"},
		{name: "consent for another timeline", edit: func(d *topology.Desired, s *snapshot.Snapshot, _ *plan.Options) {
			d.AcceptDataLoss = consentFor(s)
			d.AcceptDataLoss.Timeline++
		}, refusal: "spec.acceptDataLoss does not consent to this failover: timeline 2, but orders-west last streamed orders-east's timeline 1"},
		{name: "consent for another system", edit: func(d *topology.Desired, s *snapshot.Snapshot, _ *plan.Options) {
			d.AcceptDataLoss = consentFor(s)
			d.AcceptDataLoss.SystemIdentifier = "1"
		}, refusal: "system identifier 1, but orders-west's is"},
		{name: "consent naming another cluster", edit: func(d *topology.Desired, s *snapshot.Snapshot, _ *plan.Options) {
			d.AcceptDataLoss = consentFor(s)
			d.AcceptDataLoss.Cluster = "orders-west"
		}, refusal: "it names orders-west, but the lost primary is orders-east"},
		{name: "spent consent", edit: func(d *topology.Desired, s *snapshot.Snapshot, _ *plan.Options) {
			d.AcceptDataLoss = consentFor(s)
			c := consentFor(s)
			cs(s, "orders-west").Object.Marks.Failover = &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west",
				Phase: snapshot.FailoverDone, SystemID: c.SystemIdentifier, FromTimeline: c.Timeline, At: "2026-12-01T00:00:00Z"}
		}, refusal: "spec.acceptDataLoss is spent: failover orders-east → orders-west (epoch 1)"},
		{name: "the lost site answers", edit: func(_ *topology.Desired, s *snapshot.Snapshot, o *plan.Options) {
			o.AcceptDataLoss = "orders-east"
			site, _ := s.Site("east")
			site.Reachable = true
		}, refusal: "no cluster is writable: orders-west is a standby"},
		{name: "a reachable primary", edit: func(_ *topology.Desired, s *snapshot.Snapshot, o *plan.Options) {
			o.AcceptDataLoss = "orders-east"
			w := cs(s, "orders-west")
			w.PG.InRecovery = false
		}, refusal: "site east unreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, snap := lostEast(t)
			var opt plan.Options
			if tc.edit != nil {
				tc.edit(d, snap, &opt)
			}
			p := Compute(d, snap, opt)
			if tc.refusal == "" {
				if p.Refused() {
					t.Fatalf("refused: %+v", p.Refusals)
				}
				var f *plan.Step
				for i := range p.Steps {
					if p.Steps[i].Action == plan.ActionFailover {
						f = &p.Steps[i]
					}
				}
				if f == nil || pay[*plan.Failover](*f).From.Cluster != "orders-east" || pay[*plan.Failover](*f).SystemID == "" || pay[*plan.Failover](*f).Epoch != 1 {
					t.Fatalf("no failover step: %+v", p.Steps)
				}
				// apply confirms the loss through PostgreSQL at the address
				// the target streamed from.
				if ep := pay[*plan.Failover](*f).FromEndpoint; ep == nil || ep.String() != "127.100.10.1:31388" {
					t.Fatalf("the failover does not carry the lost primary's address: %+v", ep)
				}
				for _, s := range p.Steps {
					if s.Subject.Cluster == "orders-east" || s.Action == plan.ActionLock && len(pay[*plan.Lock](s).Sites) != 1 {
						t.Fatalf("a step touches the lost site: %+v", s)
					}
				}
				return
			}
			if len(p.Steps) != 0 {
				t.Fatalf("a refused plan has steps: %+v", p.Steps)
			}
			var all []string
			for _, r := range p.Refusals {
				all = append(all, r.Reason)
			}
			if !strings.Contains(strings.Join(all, "\n"), tc.refusal) {
				t.Fatalf("refusals %q lack %q", all, tc.refusal)
			}
		})
	}
}

// The plan says in words what a failover loses, whether it runs or not.
func TestFailoverWords(t *testing.T) {
	d, snap := lostEast(t)
	p := Compute(d, snap, plan.Options{})
	var b strings.Builder
	if err := render.Text(&b, &p); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"orders-east (site east) is unreachable: site east (context lab-east) unreachable: connection refused; its last sign of life pgtopo can see: 2026-12-02T12:03:11.000Z (the last commit of it orders-west replayed)",
		"orders-west received orders-east's WAL up to 0/5027AD8 and replayed up to 0/5027AD8",
		"its WAL receiver is not running",
		"writes to orders-east committed after 2026-12-02T12:03:11.000Z",
		"two primaries can exist until then",
		`spec.acceptDataLoss: {cluster: orders-east, systemIdentifier: "7710640626635289495", timeline: 1}`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, b.String())
		}
	}
}

// A lost primary that answers again is fenced and rejoined before any
// other step; a rejoined one, or one back on another timeline, is not
// rewound blindly.
func TestRejoinOnReturn(t *testing.T) {
	returned := func(t *testing.T) (*topology.Desired, *snapshot.Snapshot) {
		d := loadDesired(t, "testdata/two-sites-west.yaml")
		snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
		e, w := cs(snap, "orders-east"), cs(snap, "orders-west")
		w.PG.InRecovery, w.PG.Timeline, w.PG.CurrentLSN = false, 2, w.PG.ReplayLSN+100
		w.Object.Spec.Replication = snapshot.Replication{Enabled: true, ServiceType: "NodePort"}
		w.Object.Marks.Failover = &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west", Phase: snapshot.FailoverDone,
			SystemID: w.PG.SystemID, FromTimeline: 1, ForkLSN: w.PG.ReplayLSN, At: "2026-12-02T12:03:12Z"}
		e.PG.Timeline = 1
		return d, snap
	}
	t.Run("stale primary back on its timeline: rejoin by rewind, first", func(t *testing.T) {
		d, snap := returned(t)
		p := Compute(d, snap, plan.Options{})
		if p.Refused() || len(p.Steps) != 2 || p.Steps[1].Action != plan.ActionRejoin || pay[*plan.Rejoin](p.Steps[1]).Rebuild {
			t.Fatalf("want lock, rejoin (rewind): %+v %+v", p.Steps, p.Refusals)
		}
		if got := pay[*plan.Rejoin](p.Steps[1]).Demoted.Replication; !got.IsReplica || got.PeerHost != "127.100.20.1" {
			t.Fatalf("demoted spec %+v", got)
		}
	})
	t.Run("its database not answering yet: fenced in its object first", func(t *testing.T) {
		d, snap := returned(t)
		e := cs(snap, "orders-east")
		e.PG, e.PGError = nil, "connection refused"
		e.Object.Spec.Parameters = map[string]string{"work_mem": "64MB", "max_slot_wal_keep_size": "10GB"}
		e.Object.ForeignParameters = []string{"work_mem"}
		p := Compute(d, snap, plan.Options{})
		if len(p.Steps) != 2 || p.Steps[1].Action != plan.ActionRejoin {
			t.Fatalf("want lock, rejoin: %+v %+v", p.Steps, p.Refusals)
		}
		fenced := pay[*plan.Rejoin](p.Steps[1]).Fenced
		want := map[string]string{"max_slot_wal_keep_size": "10GB", plan.FenceParameter: "on"}
		if !maps.Equal(fenced.Parameters, want) || fenced.Replication.IsReplica {
			t.Fatalf("fenced spec: parameters %v (want %v, another manager's left to it), replica %v", fenced.Parameters, want, fenced.Replication.IsReplica)
		}
		if _, ok := e.Object.Spec.Parameters[plan.FenceParameter]; ok {
			t.Fatal("the fenced spec shares its parameters with the live object")
		}
		if r := p.Steps[1].Reason; !strings.Contains(r, "its database does not answer yet: fence it first in its object (default_transaction_read_only on)") {
			t.Fatalf("reason %q", r)
		}
	})
	// needsRebuild records what the rejoin that fenced it found.
	needsRebuild := func(snap *snapshot.Snapshot) {
		rec := *cs(snap, "orders-west").Object.Marks.Failover
		rec.Returned = &snapshot.Returned{Rejoin: "rewind", Diverged: 1 << 20, NeedsRebuild: "it is on timeline 2, not 1 where it was lost"}
		cs(snap, "orders-east").Object.Marks.Failover = &rec
	}
	t.Run("back on another timeline: fenced and measured first, never rebuilt in the same step", func(t *testing.T) {
		d, snap := returned(t)
		cs(snap, "orders-east").PG.Timeline = 2
		p := Compute(d, snap, plan.Options{})
		if len(p.Steps) != 2 || pay[*plan.Rejoin](p.Steps[1]).Rebuild || !strings.Contains(p.Steps[1].Reason, "the next plan shows the rebuild as a step of its own") {
			t.Fatalf("want a rejoin that fences and measures, and says a rebuild comes after: %+v", p.Steps)
		}
	})
	t.Run("a recorded need for a rebuild without consent: refused, saying what it deletes", func(t *testing.T) {
		d, snap := returned(t)
		cs(snap, "orders-east").PG.Timeline = 2
		needsRebuild(snap)
		p := Compute(d, snap, plan.Options{})
		if len(p.Steps) != 0 || !p.Refused() {
			t.Fatalf("want a refusal: %+v %+v", p.Steps, p.Refusals)
		}
		for _, want := range []string{"orders-east needs a rebuild (it is on timeline 2, not 1 where it was lost); it stays fenced", "including 1 MiB written after the fork at 0/5027AD8 that orders-west never received", "rebuild: allow on orders-east", "apply --allow-rebuild orders-east"} {
			if !strings.Contains(p.Refusals[0].Reason, want) {
				t.Fatalf("refusal %q lacks %q", p.Refusals[0].Reason, want)
			}
		}
	})
	t.Run("a recorded need for a rebuild with consent: the rebuild as its own step, in words", func(t *testing.T) {
		d, snap := returned(t)
		cs(snap, "orders-east").PG.Timeline = 2
		needsRebuild(snap)
		p := Compute(d, snap, plan.Options{AllowRebuild: []string{"orders-east"}})
		if len(p.Steps) != 2 || !pay[*plan.Rejoin](p.Steps[1]).Rebuild {
			t.Fatalf("want the rebuild step: %+v %+v", p.Steps, p.Refusals)
		}
		r := p.Steps[1].Reason
		for _, want := range []string{"consent: apply --allow-rebuild orders-east", "delete it with its volumes and data, including 1 MiB written after the fork"} {
			if !strings.Contains(r, want) {
				t.Fatalf("reason %q lacks %q", r, want)
			}
		}
		if c := p.Steps[1].Changes; len(c) != 1 || !strings.Contains(c[0].After, "deleted") {
			t.Fatalf("changes %+v", c)
		}
	})
	t.Run("rejoined: left alone", func(t *testing.T) {
		d, snap := returned(t)
		e := cs(snap, "orders-east")
		rec := *cs(snap, "orders-west").Object.Marks.Failover
		rec.Returned = &snapshot.Returned{Done: true, Rejoin: "rewind"}
		e.Object.Marks.Failover = &rec
		p := Compute(d, snap, plan.Options{})
		for _, s := range p.Steps {
			if s.Action == plan.ActionRejoin {
				t.Fatalf("a rejoined cluster rejoins again: %+v", p.Steps)
			}
		}
	})
	t.Run("rejoin policy manual: no rebuild", func(t *testing.T) {
		d, snap := returned(t)
		for i := range d.Clusters {
			d.Clusters[i].Rejoin = topology.RejoinManual
		}
		cs(snap, "orders-east").PG.Timeline = 2
		p := Compute(d, snap, plan.Options{})
		if len(p.Steps) != 2 || pay[*plan.Rejoin](p.Steps[1]).Rebuild || pay[*plan.Rejoin](p.Steps[1]).Policy != topology.RejoinManual {
			t.Fatalf("want a manual rejoin: %+v", p.Steps)
		}
	})
	t.Run("rejoin policy rebuild: fenced and measured, then rebuilt on that consent", func(t *testing.T) {
		d, snap := returned(t)
		for i := range d.Clusters {
			d.Clusters[i].Rejoin = topology.RejoinRebuild
		}
		p := Compute(d, snap, plan.Options{})
		if len(p.Steps) != 2 || pay[*plan.Rejoin](p.Steps[1]).Rebuild {
			t.Fatalf("want the fence first: %+v", p.Steps)
		}
		needsRebuild(snap)
		p = Compute(d, snap, plan.Options{})
		if len(p.Steps) != 2 || !pay[*plan.Rejoin](p.Steps[1]).Rebuild || !strings.Contains(p.Steps[1].Reason, "consent: the file (rejoin: rebuild)") {
			t.Fatalf("want a rebuild: %+v %+v", p.Steps, p.Refusals)
		}
	})
	t.Run("no failover record: split brain refused", func(t *testing.T) {
		d, snap := returned(t)
		cs(snap, "orders-west").Object.Marks.Failover = nil
		p := Compute(d, snap, plan.Options{})
		if !p.Refused() || !strings.Contains(p.Refusals[0].Reason, "split brain") {
			t.Fatalf("want a split-brain refusal: %+v", p.Refusals)
		}
	})
}

// A run killed after the failover was recorded done, before its repoints:
// the next plan repoints the reachable standbys, and says the lost primary
// is still away.
func TestAfterAFailoverDone(t *testing.T) {
	d, snap := threeSitesEastLost(t)
	w := cs(snap, "orders-west")
	w.PG.InRecovery, w.PG.Timeline, w.PG.CurrentLSN = false, 2, w.PG.ReplayLSN
	w.Object.Spec.Replication = snapshot.Replication{Enabled: true, ServiceType: "LoadBalancer"}
	w.Object.Marks.Failover = &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west", Phase: snapshot.FailoverDone,
		SystemID: w.PG.SystemID, FromTimeline: 1, At: "2026-12-02T12:03:12Z"}
	p := Compute(d, snap, plan.Options{})
	if p.Refused() {
		t.Fatalf("refused: %+v", p.Refusals)
	}
	var notes []string
	for _, n := range p.Notes {
		notes = append(notes, n.Message)
	}
	if !strings.Contains(strings.Join(notes, "\n"), "orders-east (site east) is still unreachable since failover epoch 1") {
		t.Fatalf("notes %q", notes)
	}
	repointed := false
	for _, s := range p.Steps {
		if s.Subject.Cluster == "orders-east" {
			t.Fatalf("a step for the lost primary: %+v", s)
		}
		if s.Action == plan.ActionRepoint && s.Subject.Cluster == "orders-south" && pay[*plan.Repoint](s).Spec.Replication.PeerHost == "127.100.20.100" {
			repointed = true
		}
		if s.Action == plan.ActionLock && len(pay[*plan.Lock](s).Sites) != 2 {
			t.Fatalf("the lock takes the lost site's Lease: %+v", pay[*plan.Lock](s).Sites)
		}
	}
	if !repointed {
		t.Fatalf("orders-south not repointed to orders-west: %+v", p.Steps)
	}
}

// A failover whose consent is recorded resumes only toward the primary it
// recorded.
func TestResumeFailoverNeedsItsTarget(t *testing.T) {
	d, snap := lostEast(t)
	w := cs(snap, "orders-west")
	w.Object.Marks.Failover = &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west", Phase: snapshot.FailoverPromoting,
		SystemID: w.PG.SystemID, FromTimeline: 1}
	p := Compute(d, snap, plan.Options{})
	if p.Refused() || len(p.Steps) < 2 || p.Steps[1].Action != plan.ActionFailover || pay[*plan.Failover](p.Steps[1]).Resume != snapshot.FailoverPromoting {
		t.Fatalf("want the failover resumed: %+v %+v", p.Steps, p.Refusals)
	}
	w.Object.Marks.Failover.To = "orders-north"
	p = Compute(d, snap, plan.Options{})
	if !p.Refused() || !strings.Contains(p.Refusals[0].Reason, "is recorded (epoch 1) but the file does not list both") {
		t.Fatalf("want a refusal for a record naming a cluster not in the file: %+v", p.Refusals)
	}
}

// A standby that replayed further than the file's target is recommended.
func TestFailoverRecommendsTheFurthestStandby(t *testing.T) {
	d, snap := threeSitesEastLost(t)
	cs(snap, "orders-south").PG.ReplayLSN = cs(snap, "orders-west").PG.ReplayLSN + 4096
	p := Compute(d, snap, plan.Options{})
	var notes []string
	for _, n := range p.Notes {
		notes = append(notes, n.Message)
	}
	if !strings.Contains(strings.Join(notes, "\n"), "orders-south has replayed further") || !strings.Contains(strings.Join(notes, "\n"), "4 KiB more than orders-west): with primary: orders-south less is lost") {
		t.Fatalf("notes %q", notes)
	}
}

// A returned lost primary without a bootstrap Secret gets one with its
// rejoin; the file's spent consent is a note, not a refusal.
func TestRejoinCopiesTheBootstrapSecretAndNotesSpentConsent(t *testing.T) {
	d := loadDesired(t, "testdata/two-sites-west.yaml")
	snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
	e, w := cs(snap, "orders-east"), cs(snap, "orders-west")
	w.PG.InRecovery, w.PG.Timeline, w.PG.CurrentLSN = false, 2, w.PG.ReplayLSN+100
	w.Object.Spec.Replication = snapshot.Replication{Enabled: true, ServiceType: "NodePort"}
	w.Object.Marks.Failover = &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west", Phase: snapshot.FailoverDone,
		SystemID: w.PG.SystemID, FromTimeline: 1, ForkLSN: w.PG.ReplayLSN, At: "2026-12-02T12:03:12Z"}
	e.BootstrapSecret.Exists = false
	d.AcceptDataLoss = &topology.Consent{Cluster: "orders-east", SystemIdentifier: w.PG.SystemID, Timeline: 1}
	p := Compute(d, snap, plan.Options{})
	if len(p.Steps) != 2 || pay[*plan.Rejoin](p.Steps[1]).Secret == nil || pay[*plan.Rejoin](p.Steps[1]).Secret.FromName != w.Credentials.Name {
		t.Fatalf("want a rejoin that copies west's credentials: %+v", p.Steps)
	}
	if len(p.Notes) == 0 || !strings.Contains(p.Notes[0].Message, "spec.acceptDataLoss is spent") {
		t.Fatalf("notes %+v", p.Notes)
	}
}

// threeSitesEastLost is the three-site fixture (file primary west) with
// east's site lost and its cluster unobserved.
func threeSitesEastLost(t *testing.T) (*topology.Desired, *snapshot.Snapshot) {
	t.Helper()
	d := loadDesired(t, "testdata/three-sites.yaml")
	snap := loadSnapshot(t, "testdata/three-sites-switchover/snapshot.json", d)
	site, _ := snap.Site("east")
	site.Reachable, site.Error = false, "context lab-east: connection refused"
	*cs(snap, "orders-east") = snapshot.ClusterState{Name: "orders-east", Site: "east", Namespace: "db"}
	return d, snap
}

// A promotion writes the role alone when the primary's spec would also add
// instances: the operator need build none inside the write window. The
// whole spec follows once the target takes writes.
func TestPromoteFirstAddsNoInstance(t *testing.T) {
	cases := []struct {
		name      string
		standbyOf int // the target's instances as observed
		want      int // PromoteFirst's instances; 0: none (Promoted at once)
	}{
		{name: "a standby of one instance promoted to two", standbyOf: 1, want: 1},
		{name: "a target scaled already (a resumed promotion)", standbyOf: 2, want: 0},
		{name: "a target running more than the file asks", standbyOf: 3, want: 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, kind := range []string{"switchover", "failover"} {
				var p plan.Plan
				if kind == "switchover" {
					d := loadDesired(t, "testdata/two-sites-west.yaml")
					snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
					cs(snap, "orders-west").Object.Spec.Instances = tc.standbyOf
					p = Compute(d, snap, plan.Options{})
				} else {
					d, snap := lostEast(t)
					cs(snap, "orders-west").Object.Spec.Instances = tc.standbyOf
					p = Compute(d, snap, plan.Options{AcceptDataLoss: "orders-east"})
				}
				var promoted snapshot.Spec
				var first *snapshot.Spec
				for _, s := range p.Steps {
					switch pl := s.Payload.(type) {
					case *plan.Switchover:
						promoted, first = pl.Promoted, pl.PromoteFirst
					case *plan.Failover:
						promoted, first = pl.Promoted, pl.PromoteFirst
					}
				}
				if promoted.Instances != 2 || promoted.Replication.IsReplica {
					t.Fatalf("%s: promoted %+v, want the file's primary of 2 instances (plan %+v)", kind, promoted, p.Steps)
				}
				switch {
				case tc.want == 0 && first != nil:
					t.Fatalf("%s: promotes first with %+v, want Promoted at once", kind, *first)
				case tc.want != 0 && first == nil:
					t.Fatalf("%s: no first promotion, want %d instance(s)", kind, tc.want)
				case tc.want != 0:
					want := promoted
					want.Instances = tc.want
					if !reflect.DeepEqual(*first, want) {
						t.Fatalf("%s: promotes first with %+v, want %+v: the role alone", kind, *first, want)
					}
				}
			}
		})
	}
}
