package plan

import (
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/snapshot"
)

// checkWorld is a primary east and a standby west streaming from it, 1 MiB
// behind; edit changes it for one case.
func checkWorld(edit func(s *snapshot.Snapshot)) *snapshot.Snapshot {
	east := &snapshot.Endpoint{Host: "127.100.10.1", Port: 31388}
	s := &snapshot.Snapshot{
		Sites: []snapshot.SiteState{{Name: "east", Reachable: true}, {Name: "west", Reachable: true}},
		Clusters: []snapshot.ClusterState{
			{Name: "orders-east", Site: "east", Exists: true, Object: &snapshot.Object{}, Endpoint: east,
				PG: &snapshot.PGState{SystemID: "77", Timeline: 2, CurrentLSN: 0x5100000, ServerVersion: 150020,
					Slots: []snapshot.Slot{{Name: "xdc_orders_old"}}}},
			{Name: "orders-west", Site: "west", Exists: true, Object: &snapshot.Object{},
				PG: &snapshot.PGState{InRecovery: true, SystemID: "77", Timeline: 2, ReplayLSN: 0x5000000, ServerVersion: 150013,
					WalReceiver: &snapshot.WalReceiver{Status: "streaming", SenderHost: east.Host, SenderPort: east.Port}}},
			{Name: "orders-south", Site: "west"},
		},
		// A cluster the file no longer lists, whose object says standby.
		Orphans: []snapshot.OrphanCluster{{Name: "orders-old", Site: "west",
			Object: &snapshot.Object{Spec: snapshot.Spec{Replication: snapshot.Replication{IsReplica: true}}}}},
	}
	if edit != nil {
		edit(s)
	}
	return s
}

func west(s *snapshot.Snapshot) *snapshot.ClusterState { c, _ := s.Cluster("orders-west"); return c }
func east(s *snapshot.Snapshot) *snapshot.ClusterState { c, _ := s.Cluster("orders-east"); return c }

