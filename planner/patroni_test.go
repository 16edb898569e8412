package planner

import (
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/flavor/owned"
	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

const (
	dc1EP  = "127.100.20.1:5432"
	eastEP = "127.100.10.1:31113"
)

func ep(s string) *snapshot.Endpoint {
	host, port, _ := strings.Cut(s, ":")
	e := &snapshot.Endpoint{Host: host}
	for _, c := range port {
		e.Port = e.Port*10 + int(c-'0')
	}
	return e
}

// mixedInSync is examples/topologies/lab-mixed.yaml applied: orders-dc1,
// Patroni on VMs, primary; orders-east, an operator standby streaming
// from it through the slot dc1 keeps for it.
func mixedInSync(t *testing.T, primary string) (*topology.Desired, *snapshot.Snapshot) {
	t.Helper()
	d := loadDesired(t, "../examples/topologies/lab-mixed.yaml")
	if primary != d.Primary().Name {
		var err error
		if d, err = withPrimary(d, primary); err != nil {
			t.Fatal(err)
		}
	}
	pg := func(recovery bool, from string) *snapshot.PGState {
		p := &snapshot.PGState{InRecovery: recovery, SystemID: "7714958577356056795", Timeline: 1, CurrentLSN: 0x5000000, ReplayLSN: 0x5000000, ServerVersion: 150000,
			HasMultiClusterTable: true, MultiCluster: []snapshot.MultiClusterInfo{{Cluster: "orders-dc1", ExternalIP: "127.100.20.1"}, {Cluster: "orders-east", ExternalIP: "127.100.10.1"}}}
		if recovery {
			e := ep(from)
			p.WalReceiver = &snapshot.WalReceiver{Status: "streaming", SenderHost: e.Host, SenderPort: e.Port, Timeline: 1}
		} else {
			p.Slots = []snapshot.Slot{{Name: "xdc_orders_dc1", RestartLSN: 0x5000000, WALStatus: "reserved"}, {Name: "xdc_orders_east", Active: true, RestartLSN: 0x5000000, WALStatus: "reserved"}}
		}
		return p
	}
	dcStandby := primary != "orders-dc1"
	dc := snapshot.ClusterState{Name: "orders-dc1", Site: "dc1", Namespace: "orders-dc1", Exists: true, SlotName: "xdc_orders_dc1",
		Endpoint: ep(dc1EP), Credentials: snapshot.SecretState{Name: "postgres.orders-dc1.credentials.postgresql.acid.zalan.do", Exists: true, KeyedDigest: "k"},
		Object: &snapshot.Object{Spec: snapshot.Spec{Flavor: snapshot.FlavorPatroni, Replication: snapshot.Replication{Enabled: true}},
			Marks: snapshot.Marks{Digest: d.Digest}, Status: "leader orders-dc1-0 running, 2 members", Ready: true, PermanentSlots: []string{"xdc_orders_east"}},
		PG: pg(dcStandby, eastEP)}
	if dcStandby {
		dc.Object.Spec.Replication = snapshot.Replication{Enabled: true, IsReplica: true, PeerHost: "127.100.10.1", PeerPort: 31113, PrimarySlot: "xdc_orders_dc1"}
	}
	eastSpec := snapshot.Spec{Topology: "orders", Instances: 1, TeamID: "ACID", Version: "15", Parameters: map[string]string{"max_slot_wal_keep_size": "10GB"}, VolumeSize: "1Gi",
		Replication: snapshot.Replication{Enabled: true, IsReplica: true, PeerHost: "127.100.20.1", PeerPort: 5432, ServiceType: "NodePort", BootstrapSecret: "orders-bootstrap"}}
	if !dcStandby {
		// as it was: nothing to change
	} else {
		eastSpec.Instances, eastSpec.Replication = 2, snapshot.Replication{Enabled: true, ServiceType: "NodePort"}
	}
	east := snapshot.ClusterState{Name: "orders-east", Site: "east", Namespace: "db", Exists: true, SlotName: "xdc_orders_east", Endpoint: ep(eastEP),
		Service:         &snapshot.Service{Type: "NodePort", NodePort: 31113},
		Credentials:     snapshot.SecretState{Name: "postgres.orders-east.credentials.postgresql.acid.zalan.do", Exists: true, KeyedDigest: "k"},
		BootstrapSecret: snapshot.SecretState{Name: "orders-bootstrap", Exists: true, KeyedDigest: "k"},
		Object:          &snapshot.Object{Spec: eastSpec, Marks: snapshot.Marks{Digest: d.Digest}, Status: "Running", Ready: true},
		PG:              pg(!dcStandby, dc1EP)}
	if dcStandby {
		east.PG.Slots = []snapshot.Slot{{Name: "xdc_orders_dc1", Active: true, RestartLSN: 0x5000000, WALStatus: "reserved"}}
	}
	return d, &snapshot.Snapshot{Topology: "orders",
		Sites:    []snapshot.SiteState{{Name: "dc1", Reachable: true}, {Name: "east", Context: "lab-east", Reachable: true, NodeIPs: []string{"127.100.10.1"}}},
		Clusters: []snapshot.ClusterState{dc, east}}
}

// withPrimary is d with another primary, as a pull request makes it.
func withPrimary(d *topology.Desired, primary string) (*topology.Desired, error) {
	nd := *d
	nd.Clusters = slices.Clone(d.Clusters)
	for i := range nd.Clusters {
		c := &nd.Clusters[i]
		if c.Name == primary {
			nd.PrimaryIndex = i
			c.Role, c.Instances, c.Peer = topology.RolePrimary, c.DeclaredInstances, ""
		} else {
			c.Role, c.Instances, c.Peer = topology.RoleStandby, min(c.DeclaredInstances, 1), primary
		}
	}
	nd.Digest = d.Digest + "-" + primary
	return &nd, nil
}

// expectPlan checks a plan's actions exactly, each refusal (in order) and
// note by a part of its words; strictNotes: no notes unless some are
// expected (or refusals are).
func expectPlan(t *testing.T, p plan.Plan, actions []plan.Action, refusals, notes []string, strictNotes bool) {
	checkPayloads(t, p)
	t.Helper()
	if !slices.Equal(actionsOf(p), actions) {
		t.Fatalf("actions %v, want %v\nrefusals %+v\nnotes %+v", actionsOf(p), actions, p.Refusals, p.Notes)
	}
	if len(p.Refusals) != len(refusals) {
		t.Fatalf("refusals %+v, want %q", p.Refusals, refusals)
	}
	for i, r := range refusals {
		if !strings.Contains(p.Refusals[i].Reason, r) {
			t.Errorf("refusal %q lacks %q", p.Refusals[i].Reason, r)
		}
	}
	var got []string
	for _, n := range p.Notes {
		got = append(got, n.Message)
	}
	for _, n := range notes {
		if !strings.Contains(strings.Join(got, "\n"), n) {
			t.Errorf("notes %q lack %q", got, n)
		}
	}
	if strictNotes && len(notes) == 0 && len(refusals) == 0 && len(got) > 0 {
		t.Errorf("unexpected notes %q", got)
	}
}

func actionsOf(p plan.Plan) []plan.Action {
	var out []plan.Action
	for _, s := range p.Steps {
		out = append(out, s.Action)
	}
	return out
}

func TestMixedPlans(t *testing.T) {
	cases := []struct {
		name     string
		primary  string
		edit     func(*snapshot.Snapshot)
		actions  []plan.Action
		refusals []string
		notes    []string
		check    func(*testing.T, plan.Plan)
	}{
		{name: "in sync", primary: "orders-dc1"},
		{name: "the standby's slot missing on the Patroni primary", primary: "orders-dc1",
			edit:    func(s *snapshot.Snapshot) { cs(s, "orders-dc1").Object.PermanentSlots = nil },
			actions: []plan.Action{plan.ActionLock, plan.ActionEnsureSlot},
			check: func(t *testing.T, p plan.Plan) {
				e := pay[*plan.EnsureSlot](p.Steps[1])
				if *e != (plan.EnsureSlot{Primary: "orders-dc1", For: "orders-east", Slot: "xdc_orders_east", Via: plan.SlotViaPatroni}) ||
					p.Steps[1].Preconditions[0] != (plan.Precondition{Kind: plan.CondWritable, Cluster: "orders-dc1"}) {
					t.Fatalf("%+v %+v", e, p.Steps[1].Preconditions)
				}
			}},
		{name: "the Patroni primary's own catalogue row missing", primary: "orders-dc1",
			edit: func(s *snapshot.Snapshot) {
				pg := cs(s, "orders-dc1").PG
				pg.MultiCluster = pg.MultiCluster[1:]
			},
			actions: []plan.Action{plan.ActionLock, plan.ActionEnsureSlot},
			check: func(t *testing.T, p plan.Plan) {
				if e := pay[*plan.EnsureSlot](p.Steps[1]); *e != (plan.EnsureSlot{Primary: "orders-dc1", For: "orders-dc1", Slot: "xdc_orders_dc1", Via: plan.SlotViaCatalogue, Host: "127.100.20.1", Port: 5432}) {
					t.Fatalf("%+v", e)
				}
			}},
		{name: "bring-up: the slot before the standby's base backup", primary: "orders-dc1",
			edit: func(s *snapshot.Snapshot) {
				e := cs(s, "orders-east")
				*e = snapshot.ClusterState{Name: e.Name, Site: e.Site, Namespace: e.Namespace, SlotName: e.SlotName, Credentials: snapshot.SecretState{Name: e.Credentials.Name}, BootstrapSecret: snapshot.SecretState{Name: "orders-bootstrap"}}
				dc := cs(s, "orders-dc1")
				dc.Object.PermanentSlots, dc.PG.Slots, dc.PG.MultiCluster = nil, nil, nil
			},
			actions: []plan.Action{plan.ActionLock, plan.ActionEnsureSlot, plan.ActionEnsureSlot, plan.ActionCheckpoint, plan.ActionBootstrapSecret, plan.ActionCreateStandby, plan.ActionRecord}},
		{name: "switchover out of Patroni: the demoted end is a standby_cluster through its slot", primary: "orders-east",
			edit: func(s *snapshot.Snapshot) {
				// the live world of the dc1 file
				_, live := mixedInSync(t, "orders-dc1")
				*s = *live
			},
			actions: []plan.Action{plan.ActionLock, plan.ActionSwitchover, plan.ActionRecord, plan.ActionRecord},
			check: func(t *testing.T, p plan.Plan) {
				sw := pay[*plan.Switchover](p.Steps[1])
				want := snapshot.Spec{Flavor: snapshot.FlavorPatroni, Replication: snapshot.Replication{Enabled: true, IsReplica: true, PeerHost: "127.100.10.1", PeerPort: 31113, PrimarySlot: "xdc_orders_dc1"}}
				if !owned.Patroni.Same(sw.Demoted, want) || sw.Demoted.Flavor != snapshot.FlavorPatroni {
					t.Fatalf("demoted %+v", sw.Demoted)
				}
				if sw.Restore.Flavor != snapshot.FlavorPatroni || sw.Restore.Replication.IsReplica {
					t.Fatalf("restore %+v", sw.Restore)
				}
				if sw.Promoted.Flavor != "" || sw.Promoted.Replication.IsReplica || sw.Promoted.Instances != 2 {
					t.Fatalf("promoted %+v", sw.Promoted)
				}
			}},
		{name: "operator primary: the Patroni standby listed in its catalogue", primary: "orders-east",
			edit: func(s *snapshot.Snapshot) {
				pg := cs(s, "orders-east").PG
				pg.MultiCluster = pg.MultiCluster[1:]
			},
			actions: []plan.Action{plan.ActionLock, plan.ActionEnsureSlot},
			check: func(t *testing.T, p plan.Plan) {
				if e := pay[*plan.EnsureSlot](p.Steps[1]); *e != (plan.EnsureSlot{Primary: "orders-east", For: "orders-dc1", Slot: "xdc_orders_dc1", Via: plan.SlotViaCatalogue, Host: "127.100.20.1", Port: 5432}) {
					t.Fatalf("%+v", e)
				}
			}},
		{name: "a Patroni standby pointed elsewhere is repointed through its slot", primary: "orders-east",
			edit:    func(s *snapshot.Snapshot) { cs(s, "orders-dc1").Object.Spec.Replication.PrimarySlot = "" },
			actions: []plan.Action{plan.ActionLock, plan.ActionRepoint},
			check: func(t *testing.T, p plan.Plan) {
				if s := pay[*plan.Repoint](p.Steps[1]).Spec; s.Replication.PrimarySlot != "xdc_orders_dc1" || !s.Replication.PeerIs(*ep(eastEP)) {
					t.Fatalf("%+v", s)
				}
			}},
		{name: "an absent Patroni standby whose slot is held: what to run", primary: "orders-east",
			edit: func(s *snapshot.Snapshot) {
				dc := cs(s, "orders-dc1")
				dc.Exists, dc.Object, dc.PG = false, nil, nil
			},
			refusals: []string{"orders-dc1 does not exist (no member answers its REST API at 127.100.21.1:8008, 127.100.21.2:8008): pgtopo does not start VMs. Its slot xdc_orders_dc1 on orders-east holds WAL for it; bootstrap it as a standby from birth with the section `pgtopo render patroni-bootstrap orders-dc1` prints"}},
		{name: "an absent Patroni standby: its slot first", primary: "orders-east",
			edit: func(s *snapshot.Snapshot) {
				dc := cs(s, "orders-dc1")
				dc.Exists, dc.Object, dc.PG = false, nil, nil
				pg := cs(s, "orders-east").PG
				pg.MultiCluster = pg.MultiCluster[1:]
			},
			actions: []plan.Action{plan.ActionLock, plan.ActionEnsureSlot},
			notes:   []string{"orders-dc1 does not exist yet", "pgtopo render patroni-bootstrap orders-dc1"}},
		{name: "the pitfall: a standby built without a slot that does not stream", primary: "orders-east",
			edit: func(s *snapshot.Snapshot) {
				dc := cs(s, "orders-dc1")
				dc.PG.WalReceiver = nil
				pg := cs(s, "orders-east").PG
				pg.MultiCluster = pg.MultiCluster[1:]
			},
			refusals: []string{"orders-dc1 is a standby that does not stream from orders-east (wal receiver: none) and no slot on orders-east held WAL for it while it was built: the WAL it needs may be gone, so repointing it could wait forever (the Patroni multi-DC bootstrap pitfall)"}},
		{name: "a Patroni standby of another system", primary: "orders-east",
			edit:     func(s *snapshot.Snapshot) { cs(s, "orders-dc1").PG.SystemID = "1" },
			refusals: []string{"orders-dc1 system identifier 1 differs from primary orders-east (7714958577356056795): its data is not a copy of the primary's"}},
		{name: "a Patroni standby ahead of the primary's timeline", primary: "orders-east",
			edit:     func(s *snapshot.Snapshot) { cs(s, "orders-dc1").PG.Timeline = 2 },
			refusals: []string{"orders-dc1 is on timeline 2, ahead of primary orders-east (timeline 1): it has history the primary lacks, so becoming a standby would need a rewind"}},
		{name: "the Patroni primary does not answer", primary: "orders-dc1",
			edit: func(s *snapshot.Snapshot) {
				dc := cs(s, "orders-dc1")
				dc.Exists, dc.Object, dc.PG = false, nil, nil
			},
			refusals: []string{"no cluster is writable and orders-dc1, the primary in the file, is a Patroni cluster none of whose members answers (REST API at 127.100.21.1:8008, 127.100.21.2:8008): pgtopo does not start VMs"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, snap := mixedInSync(t, tc.primary)
			if tc.edit != nil {
				tc.edit(snap)
			}
			p := Compute(d, snap, plan.Options{})
			expectPlan(t, p, tc.actions, tc.refusals, tc.notes, false)
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

// A pull request that moves the primary between kinds of site says so.
func TestDescribeMigration(t *testing.T) {
	base, _ := mixedInSync(t, "orders-dc1")
	head, _ := mixedInSync(t, "orders-east")
	var got []string
	for _, in := range Describe(base, head) {
		got = append(got, in.Text)
	}
	want := "switchover: primary orders-dc1 → orders-east: moves primary from dc1 (Patroni) to east (Kubernetes)"
	if !slices.Contains(got, want) {
		t.Fatalf("intents %q lack %q", got, want)
	}
	got = got[:0]
	for _, in := range Describe(head, base) {
		got = append(got, in.Text)
	}
	if want := "switchover: primary orders-east → orders-dc1: moves primary from east (Kubernetes) to dc1 (Patroni)"; !slices.Contains(got, want) {
		t.Fatalf("intents %q lack %q", got, want)
	}
}

// Edges of the Patroni plans: a standby repointed only while the primary
// is writable; a primary without an endpoint leaves the peer as it is; a
// catalogue row for a cluster not observed takes the file's endpoint.
func TestMixedEdges(t *testing.T) {
	d, snap := mixedInSync(t, "orders-east")
	cs(snap, "orders-dc1").Object.Spec.Replication.PrimarySlot = ""
	p := Compute(d, snap, plan.Options{})
	if len(p.Steps) != 2 || !slices.Contains(p.Steps[1].Preconditions, plan.Precondition{Kind: plan.CondWritable, Cluster: "orders-east"}) {
		t.Fatalf("repoint without the primary's writability as a precondition: %+v", p.Steps)
	}
	d, snap = mixedInSync(t, "orders-east")
	cs(snap, "orders-east").Endpoint = nil
	cs(snap, "orders-dc1").Object.Spec.Replication.PrimarySlot = ""
	p = Compute(d, snap, plan.Options{})
	for _, s := range p.Steps {
		if s.Action == plan.ActionRepoint && !pay[*plan.Repoint](s).Spec.Replication.PeerIs(*ep(eastEP)) {
			t.Fatalf("without the primary's endpoint the peer must stay %s: %+v", eastEP, pay[*plan.Repoint](s).Spec.Replication)
		}
	}
	d, snap = mixedInSync(t, "orders-east")
	dc := cs(snap, "orders-dc1")
	dc.Exists, dc.Object, dc.PG, dc.Endpoint = false, nil, nil, nil
	pg := cs(snap, "orders-east").PG
	pg.MultiCluster = pg.MultiCluster[1:]
	p = Compute(d, snap, plan.Options{})
	if len(p.Steps) != 2 || pay[*plan.EnsureSlot](p.Steps[1]).Host != "127.100.20.1" || pay[*plan.EnsureSlot](p.Steps[1]).Port != 5432 {
		t.Fatalf("the row of an unobserved Patroni cluster takes the file's endpoint: %+v", p.Steps)
	}
}

// A Patroni cluster lost in a failover and back is fenced and rejoined
// through its flavor: no Kubernetes Secret, and never a rebuild pgtopo
// cannot do; back on a timeline of its own it is held fenced, and the plan
// says what a DBA does.
func TestPatroniRejoin(t *testing.T) {
	returned := func(t *testing.T, timeline int, needsRebuild string) plan.Plan {
		d, snap := mixedInSync(t, "orders-east")
		dc, east := cs(snap, "orders-dc1"), cs(snap, "orders-east")
		// dc1 back from its site's loss: a primary again, east took over.
		dc.Object.Spec.Replication = snapshot.Replication{Enabled: true}
		dc.PG = &snapshot.PGState{SystemID: east.PG.SystemID, Timeline: timeline, CurrentLSN: 0x5100000, ServerVersion: 150000}
		east.PG.InRecovery, east.PG.WalReceiver, east.PG.Timeline = false, nil, 2
		rec := snapshot.FailoverRecord{Epoch: 1, From: "orders-dc1", To: "orders-east", Phase: snapshot.FailoverDone, SystemID: east.PG.SystemID, FromTimeline: 1, ForkLSN: 0x5000000}
		east.Object.Marks.Failover = &rec
		if needsRebuild != "" {
			own := rec
			own.Returned = &snapshot.Returned{Rejoin: "rewind", Diverged: 1 << 20, NeedsRebuild: needsRebuild}
			dc.Object.Marks.Failover = &own
		}
		return Compute(d, snap, plan.Options{AllowRebuild: []string{"orders-dc1"}})
	}
	p := returned(t, 1, "")
	if len(p.Steps) != 2 || p.Steps[1].Action != plan.ActionRejoin {
		t.Fatalf("want lock, rejoin: %+v %+v", p.Steps, p.Refusals)
	}
	rj := pay[*plan.Rejoin](p.Steps[1])
	if rj.Secret != nil || rj.Rebuild || rj.Demoted.Flavor != snapshot.FlavorPatroni || !rj.Demoted.Replication.IsReplica {
		t.Fatalf("rejoin payload %+v", rj)
	}
	if !strings.Contains(p.Steps[1].Reason, "it rejoins by Patroni's pg_rewind; if it needs a rebuild it is held fenced for a rebuild by hand") {
		t.Fatalf("reason %q", p.Steps[1].Reason)
	}
	// Its rejoin recorded that it needs a rebuild: refused with the way
	// back by hand, never a rebuild step, whatever the consent.
	p = returned(t, 2, "it is on timeline 2, not 1 where it was lost")
	if len(p.Steps) != 0 || !p.Refused() {
		t.Fatalf("want a refusal, no step: %+v %+v", p.Steps, p.Refusals)
	}
	for _, want := range []string{"held fenced, not demoted", "pgtopo does not rebuild a Patroni cluster", "pgtopo render patroni-bootstrap orders-dc1", "1 MiB written after the fork"} {
		if !strings.Contains(p.Refusals[0].Reason, want) {
			t.Fatalf("refusal %q lacks %q", p.Refusals[0].Reason, want)
		}
	}
}
