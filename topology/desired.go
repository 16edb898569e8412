package topology

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"
)

// Role of a cluster in the group.
type Role string

// Roles.
const (
	RolePrimary Role = "primary"
	RoleStandby Role = "standby"
)

// Desired is what the live world should look like once a topology is applied.
type Desired struct {
	Name string
	// Digest fingerprints the whole topology (after defaults); record
	// writes it so a later run can tell what was applied.
	Digest      string
	Flavor      string
	ServiceType string
	MaxLagBytes int64
	// MaxWritePause is the switchover's write-outage budget.
	MaxWritePause time.Duration
	// Clusters in file order; the primary is also at Clusters[PrimaryIndex].
	Clusters     []DesiredCluster
	PrimaryIndex int
	// AcceptDataLoss is the file's consent to a failover, if any.
	AcceptDataLoss *Consent
	// DeletionPolicy is what happens to clusters removed from the file.
	DeletionPolicy string
	// DropSlots are slots the file lists for cleanup.
	DropSlots []string
	// EmptySites are declared sites that hold no cluster of the file.
	EmptySites []Site
	// TLS is how connections check the servers, its mode always set.
	TLS PostgresTLS
	// PrimaryRestart is the file's primary restart policy.
	PrimaryRestart string
	// FinalLSN is where a switchover reads the old primary's end of WAL,
	// always set.
	FinalLSN string
	// BootstrapSecret names the standbys' bootstrap Secret when the file
	// does; empty, the flavor's name for the topology's.
	BootstrapSecret string
	// DrillChecks are what an isolated drill checks on its clone.
	DrillChecks []DrillCheck
	// Failover is the failover policy, its mode always set.
	Failover Failover
	// index maps a cluster's name to its position in Clusters.
	index map[string]int
}

// DesiredCluster is the desired state of one cluster.
type DesiredCluster struct {
	Name      string
	Site      Site
	Namespace string
	Role      Role
	// Instances is what the CR should run now: the declared count for the
	// primary, 1 for a standby (the operator's limit).
	Instances int
	// DeclaredInstances is the count the cluster runs once it is primary.
	DeclaredInstances int
	Version           string
	TeamID            string
	Parameters        map[string]string
	VolumeSize        string
	Endpoint          *Endpoint
	// Rejoin is how the cluster rejoins after it was a lost primary.
	Rejoin string
	// RebuildAllowed: a standby that cannot catch up may be deleted with
	// its data and created again.
	RebuildAllowed bool
	// Peer is the cluster a standby streams from; empty for the primary.
	Peer string
	// Patroni is set for a cluster in a patroni site; Namespace is then
	// its scope, which names it in subjects as a namespace would.
	Patroni *PatroniCluster
}

// IsPatroni reports whether the cluster is a Patroni cluster outside
// Kubernetes.
func (c DesiredCluster) IsPatroni() bool { return c.Patroni != nil }

// Primary returns the desired primary.
func (d *Desired) Primary() DesiredCluster { return d.Clusters[d.PrimaryIndex] }

// Cluster returns the named cluster.
func (d *Desired) Cluster(name string) (DesiredCluster, bool) {
	if i, ok := d.index[name]; ok && i < len(d.Clusters) && d.Clusters[i].Name == name {
		return d.Clusters[i], true
	}
	for _, c := range d.Clusters { // a Desired not made by Topology.Desired
		if c.Name == name {
			return c, true
		}
	}
	return DesiredCluster{}, false
}

// Sites returns every site that holds a cluster, in file order, then the
// declared sites that hold none (observed for what the file no longer
// lists there).
func (d *Desired) Sites() []Site {
	var out []Site
	seen := map[string]bool{}
	for _, c := range d.Clusters {
		if !seen[c.Site.Name] {
			seen[c.Site.Name] = true
			out = append(out, c.Site)
		}
	}
	for _, s := range d.EmptySites {
		if !seen[s.Name] {
			seen[s.Name] = true
			out = append(out, s)
		}
	}
	return out
}

// Failover is the failover policy with its defaults: who decides, and for
// an automatic one after how long and losing at most how much.
type Failover struct {
	Mode           string
	After          time.Duration
	MaxDataLossLSN int64 // bytes of WAL
}

// Automatic reports whether the agents fail over by themselves.
func (f Failover) Automatic() bool { return f.Mode == FailoverAutomatic }

