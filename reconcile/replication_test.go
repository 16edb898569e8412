package reconcile

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/health"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// twoSites is a primary and a streaming standby whose slot is reserved.
func twoSites() (*topology.Desired, *snapshot.Snapshot) {
	d := &topology.Desired{Name: "orders", MaxLagBytes: 16 << 20, Clusters: []topology.DesiredCluster{
		{Name: "orders-east", Site: topology.Site{Name: "east"}}, {Name: "orders-west", Site: topology.Site{Name: "west"}}}}
	snap := &snapshot.Snapshot{Topology: "orders",
		Sites: []snapshot.SiteState{{Name: "east", Reachable: true}, {Name: "west", Reachable: true}},
		Clusters: []snapshot.ClusterState{
			{Name: "orders-east", Site: "east", Exists: true, Object: &snapshot.Object{Marks: snapshot.Marks{Revision: "abc123"}},
				PG: &snapshot.PGState{SystemID: "7", Timeline: 2, CurrentLSN: 0x5001000,
					Slots: []snapshot.Slot{{Name: "xdc_orders_west", Active: true, WALStatus: "reserved", RetainedBytes: 4096, StreamTLS: "TLSv1.3"}}}},
			{Name: "orders-west", Site: "west", Exists: true, SlotName: "xdc_orders_west", Object: &snapshot.Object{Marks: snapshot.Marks{Revision: "abc123"}},
				PG: &snapshot.PGState{InRecovery: true, SystemID: "7", Timeline: 2, ReplayLSN: 0x5000000, ReplayDelaySeconds: 1.5,
					WalReceiver: &snapshot.WalReceiver{Status: "streaming"}}},
		}}
	return d, snap
}

// The replication series follow Prometheus' naming conventions and say
// what was observed.
func TestReplicationMetrics(t *testing.T) {
	c := &replicationCollector{}
	c.observe(twoSites())
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	want := `
# HELP pgtopo_standby_replay_lag_bytes How far the standby's replay is behind the primary's end of WAL.
# TYPE pgtopo_standby_replay_lag_bytes gauge
pgtopo_standby_replay_lag_bytes{cluster="orders-west",site="west",topology="orders"} 4096
# HELP pgtopo_standby_stream_encrypted 1 when the WAL sender streaming to the standby through its slot on the primary uses TLS (pg_stat_ssl), 0 when it streams in plaintext; absent while nothing streams.
# TYPE pgtopo_standby_stream_encrypted gauge
pgtopo_standby_stream_encrypted{cluster="orders-west",site="west",topology="orders"} 1
# HELP pgtopo_writable_clusters Clusters of the topology whose new sessions can write (out of recovery, not fenced read-only); more than 1 is split brain.
# TYPE pgtopo_writable_clusters gauge
pgtopo_writable_clusters{topology="orders"} 1
# HELP pgtopo_slot_wal_status_info The physical slot's wal_status (reserved, extended, unreserved, lost); the value is 1.
# TYPE pgtopo_slot_wal_status_info gauge
pgtopo_slot_wal_status_info{cluster="orders-east",site="east",slot="xdc_orders_west",topology="orders",wal_status="reserved"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pgtopo_standby_replay_lag_bytes", "pgtopo_standby_stream_encrypted", "pgtopo_writable_clusters", "pgtopo_slot_wal_status_info"); err != nil {
		t.Fatal(err)
	}
	// DR readiness is status' verdict: ready here, not once the standby
	// stops streaming.
	{
		d, snap := twoSites()
		drReady := func(v int) string {
			return fmt.Sprintf("# HELP pgtopo_dr_ready %s\n# TYPE pgtopo_dr_ready gauge\npgtopo_dr_ready{topology=\"orders\"} %d\n", "1 when the topology is ready for a disaster, as pgtopo status says it: one primary, every site reachable, every standby streaming within maxLagBytes with its slot reserved.", v)
		}
		c.observe(d, snap)
		if err := testutil.CollectAndCompare(c, strings.NewReader(drReady(1)), "pgtopo_dr_ready"); err != nil {
			t.Fatalf("ready: %v (%s)", err, health.DR(d, snap).Message)
		}
		snap.Clusters[1].PG.WalReceiver = nil
		c.observe(d, snap)
		if err := testutil.CollectAndCompare(c, strings.NewReader(drReady(0)), "pgtopo_dr_ready"); err != nil {
			t.Fatalf("not streaming: %v", err)
		}
	}
	// A returned primary fenced read-only beside the primary is no split
	// brain, as status says; unfenced, it is.
	{
		d, snap := twoSites()
		snap.Clusters[1].PG = &snapshot.PGState{SystemID: "7", Timeline: 1, ReadOnlyDefault: true}
		c.observe(d, snap)
		if err := testutil.CollectAndCompare(c, strings.NewReader("# HELP pgtopo_writable_clusters Clusters of the topology whose new sessions can write (out of recovery, not fenced read-only); more than 1 is split brain.\n# TYPE pgtopo_writable_clusters gauge\npgtopo_writable_clusters{topology=\"orders\"} 1\n"), "pgtopo_writable_clusters"); err != nil {
			t.Fatalf("fenced: %v", err)
		}
		snap.Clusters[1].PG.ReadOnlyDefault = false
		c.observe(d, snap)
		if err := testutil.CollectAndCompare(c, strings.NewReader("# HELP pgtopo_writable_clusters Clusters of the topology whose new sessions can write (out of recovery, not fenced read-only); more than 1 is split brain.\n# TYPE pgtopo_writable_clusters gauge\npgtopo_writable_clusters{topology=\"orders\"} 2\n"), "pgtopo_writable_clusters"); err != nil {
			t.Fatalf("unfenced: %v", err)
		}
	}
	// A site gone: its cluster is unreachable and down, no stale numbers.
	d, snap := twoSites()
	snap.Sites[1].Reachable, snap.Clusters[1] = false, snapshot.ClusterState{Name: "orders-west", Site: "west"}
	c.observe(d, snap)
	if n := testutil.CollectAndCount(c, "pgtopo_standby_replay_lag_bytes"); n != 0 {
		t.Fatalf("%d lag series for an unreachable standby", n)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP pgtopo_cluster_info The cluster's role as observed (primary, standby, unreachable, absent, unknown); the value is 1.
# TYPE pgtopo_cluster_info gauge
pgtopo_cluster_info{cluster="orders-east",role="primary",site="east",topology="orders"} 1
pgtopo_cluster_info{cluster="orders-west",role="unreachable",site="west",topology="orders"} 1
`), "pgtopo_cluster_info"); err != nil {
		t.Fatal(err)
	}
}

