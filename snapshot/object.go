package snapshot

// Object is a cluster's object as observed, in flavor-neutral terms: the
// fields pgtopo owns, pgtopo's own marks on it, and what the operator
// reports. The flavor reads it from and writes it to the real object.
type Object struct {
	Spec  Spec  `json:"spec"`
	Marks Marks `json:"marks,omitempty"`
	// Status is the operator's word for the cluster's state, as shown to
	// people; Ready is the flavor's reading of it.
	Status string `json:"status,omitempty"`
	Ready  bool   `json:"ready"`
	// ResourceVersion is the object's version as the API server gave it.
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// MarksError is set when a mark cannot be read (a hand-edited journal).
	MarksError string `json:"marksError,omitempty"`
	// PermanentSlots are the physical slots the cluster's own
	// configuration keeps on its leader (a Patroni cluster's dynamic
	// config); nil where the flavor keeps them elsewhere.
	PermanentSlots []string `json:"permanentSlots,omitempty"`
	// MemberSlots are the slots Patroni keeps on the cluster's leader for
	// the cluster's own members: not pgtopo's, and never dropped.
	MemberSlots []string `json:"memberSlots,omitempty"`
	// ForeignParameters are keys of Spec.Parameters that someone else set
	// (another field manager: a hand edit, another tool) and pgtopo does
	// not own: left to them unless the file declares the same key.
	ForeignParameters []string `json:"foreignParameters,omitempty"`
}

// Spec is the part of a cluster's object that pgtopo owns and writes as a
// whole. A plan's CR steps carry the exact Spec apply writes.
type Spec struct {
	// Flavor is FlavorPatroni for a Patroni cluster outside Kubernetes,
	// whose owned fields are its role alone; "" for an operator's object.
	Flavor string `json:"flavor,omitempty"`
	// Topology is the topology the object belongs to (a label).
	Topology    string            `json:"topology,omitempty"`
	Instances   int               `json:"instances"`
	TeamID      string            `json:"teamId,omitempty"`
	Version     string            `json:"version,omitempty"`
	Parameters  map[string]string `json:"parameters,omitempty"`
	VolumeSize  string            `json:"volumeSize,omitempty"`
	Replication Replication       `json:"replication"`
}

// Replication is how the cluster takes part in cross-cluster replication.
type Replication struct {
	Enabled     bool   `json:"enabled"`
	IsReplica   bool   `json:"isReplica"`
	PeerHost    string `json:"peerHost,omitempty"`
	PeerPort    int    `json:"peerPort,omitempty"`
	ServiceType string `json:"replSvcType,omitempty"`
	// BootstrapSecret names the Secret a standby bootstraps with.
	BootstrapSecret string `json:"bootstrapSecret,omitempty"`
	// PrimarySlot is the slot a Patroni standby cluster streams through
	// (standby_cluster.primary_slot_name); operators name it themselves.
	PrimarySlot string `json:"primarySlot,omitempty"`
}

// Peer is the endpoint a standby streams from, "" when none is set.
func (r Replication) Peer() string {
	if r.PeerHost == "" {
		return ""
	}
	return Endpoint{Host: r.PeerHost, Port: r.PeerPort}.String()
}

// SamePeer reports whether two replications name the same peer, without
// building either's string.
func (r Replication) SamePeer(o Replication) bool {
	if r.PeerHost == "" || o.PeerHost == "" {
		return r.PeerHost == o.PeerHost
	}
	return r.PeerHost == o.PeerHost && r.PeerPort == o.PeerPort
}

// PeerIs reports whether the replication's peer is ep.
func (r Replication) PeerIs(ep Endpoint) bool {
	return r.PeerHost != "" && r.PeerHost == ep.Host && r.PeerPort == ep.Port
}

// WithPeer returns the spec streaming from ep.
func (s Spec) WithPeer(ep Endpoint) Spec {
	s.Replication.PeerHost, s.Replication.PeerPort = ep.Host, ep.Port
	return s
}

// Marks are pgtopo's own records on a cluster's object: what was applied
// and an unfinished switchover. They are written apart from the Spec.
type Marks struct {
	Digest   string   `json:"digest,omitempty"`
	Revision string   `json:"revision,omitempty"`
	Journal  *Journal `json:"journal,omitempty"`
	// Fence records a break-glass fence (pgtopo fence) until unfenced.
	Fence *Fence `json:"fence,omitempty"`
	// Failover is the last failover of the topology, kept on every
	// cluster pgtopo could reach (the lost primary's once it returns).
	Failover *FailoverRecord `json:"failover,omitempty"`
	// Rebuild is a standby's rebuild under way, kept on the primary while
	// the standby has no object of its own to keep it on.
	Rebuild *RebuildRecord `json:"rebuild,omitempty"`
}