func (p *FailoverPolicy) desired() (Failover, error) {
	f := Failover{Mode: FailoverManual, After: DefaultFailoverAfter}
	if p == nil {
		return f, nil
	}
	f.Mode = cmp.Or(p.Mode, FailoverManual)
	if p.After != "" {
		after, err := time.ParseDuration(p.After)
		if err != nil {
			return f, fmt.Errorf("spec.failover.after %q: %w", p.After, err)
		}
		f.After = after
	}
	if p.MaxDataLoss != nil {
		f.MaxDataLossLSN = p.MaxDataLoss.Value()
	}
	return f, nil
}

// Standbys returns the desired standbys in file order.
func (d *Desired) Standbys() []DesiredCluster {
	out := make([]DesiredCluster, 0, max(len(d.Clusters)-1, 0))
	for i, c := range d.Clusters {
		if i != d.PrimaryIndex {
			out = append(out, c)
		}
	}
	return out
}

// Desired derives the per-cluster desired state. It expects a validated
// topology with defaults applied and reports what it cannot resolve.
func (t *Topology) Desired() (*Desired, error) {
	params, err := t.Spec.Postgres.StringParameters()
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", t.Metadata.Name, err)
	}
	d := &Desired{
		Name:           t.Metadata.Name,
		Digest:         t.Digest(),
		Flavor:         t.Spec.Flavor,
		ServiceType:    t.Spec.Replication.ServiceType,
		PrimaryIndex:   -1,
		AcceptDataLoss: t.Spec.AcceptDataLoss,
		DeletionPolicy: DeletionOrphan,
		DropSlots:      t.Spec.Replication.DropSlots,
	}
	if p := t.Spec.DeletionPolicy; p != "" {
		d.DeletionPolicy = p
	}
	if q := t.Spec.Replication.MaxLagBytes; q != nil {
		d.MaxLagBytes = q.Value()
	}
	d.MaxWritePause = DefaultMaxWritePause
	if s := t.Spec.Replication.MaxWritePause; s != "" {
		pause, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("topology %s: spec.replication.maxWritePause %q: %w", t.Metadata.Name, s, err)
		}
		d.MaxWritePause = pause
	}
	for i, c := range t.Spec.Clusters {
		if c.Name == t.Spec.Primary {
			d.PrimaryIndex = i
		}
	}
	d.PrimaryRestart = t.Spec.Replication.PrimaryRestart
	d.FinalLSN = cmp.Or(t.Spec.Replication.FinalLSN, FinalLSNRestart)
	d.BootstrapSecret = t.Spec.Replication.BootstrapSecret
	if t.Spec.Drills != nil {
		d.DrillChecks = t.Spec.Drills.Checks
	}
	if d.Failover, err = t.Spec.Failover.desired(); err != nil {
		return nil, fmt.Errorf("topology %s: %w", t.Metadata.Name, err)
	}
	d.TLS = PostgresTLS{Mode: TLSVerifyFull}
	if tls := t.Spec.Postgres.TLS; tls != nil {
		d.TLS.CA = tls.CA
		if tls.Mode != "" {
			d.TLS.Mode = tls.Mode
		}
	}
	if d.PrimaryIndex < 0 {
		return nil, fmt.Errorf("topology %s: primary %q is not a cluster of the topology", t.Metadata.Name, t.Spec.Primary)
	}
	sites := make(map[string]Site, len(t.Spec.Sites))
	for _, s := range t.Spec.Sites {
		if _, dup := sites[s.Name]; !dup {
			sites[s.Name] = s
		}
	}
	for i, c := range t.Spec.Clusters {
		site, ok := sites[c.Site]
		if !ok {
			return nil, fmt.Errorf("cluster %s: site %q is not declared", c.Name, c.Site)
		}
		dc := DesiredCluster{
			Name:              c.Name,
			Site:              site,
			Namespace:         c.Namespace,
			Role:              RolePrimary,
			Instances:         c.Instances,
			DeclaredInstances: c.Instances,
			Version:           t.Spec.Postgres.Version,
			TeamID:            t.Spec.Postgres.TeamID,
			Parameters:        params,
			Endpoint:          c.Endpoint,
			Rejoin:            RejoinRewind,
			Patroni:           c.Patroni,
		}
		if c.Patroni != nil {
			dc.Namespace = c.Patroni.Scope
		}
		if r := t.Spec.Replication.Rejoin; r != "" {
			dc.Rejoin = r
		}
		if c.Rejoin != "" {
			dc.Rejoin = c.Rejoin
		}
		rebuild := t.Spec.Replication.Rebuild
		if c.Rebuild != "" {
			rebuild = c.Rebuild
		}
		dc.RebuildAllowed = rebuild == RebuildAllow && c.Patroni == nil
		if c.Volume != nil {
			dc.VolumeSize = c.Volume.Size.String()
		}
		if i != d.PrimaryIndex {
			dc.Role = RoleStandby
			dc.Instances = min(dc.Instances, 1)
			dc.Peer = t.Spec.Primary
		}
		d.Clusters = append(d.Clusters, dc)
	}
	used := map[string]bool{}
	for _, c := range d.Clusters {
		used[c.Site.Name] = true
	}
	for _, s := range t.Spec.Sites {
		if !used[s.Name] {
			used[s.Name] = true
			d.EmptySites = append(d.EmptySites, s)
		}
	}
	d.index = make(map[string]int, len(d.Clusters))
	for i, c := range d.Clusters {
		d.index[c.Name] = i
	}
	return d, nil
}

