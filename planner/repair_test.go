package planner

import (
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// named gives the in-sync fixture's clusters their slot and member slot
// names, as the observer does.
func named(s *snapshot.Snapshot) {
	cs(s, "orders-east").SlotName, cs(s, "orders-west").SlotName = "xdc_orders_east", "xdc_orders_west"
	cs(s, "orders-east").Object.MemberSlots = []string{"orders_east_0", "orders_east_1"}
}

func TestRepairPlans(t *testing.T) {
	lostSlot := func(s *snapshot.Snapshot) {
		named(s)
		cs(s, "orders-east").PG.Slots[0].WALStatus = "lost"
		w := cs(s, "orders-west")
		w.PG.WalReceiver = nil
	}
	cases := []struct {
		name     string
		edit     func(*snapshot.Snapshot)
		opt      plan.Options
		policy   func(*topology.Desired)
		actions  []plan.Action
		refusals []string
		notes    []string
		check    func(*testing.T, plan.Plan)
	}{
		{name: "in sync, slots named", edit: named},
		{name: "a lost slot without a policy: refused with the evidence", edit: lostSlot,
			refusals: []string{"orders-west needs a rebuild: its slot xdc_orders_west on orders-east is lost (wal_status lost): the WAL it needs was removed. pgtopo rebuilds a standby only where allowed: set rebuild: allow on orders-west"}},
		{name: "a lost slot, --allow-rebuild", edit: lostSlot, opt: plan.Options{AllowRebuild: []string{"orders-west"}},
			actions: []plan.Action{plan.ActionLock, plan.ActionCheckpoint, plan.ActionRebuild},
			check: func(t *testing.T, p plan.Plan) {
				s := p.Steps[2]
				if pay[*plan.Rebuild](s).Consent != "apply --allow-rebuild orders-west" || pay[*plan.Rebuild](s).Resume || pay[*plan.Rebuild](s).Standby.Follows != "orders-east" ||
					!pay[*plan.Rebuild](s).Standby.Spec.Replication.IsReplica || pay[*plan.Rebuild](s).Standby.Spec.Replication.Peer() == "" {
					t.Fatalf("%+v", pay[*plan.Rebuild](s))
				}
				if !slices.Contains(s.Preconditions, plan.Precondition{Kind: plan.CondNotWritable, Cluster: "orders-west"}) ||
					!slices.Contains(s.Preconditions, plan.Precondition{Kind: plan.CondWritable, Cluster: "orders-east"}) {
					t.Fatalf("preconditions %+v", s.Preconditions)
				}
			}},
		{name: "the flag for another cluster allows nothing", edit: lostSlot, opt: plan.Options{AllowRebuild: []string{"orders-east"}},
			refusals: []string{"orders-west needs a rebuild"}},
		{name: "a lost slot, the file's policy", edit: lostSlot, policy: func(d *topology.Desired) { d.Clusters[1].RebuildAllowed = true },
			actions: []plan.Action{plan.ActionLock, plan.ActionCheckpoint, plan.ActionRebuild},
			check: func(t *testing.T, p plan.Plan) {
				if c := pay[*plan.Rebuild](p.Steps[2]).Consent; c != "the file (rebuild: allow)" {
					t.Fatalf("consent %q", c)
				}
			}},
		{name: "another system, allowed", edit: func(s *snapshot.Snapshot) { cs(s, "orders-west").PG.SystemID = "1" }, opt: plan.Options{AllowRebuild: []string{"orders-west"}},
			actions: []plan.Action{plan.ActionLock, plan.ActionCheckpoint, plan.ActionRebuild},
			check: func(t *testing.T, p plan.Plan) {
				if ev := pay[*plan.Rebuild](p.Steps[2]).Evidence; !strings.Contains(ev, "system identifier 1 differs from orders-east's") {
					t.Fatalf("evidence %q", ev)
				}
			}},
		{name: "the WAL it needs removed from the primary", edit: func(s *snapshot.Snapshot) {
			w := cs(s, "orders-west")
			w.PG.WalReceiver = nil
			cs(s, "orders-east").PG.OldestWAL = "000000010000000000000009"
		}, refusals: []string{"orders-west needs a rebuild: it needs WAL from 0/5027AD8 on, which orders-east no longer has (its oldest segment is 000000010000000000000009)"}},
		{name: "the WAL still there: no rebuild", edit: func(s *snapshot.Snapshot) {
			cs(s, "orders-west").PG.WalReceiver = nil
			cs(s, "orders-east").PG.OldestWAL = "000000010000000000000005"
		}, notes: []string{"orders-west is not streaming"}},
		{name: "a rebuild recorded on the primary goes on without the flag", edit: func(s *snapshot.Snapshot) {
			w := cs(s, "orders-west")
			w.Exists, w.Object, w.PG = false, nil, nil
			cs(s, "orders-east").Object.Marks.Rebuild = &snapshot.RebuildRecord{Cluster: "orders-west", Evidence: "its slot is lost", Consent: "apply --allow-rebuild orders-west", At: "2026-12-03T06:00:00Z"}
		}, actions: []plan.Action{plan.ActionLock, plan.ActionCheckpoint, plan.ActionRebuild, plan.ActionRecord},
			check: func(t *testing.T, p plan.Plan) {
				rb := pay[*plan.Rebuild](p.Steps[2])
				if !rb.Resume || rb.Consent != "apply --allow-rebuild orders-west" || rb.Evidence != "its slot is lost" {
					t.Fatalf("%+v", rb)
				}
			}},
		{name: "a slot pgtopo does not know is reported, never dropped", edit: func(s *snapshot.Snapshot) {
			named(s)
			pg := cs(s, "orders-east").PG
			pg.Slots = append(pg.Slots, snapshot.Slot{Name: "backup_tool", RestartLSN: 0x4000000, RetainedBytes: 1 << 20},
				snapshot.Slot{Name: "orders_east_1", Active: true, RestartLSN: 0x5000000})
		}, notes: []string{"slot backup_tool on orders-east (inactive, holds 1 MiB of WAL) is not one pgtopo knows", "list it in spec.replication.dropSlots to have it dropped"}},
		{name: "a slot the file lists for cleanup", edit: func(s *snapshot.Snapshot) {
			named(s)
			pg := cs(s, "orders-east").PG
			pg.Slots = append(pg.Slots, snapshot.Slot{Name: "backup_tool", RestartLSN: 0x4000000, RetainedBytes: 1 << 20})
		}, policy: func(d *topology.Desired) { d.DropSlots = []string{"backup_tool"} },
			actions: []plan.Action{plan.ActionLock, plan.ActionDropSlot},
			check: func(t *testing.T, p plan.Plan) {
				d := pay[*plan.DropSlot](p.Steps[1])
				if d.Slot != "backup_tool" || d.For != "" || d.CatalogueRow || d.RetainedBytes != 1<<20 {
					t.Fatalf("%+v", d)
				}
				if !slices.Contains(p.Steps[1].Preconditions, plan.Precondition{Kind: plan.CondSlotInactive, Cluster: "orders-east", Other: "backup_tool"}) {
					t.Fatalf("preconditions %+v", p.Steps[1].Preconditions)
				}
			}},
		{name: "listed for cleanup but active: left alone", edit: func(s *snapshot.Snapshot) {
			named(s)
			pg := cs(s, "orders-east").PG
			pg.Slots = append(pg.Slots, snapshot.Slot{Name: "backup_tool", Active: true, RestartLSN: 0x4000000})
		}, policy: func(d *topology.Desired) { d.DropSlots = []string{"backup_tool"} },
			notes: []string{"slot backup_tool on orders-east is listed in spec.replication.dropSlots but something streams through it: left alone"}},
		{name: "a slot left behind by a deleted standby", edit: func(s *snapshot.Snapshot) {
			named(s)
			pg := cs(s, "orders-east").PG
			pg.MultiCluster = append(pg.MultiCluster, snapshot.MultiClusterInfo{Cluster: "orders-south", Slot: "xdc_orders_south"})
			pg.Slots = append(pg.Slots, snapshot.Slot{Name: "xdc_orders_south", RestartLSN: 0x3000000, WALStatus: "reserved", RetainedBytes: 32 << 20})
		}, actions: []plan.Action{plan.ActionLock, plan.ActionDropSlot},
			check: func(t *testing.T, p plan.Plan) {
				s := p.Steps[1]
				if d := pay[*plan.DropSlot](s); d.Slot != "xdc_orders_south" || d.For != "orders-south" || !d.CatalogueRow {
					t.Fatalf("%+v", d)
				}
				if !strings.Contains(s.Reason, "was kept for orders-south, which the file no longer lists; inactive, it holds 32 MiB of WAL") {
					t.Fatalf("reason %q", s.Reason)
				}
			}},
		{name: "a slot of a cluster of the file, inactive with no restart LSN", edit: func(s *snapshot.Snapshot) {
			named(s)
			cs(s, "orders-east").PG.Slots[0] = snapshot.Slot{Name: "xdc_orders_west"}
		}, actions: []plan.Action{plan.ActionLock, plan.ActionDropSlot}},
		{name: "slot names unknown: no guessing", edit: func(s *snapshot.Snapshot) {
			pg := cs(s, "orders-east").PG
			pg.Slots = append(pg.Slots, snapshot.Slot{Name: "backup_tool", RestartLSN: 0x4000000})
		}, policy: func(d *topology.Desired) { d.DropSlots = []string{"backup_tool"} }},
		{name: "deletion policy delete: the standby, its row and its slot", edit: func(s *snapshot.Snapshot) {
			named(s)
			s.Orphans = []snapshot.OrphanCluster{{Name: "orders-south", Site: "west", Namespace: "db", SlotName: "xdc_orders_south",
				Object: &snapshot.Object{Spec: snapshot.Spec{Replication: snapshot.Replication{IsReplica: true}}}}}
			pg := cs(s, "orders-east").PG
			pg.MultiCluster = append(pg.MultiCluster, snapshot.MultiClusterInfo{Cluster: "orders-south", Slot: "xdc_orders_south"})
			pg.Slots = append(pg.Slots, snapshot.Slot{Name: "xdc_orders_south", Active: true, RestartLSN: 0x3000000})
		}, policy: func(d *topology.Desired) { d.DeletionPolicy = topology.DeletionDelete },
			actions: []plan.Action{plan.ActionLock, plan.ActionDeleteCluster},
			check: func(t *testing.T, p plan.Plan) {
				s := p.Steps[1]
				if *pay[*plan.DeleteCluster](s) != (plan.DeleteCluster{Primary: "orders-east", Slot: "xdc_orders_south"}) || len(s.Changes) != 3 ||
					s.Preconditions[0] != (plan.Precondition{Kind: plan.CondObjectReplica, Cluster: "orders-south"}) {
					t.Fatalf("%+v %+v", pay[*plan.DeleteCluster](s), s.Changes)
				}
				if c := p.Count(); c.Delete != 1 || !strings.Contains(p.Summary(), "1 to delete") {
					t.Fatalf("%+v %s", c, p.Summary())
				}
			}},
		{name: "deletion policy delete never deletes one whose object says primary", edit: func(s *snapshot.Snapshot) {
			s.Orphans = []snapshot.OrphanCluster{{Name: "orders-south", Site: "west", Namespace: "db", Object: &snapshot.Object{}}}
		}, policy: func(d *topology.Desired) { d.DeletionPolicy = topology.DeletionDelete },
			refusals: []string{"deletionPolicy delete: orders-south's object says it is a primary (isReplica false): pgtopo deletes only standbys"}},
		{name: "deletion policy orphan: reported", edit: func(s *snapshot.Snapshot) {
			s.Orphans = []snapshot.OrphanCluster{{Name: "orders-south", Site: "west", Namespace: "db"}}
		}, notes: []string{"no longer in the file: left alone (spec.deletionPolicy orphan"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := loadDesired(t, "testdata/two-sites.yaml")
			snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
			if tc.policy != nil {
				tc.policy(d)
			}
			tc.edit(snap)
			p := Compute(d, snap, tc.opt)
			expectPlan(t, p, tc.actions, tc.refusals, tc.notes, true)
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

// The gates of the repairs, as apply re-checks them: never a primary
// rebuilt, never an active slot dropped, never a cluster deleted whose
// object says primary.
func TestRepairGates(t *testing.T) {
	d := loadDesired(t, "testdata/two-sites.yaml")
	snap := loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
	for _, tc := range []struct {
		cond plan.Precondition
		want string
	}{
		{plan.Precondition{Kind: plan.CondNotWritable, Cluster: "orders-east"}, "orders-east takes writes: pgtopo never rebuilds or deletes a primary"},
		{plan.Precondition{Kind: plan.CondNotWritable, Cluster: "orders-west"}, ""},
		{plan.Precondition{Kind: plan.CondSlotInactive, Cluster: "orders-east", Other: "xdc_orders_west"}, "slot xdc_orders_west on orders-east is active"},
		{plan.Precondition{Kind: plan.CondSlotInactive, Cluster: "orders-east", Other: "backup_tool"}, ""},
		{plan.Precondition{Kind: plan.CondObjectReplica, Cluster: "orders-south"}, "orders-south is no longer there"},
	} {
		err := tc.cond.Holds(snap)
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cond, err, tc.want)
		}
	}
	snap.Orphans = []snapshot.OrphanCluster{{Name: "orders-south", Object: &snapshot.Object{Spec: snapshot.Spec{Replication: snapshot.Replication{IsReplica: true}}}}}
	if err := (plan.Precondition{Kind: plan.CondObjectReplica, Cluster: "orders-south"}).Holds(snap); err != nil {
		t.Fatal(err)
	}
	snap.Orphans[0].Object = nil
	if err := (plan.Precondition{Kind: plan.CondObjectReplica, Cluster: "orders-south"}).Holds(snap); err == nil || !strings.Contains(err.Error(), "could not be read") {
		t.Fatal(err)
	}
}

// Edges of the repairs the table above leaves out.
func TestRepairEdges(t *testing.T) {
	load := func() (*topology.Desired, *snapshot.Snapshot) {
		d := loadDesired(t, "testdata/two-sites.yaml")
		return d, loadSnapshot(t, "testdata/in-sync/snapshot.json", d)
	}
	// A slot check on a primary that cannot be read says so.
	_, snap := load()
	cs(snap, "orders-east").PG = nil
	if err := (plan.Precondition{Kind: plan.CondSlotInactive, Cluster: "orders-east", Other: "x"}).Holds(snap); err == nil || !strings.Contains(err.Error(), "cannot read orders-east") {
		t.Fatalf("unreadable primary: %v", err)
	}
	// A rebuild whose primary has no endpoint yet takes it from the
	// snapshot at execution.
	d, snap := load()
	named(snap)
	cs(snap, "orders-east").PG.Slots[0].WALStatus = "lost"
	cs(snap, "orders-west").PG.WalReceiver = nil
	cs(snap, "orders-east").Endpoint = nil
	p := Compute(d, snap, plan.Options{AllowRebuild: []string{"orders-west"}})
	i := slices.IndexFunc(p.Steps, func(s plan.Step) bool { return s.Action == plan.ActionRebuild })
	if i < 0 || pay[*plan.Rebuild](p.Steps[i]).Standby.PeerOf != "orders-east" || pay[*plan.Rebuild](p.Steps[i]).Standby.Spec.Replication.PeerHost != "" {
		t.Fatalf("rebuild without the primary's endpoint: %+v", p.Steps)
	}
	// Deleting a cluster the catalogue does not list: no row to remove.
	d, snap = load()
	named(snap)
	d.DeletionPolicy = topology.DeletionDelete
	snap.Orphans = []snapshot.OrphanCluster{{Name: "orders-south", Site: "west", Namespace: "db", SlotName: "xdc_orders_south",
		Object: &snapshot.Object{Spec: snapshot.Spec{Replication: snapshot.Replication{IsReplica: true}}}}}
	p = Compute(d, snap, plan.Options{})
	if len(p.Steps) != 2 || len(p.Steps[1].Changes) != 1 || pay[*plan.DeleteCluster](p.Steps[1]).Slot != "" {
		t.Fatalf("deletion without a row or slot: %+v", p.Steps)
	}
}
