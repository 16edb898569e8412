// Package topology holds the pgtopo topology file: its Go types, parsing with
// positions, defaults, and the desired per-cluster state derived from it.
package topology

import (
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// APIVersion and Kind identify a topology file.
const (
	APIVersion = "pgtopo.dev/v1alpha1"
	Kind       = "Topology"
)

// InCluster is the site context that means "the pod's own service account".
const InCluster = "in-cluster"

// Defaults applied when the file leaves a field out.
const (
	DefaultFlavor      = "alauda"
	DefaultTeamID      = "ACID"
	DefaultServiceType = "ClusterIP"
	DefaultMaxLagBytes = "16Mi"
	// DefaultMaxWritePause is the write-outage budget of a switchover.
	DefaultMaxWritePause = 30 * time.Second
	DefaultInstances     = 1
)

// Topology is one v1alpha1 topology file.
type Topology struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`
}

// Metadata names the topology; the name labels the lease and the annotations.
type Metadata struct {
	Name string `json:"name"`
}

// Spec is the desired shape of the replication group.
type Spec struct {
	Flavor      string      `json:"flavor,omitempty"`
	Postgres    Postgres    `json:"postgres"`
	Replication Replication `json:"replication,omitempty"`
	Sites       []Site      `json:"sites"`
	Clusters    []Cluster   `json:"clusters"`
	Primary     string      `json:"primary"`
	// AcceptDataLoss is the reviewed consent to a failover
	// (docs/disaster-recovery.md).
	AcceptDataLoss *Consent `json:"acceptDataLoss,omitempty"`
	// DeletionPolicy says what happens to a cluster removed from the file:
	// DeletionOrphan (the default) leaves it, DeletionDelete deletes it.
	DeletionPolicy string `json:"deletionPolicy,omitempty"`
	// Drills are what DR drills check (docs/disaster-recovery.md).
	Drills *Drills `json:"drills,omitempty"`
	// Failover is who decides a failover (docs/automatic-failover.md).
	Failover *FailoverPolicy `json:"failover,omitempty"`
}

// FailoverPolicy is spec.failover: manual (reviewed consent) or automatic
// (the sites' agents, by a majority of votes).
type FailoverPolicy struct {
	Mode        string             `json:"mode,omitempty"`
	After       string             `json:"after,omitempty"`
	MaxDataLoss *resource.Quantity `json:"maxDataLoss,omitempty"`
}

// Failover modes.
const (
	FailoverManual    = "manual"
	FailoverAutomatic = "automatic"
)

// DefaultFailoverAfter is how long the primary's site must be out of a
// majority's sight before an automatic failover, when the file says not.
const DefaultFailoverAfter = 60 * time.Second

// Drills are what DR drills check.
type Drills struct {
	Checks []DrillCheck `json:"checks,omitempty"`
}

// DrillCheck is SQL that must return one row whose one column is true,
// run on an isolated drill's promoted clone.
type DrillCheck struct {
	Name string `json:"name"`
	SQL  string `json:"sql"`
}

// Deletion policies for clusters removed from the file.
const (
	DeletionOrphan = "orphan"
	DeletionDelete = "delete"
)

// Rebuild policies for a standby that cannot catch up.
const (
	RebuildNever = "never" // refused with the evidence (the default)
	RebuildAllow = "allow" // deleted with its data and created again
)

// Consent to lose the writes of a lost primary that did not reach the new
// one. It is bound to the lost primary's system identifier and timeline,
// so it authorises one failover and is spent once that is carried out.
type Consent struct {
	Cluster          string `json:"cluster"`
	SystemIdentifier string `json:"systemIdentifier"`
	Timeline         int    `json:"timeline"`
}

// Rejoin policies: how a lost primary rejoins once its site returns and
// pgtopo has fenced and demoted it.
const (
	RejoinRewind  = "rewind"  // pg_rewind; a rebuild when that fails
	RejoinRebuild = "rebuild" // its data removed, recreated as a standby
	RejoinManual  = "manual"  // fenced and demoted, the rest left to a DBA
)

// Postgres settings shared by every cluster: a standby must match its primary.
type Postgres struct {
	Version string `json:"version"`
	TeamID  string `json:"teamId,omitempty"`
	// Parameters accepts YAML scalars; the CR wants strings, see Desired.
	Parameters map[string]any `json:"parameters,omitempty"`
	// TLS is how pgtopo's connections check the servers; nil is
	// verify-full against the system's roots (applied in Desired, so files
	// that leave it out keep their digest).
	TLS *PostgresTLS `json:"tls,omitempty"`
}

// TLS modes of pgtopo's connections to PostgreSQL, libpq's sslmode names.
const (
	// TLSVerifyFull: encrypted, the server's certificate chains to the CA
	// and names the endpoint's host (the default).
	TLSVerifyFull = "verify-full"
	// TLSVerifyCA: encrypted, the certificate chains to the CA; any name.
	TLSVerifyCA = "verify-ca"
	// TLSRequire: encrypted, the certificate unchecked.
	TLSRequire = "require"
	// TLSDisable: plaintext, password included. Validate warns about it.
	TLSDisable = "disable"
)

// PostgresTLS says how pgtopo's connections check the servers they reach.
type PostgresTLS struct {
	// Mode is one of the TLS* modes; empty is TLSVerifyFull.
	Mode string `json:"mode,omitempty"`
	// CA is where the CA bundle that verifies the servers comes from;
	// nil is the system's roots.
	CA *CASource `json:"ca,omitempty"`
}

// CASource names a CA bundle in each Kubernetes site, in the namespace of
// the cluster being reached: a ConfigMap (as trust-manager distributes
// one) or a Secret (as cert-manager writes ca.crt). Exactly one is set.
// A Patroni site has no such objects: its bundle comes with its
// credentials (PGTOPO_PATRONI_PG_CA_FILE, see cli).
type CASource struct {
	ConfigMap *KeyRef `json:"configMap,omitempty"`
	Secret    *KeyRef `json:"secret,omitempty"`
}

// KeyRef is one key of a ConfigMap or Secret.
type KeyRef struct {
	Name string `json:"name"`
	// Key defaults to DefaultCAKey.
	Key string `json:"key,omitempty"`
}

// DefaultCAKey is the key a CA bundle is read from when the file names none.
const DefaultCAKey = "ca.crt"

// Object is the source as people read it: `ConfigMap pg-ca (key ca.crt)`.
func (s CASource) Object() (kind, name, key string) {
	ref := s.ConfigMap
	kind = "ConfigMap"
	if ref == nil {
		ref, kind = s.Secret, "Secret"
	}
	if ref == nil {
		return "", "", ""
	}
	key = ref.Key
	if key == "" {
		key = DefaultCAKey
	}
	return kind, ref.Name, key
}

// Replication settings of the group.
type Replication struct {
	ServiceType string             `json:"serviceType,omitempty"`
	MaxLagBytes *resource.Quantity `json:"maxLagBytes,omitempty"`
	// MaxWritePause bounds how long a switchover may refuse writes
	// ("30s", "2m"); past it, or when the target stalls, the switchover
	// backs out while that is safe. Its default is applied in Desired, so
	// files that leave it out keep their digest.
	MaxWritePause string `json:"maxWritePause,omitempty"`
	// Rejoin is the topology's rejoin policy (default rewind).
	Rejoin string `json:"rejoin,omitempty"`
	// Rebuild is the topology's rebuild policy (default never).
	Rebuild string `json:"rebuild,omitempty"`
	// DropSlots names slots on the primary that pgtopo may drop although
	// it cannot tell whose they are.
	DropSlots []string `json:"dropSlots,omitempty"`
	// PrimaryRestart is whether a settings change may restart the primary
	// (PrimaryRestartNever when empty).
	PrimaryRestart string `json:"primaryRestart,omitempty"`
	// BootstrapSecret names the Secret a standby bootstraps with, when not
	// the default (a Secret made by hand, kept by import).
	BootstrapSecret string `json:"bootstrapSecret,omitempty"`
	// FinalLSN is where a switchover reads the old primary's end of WAL
	// (FinalLSNRestart when empty).
	FinalLSN string `json:"finalLSN,omitempty"`
}

// Where a switchover reads the old primary's end of WAL, the LSN its
// target must replay before it is promoted.
const (
	// FinalLSNRestart: from the old primary restarted in recovery. The
	// default: Patroni demotes a leader to a standby cluster's leader with
	// an immediate shutdown, which writes no shutdown checkpoint.
	FinalLSNRestart = "restart"
	// FinalLSNShutdownCheckpoint: from the old primary's shutdown
	// checkpoint as the target replays it (pg_walinspect on the target),
	// or from the old primary restarted in recovery, whichever comes
	// first: faster with an operator that demotes with a clean shutdown.
	FinalLSNShutdownCheckpoint = "shutdownCheckpoint"
)

// Primary restart policies: a restart of the primary refuses writes.
const (
	PrimaryRestartNever = "never" // refused, with what it would cost (the default)
	PrimaryRestartAllow = "allow"
)

// Site kinds.
const (
	// SiteKubernetes: clusters are operator objects in one Kubernetes
	// cluster, reached through a kubeconfig context (the default).
	SiteKubernetes = "kubernetes"
	// SitePatroni: clusters are Patroni clusters outside Kubernetes (VMs),
	// reached through their members' REST API.
	SitePatroni = "patroni"
)

// Site is one place clusters run: a Kubernetes cluster reached through a
// kubeconfig context, or a set of Patroni clusters outside Kubernetes.
type Site struct {
	Name string `json:"name"`
	// Kind is SiteKubernetes when empty, so files that leave it out keep
	// their digest.
	Kind    string `json:"kind,omitempty"`
	Context string `json:"context,omitempty"`
	// MaxSwitchovers bounds the switchovers run at once in the site when
	// several topologies apply side by side (0: the flag's bound).
	MaxSwitchovers int `json:"maxSwitchovers,omitempty"`
}

// Patroni reports whether the site is a set of Patroni clusters.
func (s Site) Patroni() bool { return s.Kind == SitePatroni }

// KindName is the site's kind as people read it.
func (s Site) KindName() string {
	if s.Patroni() {
		return "Patroni"
	}
	return "Kubernetes"
}

// Cluster is one PostgreSQL cluster (one CR) in a site.
type Cluster struct {
	Name      string `json:"name"`
	Site      string `json:"site"`
	Namespace string `json:"namespace"`
	Instances int    `json:"instances,omitempty"`
	// Rejoin overrides the topology's rejoin policy for this cluster.
	Rejoin string `json:"rejoin,omitempty"`
	// Rebuild overrides the topology's rebuild policy for this cluster.
	Rebuild  string    `json:"rebuild,omitempty"`
	Volume   *Volume   `json:"volume,omitempty"`
	Endpoint *Endpoint `json:"endpoint,omitempty"`
	// Patroni describes a cluster in a patroni site.
	Patroni *PatroniCluster `json:"patroni,omitempty"`
}

// PatroniCluster is a Patroni cluster outside Kubernetes: its scope and
// where its members' REST API answers. Its credentials are never in the
// file (cli reads them from the environment).
type PatroniCluster struct {
	Scope   string     `json:"scope"`
	Members []Endpoint `json:"members"`
	// TLS: the REST API serves HTTPS.
	TLS bool `json:"tls,omitempty"`
}

// Volume of each instance.
type Volume struct {
	Size resource.Quantity `json:"size"`
}

// Endpoint overrides the address peers use to reach a cluster, e.g. a DNS
// name in front of a LoadBalancer.
type Endpoint struct {
	Host string `json:"host"`
	Port int    `json:"port"`
}

// ApplyDefaults fills in what the file left out.
func (t *Topology) ApplyDefaults() {
	s := &t.Spec
	if s.Flavor == "" {
		s.Flavor = DefaultFlavor
	}
	if s.Postgres.TeamID == "" {
		s.Postgres.TeamID = DefaultTeamID
	}
	if s.Replication.ServiceType == "" {
		s.Replication.ServiceType = DefaultServiceType
	}
	if s.Replication.MaxLagBytes == nil {
		q := resource.MustParse(DefaultMaxLagBytes)
		s.Replication.MaxLagBytes = &q
	}
	for i := range s.Clusters {
		if s.Clusters[i].Instances == 0 && s.Clusters[i].Patroni == nil {
			s.Clusters[i].Instances = DefaultInstances
		}
	}
}

// Site returns the named site.
func (t *Topology) Site(name string) (Site, bool) {
	for _, s := range t.Spec.Sites {
		if s.Name == name {
			return s, true
		}
	}
	return Site{}, false
}
