package snapshot

import "testing"

// A partial look replaces what it saw and leaves the rest, the Lease of a
// site it saw included.
func TestWith(t *testing.T) {
	base := &Snapshot{
		Sites:    []SiteState{{Name: "east", Reachable: true, Lease: &LeaseInfo{Holder: "me"}}, {Name: "west", Reachable: true}},
		Clusters: []ClusterState{{Name: "orders-east", Site: "east", PGError: "old"}, {Name: "orders-west", Site: "west"}},
	}
	part := &Snapshot{Sites: []SiteState{{Name: "east", Error: "timeout"}}, Clusters: []ClusterState{{Name: "orders-east", Site: "east", PG: &PGState{Timeline: 2}}}}
	got := base.With(part)
	if east := got.Sites[0]; east.Reachable || east.Error != "timeout" || east.Lease == nil || east.Lease.Holder != "me" {
		t.Fatalf("east: %+v", east)
	}
	if !got.Sites[1].Reachable {
		t.Fatal("west changed")
	}
	if c := got.Clusters[0]; c.PG == nil || c.PG.Timeline != 2 || c.PGError != "" {
		t.Fatalf("orders-east: %+v", c)
	}
	if base.Clusters[0].PGError != "old" || !base.Sites[0].Reachable {
		t.Fatal("the base snapshot was changed")
	}
}
