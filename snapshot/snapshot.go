// Package snapshot holds the values the planner reasons about: what every
// site of a topology looked like when observed (its cluster objects in
// flavor-neutral terms, Services, Secrets by presence, Leases, PostgreSQL
// facts), and the owned part of a cluster object that plans carry as their
// payload. It does no I/O: live fills it, diff reads it, apply writes Specs.
package snapshot

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Snapshot is the observed state of every site of a topology.
type Snapshot struct {
	Topology string          `json:"topology"`
	Sites    []SiteState     `json:"sites"`
	Clusters []ClusterState  `json:"clusters"`
	Orphans  []OrphanCluster `json:"orphans,omitempty"`
}

// SiteState is one site as observed.
type SiteState struct {
	Name string `json:"name"`
	// Kind is "patroni" for a site of Patroni clusters outside
	// Kubernetes, "" for a kubernetes site.
	Kind      string     `json:"kind,omitempty"`
	Context   string     `json:"context"`
	Reachable bool       `json:"reachable"`
	Error     string     `json:"error,omitempty"`
	NodeIPs   []string   `json:"nodeIPs,omitempty"`
	Lease     *LeaseInfo `json:"lease,omitempty"`
	// Drills are the DR drills the site keeps for the topology, newest
	// first.
	Drills []DrillRecord `json:"drills,omitempty"`
	// Unsupported says why the site's operator cannot take what pgtopo
	// writes (its CRD lacks what the flavor needs).
	Unsupported string `json:"unsupported,omitempty"`
	// ReadErrors are the site-wide reads that failed other than by the
	// object's absence (a denied list of orphans, the Lease): what pgtopo
	// could not see, never taken for nothing there.
	ReadErrors []string `json:"readErrors,omitempty"`
}

// LeaseInfo is the pgtopo lock as observed.
type LeaseInfo struct {
	Holder    string `json:"holder"`
	RenewedAt string `json:"renewedAt,omitempty"`
	Seconds   int    `json:"durationSeconds,omitempty"`
}

// ClusterState is one cluster of the topology as observed.
type ClusterState struct {
	Name      string `json:"name"`
	Site      string `json:"site"`
	Namespace string `json:"namespace"`
	// Exists is false when the CR is absent.
	Exists          bool        `json:"exists"`
	Object          *Object     `json:"object,omitempty"`
	Service         *Service    `json:"service,omitempty"`
	Endpoint        *Endpoint   `json:"endpoint,omitempty"`
	Credentials     SecretState `json:"credentials"`
	BootstrapSecret SecretState `json:"bootstrapSecret"`
	PG              *PGState    `json:"pg,omitempty"`
	PGError         string      `json:"pgError,omitempty"`
	// AuthFailed: the server refused the credentials Secret's password.
	AuthFailed bool `json:"authFailed,omitempty"`
	// Error is a failure to observe the cluster's Kubernetes objects.
	Error string `json:"error,omitempty"`
	// SlotName is the physical slot the cluster streams through on its
	// primary, by the flavor's naming.
	SlotName string `json:"slotName,omitempty"`
}

// Service is the cluster's master Service.
type Service struct {
	Type      string `json:"type"`
	ClusterIP string `json:"clusterIP,omitempty"`
	NodePort  int    `json:"nodePort,omitempty"`
	Ingress   string `json:"ingress,omitempty"`
}

// Endpoint is host:port a peer (and pgtopo) uses to reach a cluster.
type Endpoint struct {
	Host string `json:"host"`
	Port int    `json:"port"`
}

func (e Endpoint) String() string { return e.Host + ":" + strconv.Itoa(e.Port) }