// RebuildRecord is a standby being rebuilt: deleted with its data, then
// created again as a standby from birth.
type RebuildRecord struct {
	Cluster  string `json:"cluster"`
	Evidence string `json:"evidence"`
	// Consent says where the policy came from (the file, or the flag).
	Consent string `json:"consent"`
	At      string `json:"at"`
}

// Failover phases.
const (
	// FailoverPromoting: consent recorded, the target is being promoted.
	FailoverPromoting = "promoting"
	// FailoverDone: the target is primary on a new timeline.
	FailoverDone = "done"
)

// FailoverRecord is a failover as carried out: who was lost, who took
// over, on what consent, and where their histories part. It stays after
// the failover: it is what fences the lost primary when it returns, and
// what makes the same consent void.
type FailoverRecord struct {
	Epoch int    `json:"epoch"`
	From  string `json:"from"`
	To    string `json:"to"`
	Phase string `json:"phase"`
	// SystemID and FromTimeline are the lost primary's, as the target
	// last saw them: the consent is bound to them.
	SystemID     string `json:"systemIdentifier"`
	FromTimeline int    `json:"fromTimeline"`
	// ForkLSN is the target's replay position when it was promoted: the
	// lost primary's WAL past it never reached the new primary.
	ForkLSN LSN `json:"forkLSN"`
	// LastReplayedCommit is the commit time of the last transaction the
	// target replayed: writes committed after it may be lost.
	LastReplayedCommit string `json:"lastReplayedCommit,omitempty"`
	// Consent says where the consent came from (the file, or the flag
	// and who ran it).
	Consent string `json:"consent"`
	At      string `json:"at"`
	// Returned describes the lost primary once it came back and was fenced.
	Returned *Returned `json:"returned,omitempty"`
}

// Returned is what pgtopo found on a lost primary when it came back.
type Returned struct {
	At string `json:"at"`
	// EndLSN is its end of WAL when fenced; Diverged the bytes past the
	// fork (0: it wrote nothing the new primary lacks).
	EndLSN   LSN   `json:"endLSN"`
	Diverged int64 `json:"divergedBytes"`
	// LastCommit is its last commit time, where track_commit_timestamp
	// allowed reading it.
	LastCommit string `json:"lastCommit,omitempty"`
	Rejoin     string `json:"rejoin"`
	// NeedsRebuild says why it cannot rejoin by rewind (a timeline of its
	// own, a rewind that did not bring it back, the rejoin policy): the
	// rejoin stopped after the fence, and the next plan shows the rebuild
	// as a step of its own, under the rebuild policy's consent.
	NeedsRebuild string `json:"needsRebuild,omitempty"`
	// Done: it is a standby of the new primary again (or, with the
	// manual policy, fenced and demoted): it is no longer stale.
	Done bool `json:"done,omitempty"`
}

// Fence is who fenced a cluster, when and why.
type Fence struct {
	By     string `json:"by"`
	At     string `json:"at"`
	Reason string `json:"reason,omitempty"`
}

// Switchover phases recorded in the journal.
const (
	PhaseDemoting = "demoting" // the old primary is being turned into a standby
	PhaseGated    = "gated"    // the target replayed the old primary's end of WAL
	PhasePromoted = "promoted" // the target was told to become primary
	// PhaseAborting: the switchover is being backed out; the old primary
	// is being restored. Only reached before promotion.
	PhaseAborting = "aborting"
)

// Journal is the switchover record kept on both clusters' objects, so that
// a run killed at any point can be resumed from it and live state, and
// never promotes without the gate (docs/architecture.md, "Switchover").
type Journal struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Phase    string `json:"phase"`
	SystemID string `json:"systemIdentifier,omitempty"`
	Timeline int    `json:"timeline,omitempty"`
	// GateLSN is the old primary's end of WAL once demoted; the target must
	// replay up to it before promotion.
	GateLSN string `json:"gateLSN,omitempty"`
}

// Field is one owned field of a Spec, named as the plan shows it.
type Field struct {
	Path  string
	Value string
}

// FlavorPatroni marks a Spec written through Patroni's REST API.
const FlavorPatroni = "patroni"

// FenceParameter is the setting a fence turns on: new sessions start
// read-only. As a parameter of a cluster's object (or a Patroni cluster's
// dynamic config) it holds from the server's start.
const FenceParameter = "default_transaction_read_only"

// TopologyLabel marks the objects and Secrets pgtopo makes with their
// topology's name.
const TopologyLabel = "pgtopo.dev/topology"

// DrillCloneLabel marks an isolated drill's clone with its topology's
// name: how the next drill finds one a killed drill left, and how import
// leaves it out. A clone carries no TopologyLabel, so no plan counts it.
const DrillCloneLabel = "pgtopo.dev/drill-clone-of"
