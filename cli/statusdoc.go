package cli

import (
	"github.com/pgtopo/pgtopo/health"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// StatusAPIVersion versions status -o json; a field's meaning never
// changes within a version.
const StatusAPIVersion = "pgtopo.dev/v1alpha1"

// Status is the document status -o json writes.
type Status struct {
	APIVersion   string                   `json:"apiVersion"`
	Kind         string                   `json:"kind"`
	Topology     string                   `json:"topology"`
	ObservedAt   string                   `json:"observedAt"`
	Verdict      health.Verdict           `json:"verdict"`
	Sites        []StatusSite             `json:"sites"`
	Clusters     []StatusCluster          `json:"clusters"`
	LastFailover *snapshot.FailoverRecord `json:"lastFailover,omitempty"`
	// Drills are the DR drills the sites keep, newest first.
	Drills []snapshot.DrillRecord `json:"drills,omitempty"`
}

// StatusSite is a site as observed.
type StatusSite struct {
	Name string `json:"name"`
	// Kind is kubernetes or patroni (Patroni clusters outside Kubernetes,
	// which have no context).
	Kind      string `json:"kind"`
	Context   string `json:"context"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

// StatusCluster is a cluster as observed.
type StatusCluster struct {
	Name      string `json:"name"`
	Site      string `json:"site"`
	Namespace string `json:"namespace"`
	Role      string `json:"role"`
	State     string `json:"state"`
	Timeline  int    `json:"timeline,omitempty"`
	// LagBytes is a standby's replay lag behind the primary (null when it
	// cannot be measured).
	LagBytes  *int64 `json:"lagBytes"`
	Streaming bool   `json:"streaming"`
	// SlotWALStatus is the wal_status of the standby's slot on the primary.
	SlotWALStatus string `json:"slotWalStatus,omitempty"`
	// StreamTLS is how the standby's stream is encrypted, as the primary's
	// WAL sender reports it: a TLS version, "plaintext", or empty when
	// nothing streams through its slot.
	StreamTLS string `json:"streamTLS,omitempty"`
	Endpoint  string `json:"endpoint,omitempty"`
	Revision  string `json:"revision,omitempty"`
	Fenced    bool   `json:"fenced"`
	// PendingRestart names the settings the server runs without until it
	// restarts.
	PendingRestart []string `json:"pendingRestart,omitempty"`
	Error          string   `json:"error,omitempty"`
}

// statusDoc is the status document of a snapshot.
func statusDoc(d *topology.Desired, snap *snapshot.Snapshot, at string) Status {
	st := Status{APIVersion: StatusAPIVersion, Kind: "Status", Topology: d.Name, ObservedAt: at,
		Verdict: health.DR(d, snap), Sites: []StatusSite{}, Clusters: []StatusCluster{}, LastFailover: snap.LastFailover(), Drills: snap.Drills()}
	for _, s := range snap.Sites {
		kind := s.Kind
		if kind == "" {
			kind = topology.SiteKubernetes
		}
		st.Sites = append(st.Sites, StatusSite{Name: s.Name, Kind: kind, Context: s.Context, Reachable: s.Reachable, Error: s.Error})
	}
	primary := health.LivePrimary(snap)
	for i := range snap.Clusters {
		c := &snap.Clusters[i]
		sc := StatusCluster{Name: c.Name, Site: c.Site, Namespace: c.Namespace, Role: planner.RoleOf(snap, c), State: clusterState(snap, c), Fenced: c.Fenced(), Error: c.PGError}
		if c.PG != nil {
			sc.PendingRestart = c.PG.PendingRestart
		}
		if c.Error != "" {
			sc.Error = c.Error
		}
		if c.Endpoint != nil {
			sc.Endpoint = c.Endpoint.String()
		}
		if c.Exists && c.Object != nil {
			sc.Revision = c.Object.Marks.Revision
			if sc.Revision == "" && c.Object.Marks.Digest != "" {
				sc.Revision = "digest " + c.Object.Marks.Digest
			}
		}
		if c.PG != nil {
			sc.Timeline = c.PG.Timeline
			if c.PG.InRecovery {
				sc.Streaming = c.PG.WalReceiver != nil && c.PG.WalReceiver.Status == "streaming"
				if primary != nil && primary.PG.SystemID == c.PG.SystemID {
					lag := snapshot.Lag(primary.PG, c.PG)
					sc.LagBytes = &lag
				}
				if sl := snapshot.SlotOf(primary, c); sl != nil {
					sc.SlotWALStatus = sl.WALStatus
					sc.StreamTLS = sl.StreamTLS
				}
			}
		}
		st.Clusters = append(st.Clusters, sc)
	}
	return st
}

// clusterState is the STATE column: the operator's word, the receiver's,
// or why there is none.
func clusterState(snap *snapshot.Snapshot, c *snapshot.ClusterState) string {
	switch {
	case snap.SiteDown(c.Name):
		return "site unreachable"
	case !c.Exists:
		return "no CR"
	case c.PG == nil && c.PGError != "":
		return "db unreachable"
	case c.PG != nil && c.PG.InRecovery:
		if c.PG.WalReceiver != nil {
			return c.PG.WalReceiver.Status
		}
		return "not streaming"
	case c.Fenced():
		return "fenced"
	case c.PG != nil && len(c.PG.PendingRestart) > 0:
		return "restart pending"
	}
	return c.Object.Status
}
