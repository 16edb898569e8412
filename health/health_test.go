package health

import (
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

func twoSites() (*topology.Desired, *snapshot.Snapshot) {
	d := &topology.Desired{Name: "orders", MaxLagBytes: 16 << 20}
	snap := &snapshot.Snapshot{Topology: "orders",
		Sites: []snapshot.SiteState{{Name: "east", Reachable: true}, {Name: "west", Reachable: true}},
		Clusters: []snapshot.ClusterState{
			{Name: "orders-east", Site: "east", Exists: true, Object: &snapshot.Object{},
				PG: &snapshot.PGState{SystemID: "7", Timeline: 1, CurrentLSN: 0x5001000,
					Slots: []snapshot.Slot{{Name: "xdc_orders_west", Active: true, WALStatus: "reserved", StreamTLS: "TLSv1.3"}}}},
			{Name: "orders-west", Site: "west", Exists: true, SlotName: "xdc_orders_west", Object: &snapshot.Object{},
				PG: &snapshot.PGState{InRecovery: true, SystemID: "7", Timeline: 1, ReplayLSN: 0x5000000,
					WalReceiver: &snapshot.WalReceiver{Status: "streaming"}}},
		}}
	return d, snap
}

func TestDR(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*snapshot.Snapshot)
		healthy bool
		says    string
	}{
		{"ready", func(*snapshot.Snapshot) {}, true, "DR ready: orders-west 4 KiB behind, streaming over TLSv1.3, slot reserved"},
		{"split brain", func(s *snapshot.Snapshot) { s.Clusters[1].PG.InRecovery = false }, false, "split brain: orders-east and orders-west take writes"},
		{"a returned primary fenced read-only is no writer", func(s *snapshot.Snapshot) {
			s.Clusters[1].PG = &snapshot.PGState{SystemID: "7", Timeline: 1, ReadOnlyDefault: true}
		}, false, "NOT DR ready: no standby"},
		{"no writer", func(s *snapshot.Snapshot) { s.Clusters[0].PG.InRecovery = true }, false, "no cluster takes writes"},
		{"site unreachable", func(s *snapshot.Snapshot) { s.Sites[1].Reachable = false }, false, "site west unreachable"},
		{"not streaming", func(s *snapshot.Snapshot) { s.Clusters[1].PG.WalReceiver = nil }, false, "orders-west is not streaming"},
		{"lagging", func(s *snapshot.Snapshot) { s.Clusters[0].PG.CurrentLSN = 0x5000000 + 17<<20 }, false, "more than maxLagBytes 16 MiB"},
		{"another system", func(s *snapshot.Snapshot) { s.Clusters[1].PG.SystemID = "8" }, false, "orders-west is not a copy of orders-east"},
		{"slot lost", func(s *snapshot.Snapshot) { s.Clusters[0].PG.Slots[0].WALStatus = "lost" }, false, "slot xdc_orders_west is lost"},
		{"plaintext stream is said", func(s *snapshot.Snapshot) { s.Clusters[0].PG.Slots[0].StreamTLS = snapshot.StreamPlaintext }, true, "streaming in PLAINTEXT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, snap := twoSites()
			tc.edit(snap)
			v := DR(d, snap)
			if v.Healthy != tc.healthy || !strings.Contains(v.Message, tc.says) {
				t.Fatalf("%+v, want healthy=%v saying %q", v, tc.healthy, tc.says)
			}
		})
	}
}
