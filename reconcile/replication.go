package reconcile

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtopo/pgtopo/health"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// replicationCollector exposes the replication facts of the last
// snapshot, per cluster and site: what a team watches to know its DR copy
// is healthy. It keeps only each topology's last snapshot's numbers.
type replicationCollector struct {
	mu         sync.Mutex
	byTopology map[string][]prometheus.Metric
}

var (
	labelsCluster = []string{"topology", "cluster", "site"}
	descSite      = prometheus.NewDesc("pgtopo_site_reachable", "1 when the site's Kubernetes API answered in the last cycle.", []string{"topology", "site"}, nil)
	descInfo      = prometheus.NewDesc("pgtopo_cluster_info", "The cluster's role as observed (primary, standby, unreachable, absent, unknown); the value is 1.", append(labelsCluster, "role"), nil)
	descUp        = prometheus.NewDesc("pgtopo_cluster_up", "1 when the cluster's database answered in the last cycle.", labelsCluster, nil)
	descTimeline  = prometheus.NewDesc("pgtopo_cluster_timeline", "The cluster's PostgreSQL timeline.", labelsCluster, nil)
	descLagBytes  = prometheus.NewDesc("pgtopo_standby_replay_lag_bytes", "How far the standby's replay is behind the primary's end of WAL.", labelsCluster, nil)
	descLagSecs   = prometheus.NewDesc("pgtopo_standby_replay_lag_seconds", "Seconds since the last transaction the standby replayed committed, while it has WAL left to replay (0 when caught up).", labelsCluster, nil)
	descStreaming = prometheus.NewDesc("pgtopo_standby_streaming", "1 when the standby's WAL receiver streams.", labelsCluster, nil)
	descEncrypted = prometheus.NewDesc("pgtopo_standby_stream_encrypted", "1 when the WAL sender streaming to the standby through its slot on the primary uses TLS (pg_stat_ssl), 0 when it streams in plaintext; absent while nothing streams.", labelsCluster, nil)
	descPending   = prometheus.NewDesc("pgtopo_cluster_settings_pending_restart", "Settings the cluster's server runs without until it restarts (pg_settings.pending_restart): not converged while above 0.", labelsCluster, nil)
	descSysID     = prometheus.NewDesc("pgtopo_cluster_system_identifier_match", "1 when the cluster's system identifier is the primary's.", labelsCluster, nil)
	descRevision  = prometheus.NewDesc("pgtopo_cluster_applied_revision_info", "The revision (or digest) recorded as applied on the cluster's object; the value is 1.", append(labelsCluster, "revision"), nil)
	descSlotBytes = prometheus.NewDesc("pgtopo_slot_retained_wal_bytes", "WAL the physical slot holds on the primary (its end of WAL minus the slot's restart LSN).", append(labelsCluster, "slot"), nil)
	descSlotState = prometheus.NewDesc("pgtopo_slot_wal_status_info", "The physical slot's wal_status (reserved, extended, unreserved, lost); the value is 1.", append(labelsCluster, "slot", "wal_status"), nil)
	descWritable  = prometheus.NewDesc("pgtopo_writable_clusters", "Clusters of the topology whose new sessions can write (out of recovery, not fenced read-only); more than 1 is split brain.", []string{"topology"}, nil)
	descDRReady   = prometheus.NewDesc("pgtopo_dr_ready", "1 when the topology is ready for a disaster, as pgtopo status says it: one primary, every site reachable, every standby streaming within maxLagBytes with its slot reserved.", []string{"topology"}, nil)
	descDrillOK   = prometheus.NewDesc("pgtopo_drill_last_success_timestamp_seconds", "Unix time the topology's last DR drill of a kind that passed finished (kept in the sites by pgtopo drill).", []string{"topology", "drill"}, nil)
	descDrillRTO  = prometheus.NewDesc("pgtopo_drill_rto_seconds", "The topology's last DR drill of a kind: the longest write gap an application saw (switchover), or the clone's time to writable (failover-isolated).", []string{"topology", "drill"}, nil)
	descDrillRPOs = prometheus.NewDesc("pgtopo_drill_rpo_seconds", "The span of acknowledged writes lost in the topology's last DR drill of a kind (an isolated failover's clone lacked them).", []string{"topology", "drill"}, nil)
	descDrillRPO  = prometheus.NewDesc("pgtopo_drill_missing_heartbeats", "Acknowledged heartbeats missing after the topology's last DR drill of a kind: its data loss, in rows.", []string{"topology", "drill"}, nil)
	descMaxLag    = prometheus.NewDesc("pgtopo_max_lag_bytes", "The topology's replication.maxLagBytes: a switchover refuses a target further behind.", []string{"topology"}, nil)
)

