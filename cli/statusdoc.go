package cli

import (
	"fmt"
	"strings"

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
	Verdict      Verdict                  `json:"verdict"`
	Sites        []StatusSite             `json:"sites"`
	Clusters     []StatusCluster          `json:"clusters"`
	LastFailover *snapshot.FailoverRecord `json:"lastFailover,omitempty"`
}

// Verdict is the one-line health of the topology.
type Verdict struct {
	// Healthy: one primary, every site reachable, every standby streaming
	// within maxLagBytes with its slot reserved.
	Healthy bool   `json:"healthy"`
	Message string `json:"message"`
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
		Verdict: verdict(d, snap), Sites: []StatusSite{}, Clusters: []StatusCluster{}, LastFailover: snap.LastFailover()}
	for _, s := range snap.Sites {
		kind := s.Kind
		if kind == "" {
			kind = topology.SiteKubernetes
		}
		st.Sites = append(st.Sites, StatusSite{Name: s.Name, Kind: kind, Context: s.Context, Reachable: s.Reachable, Error: s.Error})
	}
	primary := livePrimary(snap)
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

// livePrimary is the one writable cluster, nil when there is none or more.
func livePrimary(snap *snapshot.Snapshot) *snapshot.ClusterState {
	var p *snapshot.ClusterState
	for i := range snap.Clusters {
		if snap.Clusters[i].Writable() {
			if p != nil {
				return nil
			}
			p = &snap.Clusters[i]
		}
	}
	return p
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

// verdict says in one line whether the topology is ready for a
// disaster, or what is wrong and what to do.
func verdict(d *topology.Desired, snap *snapshot.Snapshot) Verdict {
	var problems []string
	for _, s := range snap.Sites {
		if !s.Reachable {
			problems = append(problems, fmt.Sprintf("site %s unreachable: whether it holds a writable cluster cannot be told; fix what its error says", s.Name))
		}
	}
	for _, c := range snap.Clusters {
		if c.Error != "" {
			problems = append(problems, fmt.Sprintf("cannot observe %s: %s", c.Name, c.Error))
		}
	}
	writable := snap.TakingWrites()
	switch {
	case len(writable) > 1:
		problems = append(problems, fmt.Sprintf("split brain: %s take writes: fence all but one (pgtopo fence CLUSTER)", strings.Join(writable, " and ")))
	case len(writable) == 0 && len(problems) == 0:
		problems = append(problems, "no cluster takes writes: run pgtopo diff to see why")
	}
	primary := livePrimary(snap)
	var ready []string
	for i := range snap.Clusters {
		c := &snap.Clusters[i]
		if c.Error != "" {
			continue // said above
		}
		if c.PG == nil || !c.PG.InRecovery || snap.SiteDown(c.Name) {
			if c.Exists && c.PG == nil && !snap.SiteDown(c.Name) {
				problems = append(problems, fmt.Sprintf("%s's database does not answer: %s", c.Name, orNone(c.PGError)))
			}
			continue
		}
		if c.PG.WalReceiver == nil || c.PG.WalReceiver.Status != "streaming" {
			problems = append(problems, fmt.Sprintf("%s is not streaming (wal receiver %s): check the network to the primary and its slot", c.Name, c.Receiver()))
			continue
		}
		if primary == nil {
			continue
		}
		if c.PG.SystemID != primary.PG.SystemID {
			problems = append(problems, fmt.Sprintf("%s is not a copy of %s (system identifier %s, not %s): it needs a rebuild", c.Name, primary.Name, c.PG.SystemID, primary.PG.SystemID))
			continue
		}
		lag := snapshot.Lag(primary.PG, c.PG)
		if lag > d.MaxLagBytes {
			problems = append(problems, fmt.Sprintf("%s is %s behind, more than maxLagBytes %s: a switchover to it is refused; check the network and its storage", c.Name, snapshot.HumanBytes(lag), snapshot.HumanBytes(d.MaxLagBytes)))
			continue
		}
		slot, stream := "no slot seen", "streaming"
		if sl := snapshot.SlotOf(primary, c); sl != nil {
			slot = "slot " + orNone(sl.WALStatus)
			switch sl.StreamTLS {
			case snapshot.StreamPlaintext:
				stream = "streaming in PLAINTEXT (its replication connection does not use TLS)"
			case "":
			default:
				stream = "streaming over " + sl.StreamTLS
			}
			if sl.WALStatus == "unreserved" || sl.WALStatus == "lost" {
				problems = append(problems, fmt.Sprintf("%s's slot %s is %s: it holds more WAL than max_slot_wal_keep_size; once removed, %s needs a rebuild", c.Name, sl.Name, sl.WALStatus, c.Name))
				continue
			}
		}
		ready = append(ready, fmt.Sprintf("%s %s behind, %s, %s", c.Name, snapshot.HumanBytes(lag), stream, slot))
	}
	if len(problems) > 0 {
		return Verdict{Message: "NOT DR ready: " + strings.Join(problems, "; ")}
	}
	if len(ready) == 0 {
		return Verdict{Message: "NOT DR ready: no standby"}
	}
	return Verdict{Healthy: true, Message: "DR ready: " + strings.Join(ready, "; ")}
}

func orNone(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