// The example alerts and dashboard parse as PromQL and reference only
// metrics pgtopo serves.
func TestMonitoringExamplesReferenceServedMetrics(t *testing.T) {
	m := NewMetrics()
	d, snap := twoSites()
	snap.Sites[0].Drills = []snapshot.DrillRecord{{Drill: "switchover", Result: "passed", Started: "2026-12-01T03:00:00Z", Finished: "2026-12-01T03:06:00Z", RTOSeconds: 1.6}}
	m.ObserveSnapshot(d, snap)
	m.observe(Cycle{Topology: "orders", Outcome: OutcomeInSync}, time.Now())
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, f := range families {
		served[f.GetName()] = true
	}
	var exprs, alerts []string
	for _, r := range exampleRules(t) {
		alerts = append(alerts, r.Alert)
		exprs = append(exprs, r.Expr)
	}
	for _, a := range []string{"PgtopoStandbyNotStreaming", "PgtopoStandbyLagAboveMax", "PgtopoStandbyStreamPlaintext", "PgtopoSlotWALAtRisk", "PgtopoSplitBrain", "PgtopoSiteUnreachable", "PgtopoLastCycleTooOld", "PgtopoClusterDown", "PgtopoGone", "PgtopoDrillOverdue"} {
		if !slices.Contains(alerts, a) {
			t.Errorf("alert %s missing", a)
		}
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	data, err := os.ReadFile("../examples/monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, strings.ReplaceAll(tg.Expr, "$topology", "orders"))
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("only %d expressions", len(exprs))
	}
	for _, e := range exprs {
		expr, err := parser.ParseExpr(e)
		if err != nil {
			t.Errorf("%q: %v", e, err)
			continue
		}
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && !served[vs.Name] {
				t.Errorf("%q references %s, which pgtopo does not serve", e, vs.Name)
			}
			return nil
		})
	}
}

var _ prometheus.Collector = (*replicationCollector)(nil)