// Digest is a short fingerprint of the topology with defaults applied.
func (t *Topology) Digest() string {
	b, _ := json.Marshal(t)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16]
}

// StringParameters renders the parameters as the strings the CR expects.
func (p Postgres) StringParameters() (map[string]string, error) {
	if len(p.Parameters) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(p.Parameters))
	for k := range p.Parameters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		switch v := p.Parameters[k].(type) {
		case string:
			out[k] = v
		case bool:
			out[k] = map[bool]string{true: "on", false: "off"}[v]
		case float64:
			out[k] = strconv.FormatFloat(v, 'f', -1, 64)
		case int64:
			out[k] = strconv.FormatInt(v, 10)
		case int:
			out[k] = strconv.Itoa(v)
		default:
			return nil, fmt.Errorf("parameter %s: %T is not a string, number or boolean", k, v)
		}
	}
	return out, nil
}

// LockSite is where a run holds the topology's Lease in one site.
type LockSite struct {
	Site      Site
	Namespace string
}

// LockSites lists where a run holds the topology's Lease: every
// kubernetes site (a patroni site has no Lease), in name order, each in the namespace of its cluster that sorts first. Two
// runs whose files differ (another primary, one site more) still share the
// Leases of the sites they have in common, and taking them in one order
// cannot deadlock.
func (d *Desired) LockSites() []LockSite {
	first := map[string]DesiredCluster{}
	for _, c := range d.Clusters {
		if c.Site.Patroni() {
			continue
		}
		if f, ok := first[c.Site.Name]; !ok || c.Name < f.Name {
			first[c.Site.Name] = c
		}
	}
	out := make([]LockSite, 0, len(first))
	for _, c := range first {
		out = append(out, LockSite{Site: c.Site, Namespace: c.Namespace})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site.Name < out[j].Site.Name })
	return out
}

// Voters are the sites that vote in an automatic failover: every
// kubernetes site, witnesses (sites with no cluster) included, by name.
func (d *Desired) Voters() []string {
	var out []string
	for _, s := range d.Sites() {
		if !s.Patroni() && !slices.Contains(out, s.Name) {
			out = append(out, s.Name)
		}
	}
	slices.Sort(out)
	return out
}

// VoteNamespace is where a voting site keeps its vote: beside the
// topology's Lease, and in a witness in the primary's namespace.
func (d *Desired) VoteNamespace(site string) string {
	for _, l := range d.LockSites() {
		if l.Site.Name == site {
			return l.Namespace
		}
	}
	return d.Primary().Namespace
}

// VoteLeaseName is the Lease that holds a site's vote.
func (d *Desired) VoteLeaseName() string { return d.LeaseName() + "-vote" }

// LeaseName is the Lease that locks the topology in every site.
func (d *Desired) LeaseName() string { return "pgtopo-" + d.Name }

// DrillsConfigMap names the ConfigMap, beside the Lease, that keeps the
// topology's last DR drills.
func (d *Desired) DrillsConfigMap() string { return d.LeaseName() + "-drills" }

// DrillsKey is the key of the drills' JSON in that ConfigMap.
const DrillsKey = "drills.json"

// PrimarySiteOnly is d narrowed to the primary's site: its clusters there
// and nothing of the other sites. It is what an agent acting alone in that
// site (the quorum's self-fence) observes and changes, so that sites out of
// its sight cost it no wait.
func (d *Desired) PrimarySiteOnly() *Desired {
	n := *d
	site := d.Primary().Site.Name
	n.Clusters, n.EmptySites, n.index = nil, nil, map[string]int{}
	for _, c := range d.Clusters {
		if c.Site.Name != site {
			continue
		}
		if c.Name == d.Primary().Name {
			n.PrimaryIndex = len(n.Clusters)
		}
		n.index[c.Name] = len(n.Clusters)
		n.Clusters = append(n.Clusters, c)
	}
	return &n
}