// SecretState says whether a Secret exists. KeyedDigest tells two Secrets'
// data apart within one run: an HMAC under a key the observer drew at
// random and never shows, so it cannot be tested against guesses offline.
// Plans show presence and resourceVersion, never a digest.
type SecretState struct {
	Name            string `json:"name,omitempty"`
	Exists          bool   `json:"exists"`
	KeyedDigest     string `json:"keyedDigest,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// Unread: not read at all, as an observer login asks (it holds no
	// Secret but its own); whether it exists is not known.
	Unread bool `json:"unread,omitempty"`
}

// PGState is what PostgreSQL says about itself.
type PGState struct {
	InRecovery           bool               `json:"inRecovery"`
	SystemID             string             `json:"systemIdentifier"`
	Timeline             int                `json:"timeline"`
	CurrentLSN           LSN                `json:"currentLSN,omitempty"`
	ReceiveLSN           LSN                `json:"receiveLSN,omitempty"`
	ReplayLSN            LSN                `json:"replayLSN,omitempty"`
	ServerVersion        int                `json:"serverVersion"`
	WalReceiver          *WalReceiver       `json:"walReceiver,omitempty"`
	Slots                []Slot             `json:"slots,omitempty"`
	Replication          []ReplicationPeer  `json:"replication,omitempty"`
	MultiCluster         []MultiClusterInfo `json:"multiClusterInfo,omitempty"`
	HasMultiClusterTable bool               `json:"hasMultiClusterTable"`
	// ReadOnlyDefault: new sessions start read-only (a fence).
	ReadOnlyDefault bool `json:"readOnlyDefault,omitempty"`
	// BaseBackups counts the base backups the server is serving (a
	// replica being built, a backup tool): the end of one writes WAL.
	BaseBackups int `json:"baseBackups,omitempty"`
	// LastReplayedCommit is when the last transaction a standby replayed
	// committed (pg_last_xact_replay_timestamp, RFC 3339), "" if none.
	LastReplayedCommit string `json:"lastReplayedCommit,omitempty"`
	// ReplayDelaySeconds is how long ago the last transaction a standby
	// replayed committed, while it has received WAL left to replay (0 when
	// caught up).
	ReplayDelaySeconds float64 `json:"replayDelaySeconds,omitempty"`
	// LastCommit is when the last transaction committed on a primary,
	// where track_commit_timestamp is on; "" otherwise.
	LastCommit string `json:"lastCommit,omitempty"`
	// OldestWAL is a primary's oldest WAL segment file still in pg_wal
	// ("" on a standby, or where the probe may not list pg_wal).
	OldestWAL string `json:"oldestWAL,omitempty"`
	// PendingRestart names the settings changed in the configuration that
	// take effect only once the server restarts (pg_settings.pending_restart).
	PendingRestart []string `json:"pendingRestart,omitempty"`
}

// SegmentNo is the number of the 16 MB WAL segment holding lsn, on any
// timeline.
func SegmentNo(lsn LSN) uint64 { return uint64(lsn) >> 24 }

// FileSegmentNo reads the segment number of a WAL file name (timeline,
// log, segment; 16 MB segments), and whether it is one.
func FileSegmentNo(name string) (uint64, bool) {
	if len(name) != 24 {
		return 0, false
	}
	log, err1 := strconv.ParseUint(name[8:16], 16, 32)
	seg, err2 := strconv.ParseUint(name[16:24], 16, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return log<<8 | seg, true
}

// EndOfWAL is the furthest WAL position the server has: its write position
// when primary, what it replayed when standby.
func (p *PGState) EndOfWAL() LSN {
	if !p.InRecovery {
		return p.CurrentLSN
	}
	return p.ReplayLSN
}

// WalReceiver is pg_stat_wal_receiver.
type WalReceiver struct {
	Status     string `json:"status"`
	SenderHost string `json:"senderHost"`
	SenderPort int    `json:"senderPort"`
	Timeline   int    `json:"receivedTimeline"`
	// LastMessage is when the receiver last heard from its sender (RFC 3339).
	LastMessage string `json:"lastMessage,omitempty"`
	// Slot is the slot it asks its sender for ("" for none).
	Slot string `json:"slot,omitempty"`
}

// Slot is a physical replication slot.
type Slot struct {
	Name       string `json:"name"`
	Active     bool   `json:"active"`
	RestartLSN LSN    `json:"restartLSN,omitempty"`
	// WALStatus is reserved, extended, unreserved or lost (PostgreSQL's
	// wal_status); RetainedBytes the WAL it holds back.
	WALStatus     string `json:"walStatus,omitempty"`
	RetainedBytes int64  `json:"retainedBytes,omitempty"`
	// StreamTLS is how the WAL sender streaming through the slot is
	// encrypted (pg_stat_ssl): its TLS version, StreamPlaintext when it is
	// not, empty when nothing streams through it.
	StreamTLS string `json:"streamTLS,omitempty"`
}

// SlotOf is the standby's slot on the primary, nil when not seen.
func SlotOf(primary, standby *ClusterState) *Slot {
	if primary == nil || primary.PG == nil || standby.SlotName == "" {
		return nil
	}
	for i := range primary.PG.Slots {
		if primary.PG.Slots[i].Name == standby.SlotName {
			return &primary.PG.Slots[i]
		}
	}
	return nil
}

// StreamPlaintext is a Slot's StreamTLS when its stream is not encrypted.
const StreamPlaintext = "plaintext"

// ReplicationPeer is a row of pg_stat_replication.
type ReplicationPeer struct {
	ApplicationName string `json:"applicationName"`
	ClientAddr      string `json:"clientAddr"`
	State           string `json:"state"`
	ReplayLSN       LSN    `json:"replayLSN,omitempty"`
}

// MultiClusterInfo is a row of sys_operator.multi_cluster_info.
type MultiClusterInfo struct {
	Cluster    string `json:"cluster"`
	ExternalIP string `json:"externalIP"`
	// Slot is the slot the operator keeps on the primary for the
	// cluster, where the catalogue says.
	Slot string `json:"slot,omitempty"`
}

// OrphanCluster is a CR labelled with this topology that the file no
// longer lists. pgtopo reports it, and deletes it only under
// spec.deletionPolicy delete (the plan's delete-cluster step).
type OrphanCluster struct {
	Name, Site, Namespace string
	// SlotName is the slot it streams through on the primary, by the
	// flavor's naming.
	SlotName string `json:",omitempty"`
	// Object is its object as read, nil when it could not be.
	Object *Object `json:",omitempty"`
}

// Cluster returns the named cluster's state.
func (s *Snapshot) Cluster(name string) (*ClusterState, bool) {
	for i := range s.Clusters {
		if s.Clusters[i].Name == name {
			return &s.Clusters[i], true
		}
	}
	return nil, false
}

// Site returns the named site's state.
func (s *Snapshot) Site(name string) (*SiteState, bool) {
	for i := range s.Sites {
		if s.Sites[i].Name == name {
			return &s.Sites[i], true
		}
	}
	return nil, false
}

// Writable reports whether the cluster's database answered and is not in
// recovery: it could take writes (a fence makes new sessions read-only, see
// Fenced, but any session can still turn that off).
func (c *ClusterState) Writable() bool { return c.PG != nil && !c.PG.InRecovery }

// TakesWrites reports whether new sessions of the cluster can write: out
// of recovery and not read-only by default (fenced by pgtopo fence, by a
// fence on return, or during a switchover).
func (c *ClusterState) TakesWrites() bool { return c.Writable() && !c.PG.ReadOnlyDefault }

// TakingWrites names the clusters whose new sessions can write: more than
// one is split brain. status, its exit code and the metrics share this
// one rule. (The planner counts every cluster out of recovery, fenced or
// not: a fenced primary is still one it must plan around.)
func (s *Snapshot) TakingWrites() []string {
	var out []string
	for i := range s.Clusters {
		if s.Clusters[i].TakesWrites() {
			out = append(out, s.Clusters[i].Name)
		}
	}
	return out
}

// Fenced reports whether the cluster is fenced by pgtopo fence: marked so,
// and its new sessions are read-only.
func (c *ClusterState) Fenced() bool {
	return c.Exists && c.Object != nil && c.Object.Marks.Fence != nil && c.PG != nil && c.PG.ReadOnlyDefault
}

// LSN is a PostgreSQL WAL position.
type LSN uint64

// ParseLSN reads the X/Y form.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("LSN %q: want X/Y", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// MarshalText writes the X/Y form.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads the X/Y form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	*l = v
	return err
}

// RecordedRevisions lists the distinct revisions the clusters' CRs say
// were last applied, sorted.
func (s *Snapshot) RecordedRevisions() []string {
	var out []string
	for _, c := range s.Clusters {
		if !c.Exists || c.Object == nil {
			continue
		}
		if rev := c.Object.Marks.Revision; rev != "" && !slices.Contains(out, rev) {
			out = append(out, rev)
		}
	}
	slices.Sort(out)
	return out
}

// Lag is how far a standby's replay is behind a primary's end of WAL.
func Lag(primary, standby *PGState) int64 {
	end := primary.EndOfWAL()
	if standby.ReplayLSN >= end {
		return 0
	}
	return int64(end - standby.ReplayLSN)
}

// StreamsFrom reports whether the cluster's WAL receiver streams from ep.
func (c *ClusterState) StreamsFrom(ep *Endpoint) bool {
	if c.PG == nil || ep == nil {
		return false
	}
	w := c.PG.WalReceiver
	return w != nil && w.Status == "streaming" && w.SenderHost == ep.Host && w.SenderPort == ep.Port
}

// Receiver describes the cluster's WAL receiver for people.
func (c *ClusterState) Receiver() string {
	if c.PG == nil || c.PG.WalReceiver == nil {
		return "none"
	}
	w := c.PG.WalReceiver
	return fmt.Sprintf("%s from %s:%d", w.Status, w.SenderHost, w.SenderPort)
}

// HumanBytes prints sizes as the file writes them (16 MiB).
func HumanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d %s", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// SiteDown reports whether the cluster's site was observed and did not
// answer.
func (s *Snapshot) SiteDown(cluster string) bool {
	c, ok := s.Cluster(cluster)
	if !ok {
		return false
	}
	site, ok := s.Site(c.Site)
	return ok && !site.Reachable
}

// Failovers lists the failover records on the clusters' objects, one per
// epoch (the furthest phase of each), oldest first.
func (s *Snapshot) Failovers() []FailoverRecord {
	by := map[int]FailoverRecord{}
	for _, c := range s.Clusters {
		if !c.Exists || c.Object == nil || c.Object.Marks.Failover == nil {
			continue
		}
		f := *c.Object.Marks.Failover
		if cur, ok := by[f.Epoch]; !ok || failoverRank[f.Phase] > failoverRank[cur.Phase] {
			by[f.Epoch] = f
		}
	}
	out := make([]FailoverRecord, 0, len(by))
	for _, e := range slices.Sorted(maps.Keys(by)) {
		out = append(out, by[e])
	}
	return out
}

// LastFailover is the newest failover record, nil when there is none.
func (s *Snapshot) LastFailover() *FailoverRecord {
	all := s.Failovers()
	if len(all) == 0 {
		return nil
	}
	return &all[len(all)-1]
}

var failoverRank = map[string]int{FailoverPromoting: 1, FailoverDone: 2}

// Journal is the unfinished switchover recorded on the cluster's object.
func (c *ClusterState) Journal() *Journal {
	if !c.Exists || c.Object == nil {
		return nil
	}
	return c.Object.Marks.Journal
}

// PGErrorText is why the cluster's database did not answer, in words for
// a refusal ("no error reported" when it gave none).
func (c *ClusterState) PGErrorText() string {
	if c.PGError == "" {
		return "no error reported"
	}
	return c.PGError
}

// With is s with the clusters and sites a partial look saw replaced by what
// it saw: a wait's poll of a few clusters over the step's last full look.
// A replaced site keeps its Lease and what the partial look did not read.
func (s *Snapshot) With(part *Snapshot) *Snapshot {
	out := *s
	out.Sites = slices.Clone(s.Sites)
	out.Clusters = slices.Clone(s.Clusters)
	for _, ps := range part.Sites {
		for i := range out.Sites {
			if out.Sites[i].Name == ps.Name {
				out.Sites[i].Reachable, out.Sites[i].Error, out.Sites[i].NodeIPs = ps.Reachable, ps.Error, ps.NodeIPs
			}
		}
	}
	for _, pc := range part.Clusters {
		for i := range out.Clusters {
			if out.Clusters[i].Name == pc.Name {
				out.Clusters[i] = pc
			}
		}
	}
	return &out
}