// TestPreconditions checks every condition kind both ways: it holds on the
// healthy world, and fails, saying why, when its one fact is off. A gate
// loosened in Holds fails the failing row.
func TestPreconditions(t *testing.T) {
	const pair = "orders-west"
	cases := []struct {
		cond Precondition
		// breaks makes the condition false; want is in the reason.
		breaks func(s *snapshot.Snapshot)
		want   string
	}{
		{Precondition{Kind: CondSiteReachable, Site: "west"},
			func(s *snapshot.Snapshot) { s.Sites[1].Reachable = false }, "site west unreachable"},
		{Precondition{Kind: CondSiteReachable, Site: "south"}, nil, "site south unreachable"},
		{Precondition{Kind: CondCRPresent, Cluster: pair},
			func(s *snapshot.Snapshot) { west(s).Exists = false }, "orders-west does not exist"},
		{Precondition{Kind: CondCRAbsent, Cluster: "orders-south"},
			func(s *snapshot.Snapshot) { s.Clusters[2].Exists = true }, "orders-south exists already"},
		{Precondition{Kind: CondReadable, Cluster: pair},
			func(s *snapshot.Snapshot) { west(s).PG, west(s).PGError = nil, "connection refused" }, "cannot read orders-west's database: connection refused"},
		{Precondition{Kind: CondWritable, Cluster: "orders-east"},
			func(s *snapshot.Snapshot) { east(s).PG.InRecovery = true }, "orders-east is not writable"},
		{Precondition{Kind: CondOnlyPrimary, Cluster: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.InRecovery = false }, "orders-west is writable too"},
		{Precondition{Kind: CondNoOtherJournal, Cluster: "orders-east"},
			func(s *snapshot.Snapshot) {
				s.Clusters[2].Exists = true
				s.Clusters[2].Object = &snapshot.Object{Marks: snapshot.Marks{Journal: &snapshot.Journal{From: "orders-south", To: "orders-north"}}}
			}, "orders-south has an unfinished switchover orders-south → orders-north"},
		{Precondition{Kind: CondStandby, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.InRecovery = false }, "orders-west is not a standby"},
		{Precondition{Kind: CondStreamingFrom, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.WalReceiver.Status = "waiting" }, "orders-west is not streaming (wal receiver: waiting from 127.100.10.1:31388)"},
		{Precondition{Kind: CondStreamingFrom, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.WalReceiver = nil }, "orders-west is not streaming (wal receiver: none)"},
		{Precondition{Kind: CondStreamingFrom, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.WalReceiver.SenderPort = 30000 }, "orders-west streams from 127.100.10.1:30000, not from orders-east at 127.100.10.1:31388"},
		{Precondition{Kind: CondSameSystemID, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.SystemID = "78" }, "orders-west system identifier 78 differs from orders-east's (77)"},
		{Precondition{Kind: CondSameTimeline, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.Timeline = 3 }, "orders-west timeline 3 is ahead of orders-east's 2"},
		{Precondition{Kind: CondLagAtMost, Cluster: pair, Other: "orders-east", Bytes: 1 << 20},
			func(s *snapshot.Snapshot) { west(s).PG.ReplayLSN-- }, "orders-west lag 1.0 MiB > maxLagBytes 1 MiB"},
		{Precondition{Kind: CondSameMajor, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { west(s).PG.ServerVersion = 160002 }, "orders-west runs PostgreSQL 16, orders-east runs 15: a switchover"},
		{Precondition{Kind: CondSameMajor, Cluster: "orders-gone", Other: "orders-east"}, nil, "orders-gone is not observed"},
		{Precondition{Kind: CondSameMajor, Cluster: pair, Other: "orders-gone"}, nil, "orders-gone is not observed"},
		{Precondition{Kind: CondSameMajor, Cluster: pair, Other: "orders-east"},
			func(s *snapshot.Snapshot) { east(s).PG = nil }, "cannot read orders-west or orders-east"},
		{Precondition{Kind: CondInRecovery, Cluster: pair},
			func(s *snapshot.Snapshot) { west(s).PG.InRecovery = false }, "orders-west is not a standby"},
		{Precondition{Kind: CondNotWritable, Cluster: pair},
			func(s *snapshot.Snapshot) { west(s).PG.InRecovery = false }, "orders-west takes writes: pgtopo never rebuilds or deletes a primary"},
		{Precondition{Kind: CondSlotInactive, Cluster: "orders-east", Other: "xdc_orders_old"},
			func(s *snapshot.Snapshot) { east(s).PG.Slots[0].Active = true }, "slot xdc_orders_old on orders-east is active"},
		{Precondition{Kind: CondSlotInactive, Cluster: "orders-east", Other: "xdc_orders_old"},
			func(s *snapshot.Snapshot) { east(s).PG = nil }, "cannot read orders-east"},
		{Precondition{Kind: CondObjectReplica, Cluster: "orders-old"},
			func(s *snapshot.Snapshot) { s.Orphans[0].Object.Spec.Replication.IsReplica = false }, "orders-old's object says it is a primary (isReplica false)"},
		{Precondition{Kind: CondObjectReplica, Cluster: "orders-old"},
			func(s *snapshot.Snapshot) { s.Orphans[0].Object = nil }, "orders-old's object could not be read"},
		{Precondition{Kind: "no-such-kind", Cluster: pair, Other: "orders-east"}, nil, `unknown precondition "no-such-kind"`},
		{Precondition{Kind: CondWritable, Cluster: "orders-gone"}, nil, "orders-gone is not observed"},
	}
	for _, tc := range cases {
		t.Run(string(tc.cond.Kind)+" "+tc.want, func(t *testing.T) {
			healthy := checkWorld(nil)
			broken := checkWorld(tc.breaks)
			err := tc.cond.Holds(broken)
			if tc.breaks != nil {
				if herr := tc.cond.Holds(healthy); herr != nil {
					t.Fatalf("does not hold on the healthy world: %v", herr)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// The lag gate is exact: lag equal to the bound passes.
func TestLagAtTheBoundHolds(t *testing.T) {
	c := Precondition{Kind: CondLagAtMost, Cluster: "orders-west", Other: "orders-east", Bytes: 1 << 20}
	if err := c.Holds(checkWorld(nil)); err != nil {
		t.Fatalf("lag of exactly the bound: %v", err)
	}
}

func TestCheckNamesTheFailingPrecondition(t *testing.T) {
	step := Step{Action: ActionSwitchover, Preconditions: []Precondition{
		{Kind: CondSiteReachable, Site: "east"},
		{Kind: CondWritable, Cluster: "orders-west"},
	}}
	err := Check(step, checkWorld(nil))
	if err == nil || err.Error() != "precondition writable no longer holds: orders-west is not writable (no error reported)" {
		t.Fatalf("error %v", err)
	}
	if err := Check(Step{Preconditions: step.Preconditions[:1]}, checkWorld(nil)); err != nil {
		t.Fatalf("holding preconditions: %v", err)
	}
}