func (c *replicationCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSite, descInfo, descUp, descTimeline, descLagBytes, descLagSecs, descStreaming, descEncrypted, descPending, descSysID, descRevision, descSlotBytes, descSlotState, descWritable, descDRReady, descMaxLag, descDrillOK, descDrillRTO, descDrillRPO, descDrillRPOs} {
		ch <- d
	}
}

func (c *replicationCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, series := range c.byTopology {
		for _, m := range series {
			ch <- m
		}
	}
}

func (c *replicationCollector) forget(topology string) {
	c.mu.Lock()
	delete(c.byTopology, topology)
	c.mu.Unlock()
}

// observe replaces the topology's series with those of snap.
func (c *replicationCollector) observe(d *topology.Desired, snap *snapshot.Snapshot) {
	var out []prometheus.Metric
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		out = append(out, prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...))
	}
	bool01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	t := d.Name
	for _, s := range snap.Sites {
		gauge(descSite, bool01(s.Reachable), t, s.Name)
	}
	var primary *snapshot.ClusterState
	for i := range snap.Clusters {
		if snap.Clusters[i].Writable() && primary == nil {
			primary = &snap.Clusters[i]
		}
	}
	writable := len(snap.TakingWrites())
	for i := range snap.Clusters {
		cs := &snap.Clusters[i]
		l := []string{t, cs.Name, cs.Site}
		gauge(descInfo, 1, append(l, planner.RoleOf(snap, cs))...)
		gauge(descUp, bool01(cs.PG != nil), l...)
		if cs.Exists && cs.Object != nil {
			rev := cs.Object.Marks.Revision
			if rev == "" {
				rev = cs.Object.Marks.Digest
			}
			if rev != "" {
				gauge(descRevision, 1, append(l, rev)...)
			}
		}
		if cs.PG == nil {
			continue
		}
		gauge(descTimeline, float64(cs.PG.Timeline), l...)
		gauge(descPending, float64(len(cs.PG.PendingRestart)), l...)
		if primary != nil {
			gauge(descSysID, bool01(cs.PG.SystemID == primary.PG.SystemID), l...)
		}
		if cs.PG.InRecovery {
			gauge(descStreaming, bool01(cs.PG.WalReceiver != nil && cs.PG.WalReceiver.Status == "streaming"), l...)
			gauge(descLagSecs, cs.PG.ReplayDelaySeconds, l...)
			if primary != nil && primary.PG.SystemID == cs.PG.SystemID {
				gauge(descLagBytes, float64(snapshot.Lag(primary.PG, cs.PG)), l...)
			}
			if sl := snapshot.SlotOf(primary, cs); sl != nil && sl.StreamTLS != "" {
				gauge(descEncrypted, bool01(sl.StreamTLS != snapshot.StreamPlaintext), l...)
			}
			continue
		}
		for _, sl := range cs.PG.Slots {
			gauge(descSlotBytes, float64(sl.RetainedBytes), append(l, sl.Name)...)
			if sl.WALStatus != "" {
				gauge(descSlotState, 1, append(l, sl.Name, sl.WALStatus)...)
			}
		}
	}
	gauge(descWritable, float64(writable), t)
	gauge(descDRReady, bool01(health.DR(d, snap).Healthy), t)
	gauge(descMaxLag, float64(d.MaxLagBytes), t)
	seen := map[string]bool{}
	for _, dr := range snap.Drills() { // newest first: the last of each kind
		if seen[dr.Drill] {
			continue
		}
		seen[dr.Drill] = true
		gauge(descDrillRTO, dr.RTOSeconds, t, dr.Drill)
		gauge(descDrillRPO, float64(dr.MissingHeartbeats), t, dr.Drill)
		gauge(descDrillRPOs, dr.RPOSeconds, t, dr.Drill)
		if ok := snap.LastDrillPassed(dr.Drill); ok != nil {
			if at, err := time.Parse(time.RFC3339, ok.Finished); err == nil {
				gauge(descDrillOK, float64(at.Unix()), t, dr.Drill)
			}
		}
	}
	c.mu.Lock()
	if c.byTopology == nil {
		c.byTopology = map[string][]prometheus.Metric{}
	}
	c.byTopology[t] = out
	c.mu.Unlock()
}
