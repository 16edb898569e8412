package diff

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/topology"
)

// Options carry what the plan records but does not decide on.
type Options struct {
	// Revision is the git commit the topology was read from, if any.
	Revision string
	// History relates each revision recorded on a CR to Revision; a
	// recorded revision missing here counts as HistoryUnknown.
	History map[string]History
	// AllowRollback lets a plan move the recorded revision backwards.
	AllowRollback bool
}

// Roles as the plan shows them.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
	RoleAbsent  = "absent"
	RoleUnknown = "unknown"
)

// planner holds the inputs while a plan is computed.
type planner struct {
	d    *topology.Desired
	snap *live.Snapshot
	opt  Options
	plan Plan
}

// Compute plans the steps that make snap match d.
func Compute(d *topology.Desired, snap *live.Snapshot, opt Options) Plan {
	p := &planner{d: d, snap: snap, opt: opt,
		plan: Plan{Topology: d.Name, Revision: opt.Revision, Digest: d.Digest, Steps: []Step{}, Refusals: []Refusal{}, Notes: []Note{}}}
	p.run()
	sortSteps(p.plan.Steps)
	if len(p.plan.Steps) > 0 && !p.plan.Refused() {
		var locks []Subject
		var where []string
		for _, l := range d.LockSites() {
			locks = append(locks, Subject{Site: l.Site.Name, Namespace: l.Namespace})
			where = append(where, l.Site.Name+"/"+l.Namespace)
		}
		p.plan.Steps = append([]Step{{Action: ActionLock, Subject: locks[0], Locks: locks,
			Reason: fmt.Sprintf("hold Lease %s in every site (%s, in this order) so no other run changes this topology meanwhile",
				live.LeaseName(d.Name), strings.Join(where, ", "))}}, p.plan.Steps...)
	}
	if p.plan.Refused() {
		// A refused plan changes nothing; listing steps would suggest it might.
		p.plan.Steps = []Step{}
	}
	return p.plan
}

func (p *planner) refuse(subj *Subject, format string, args ...any) {
	p.plan.Refusals = append(p.plan.Refusals, Refusal{Subject: subj, Reason: fmt.Sprintf(format, args...)})
}

func (p *planner) note(subj *Subject, format string, args ...any) {
	p.plan.Notes = append(p.plan.Notes, Note{Subject: subj, Message: fmt.Sprintf(format, args...)})
}

func (p *planner) add(s Step) { p.plan.Steps = append(p.plan.Steps, s) }

func subjectOf(c topology.DesiredCluster) Subject {
	return Subject{Site: c.Site.Name, Namespace: c.Namespace, Cluster: c.Name}
}

func (p *planner) observed(name string) *live.ClusterState {
	c, ok := p.snap.Cluster(name)
	if !ok {
		return &live.ClusterState{Name: name}
	}
	return c
}

func (p *planner) run() {
	d := p.d
	for _, o := range p.snap.Orphans {
		s := Subject{Site: o.Site, Namespace: o.Namespace, Cluster: o.Name}
		p.note(&s, "labelled for topology %s but no longer in the file: left alone (pgtopo never deletes clusters)", d.Name)
	}
	// Without every site, split brain cannot be ruled out: refuse outright.
	for _, s := range p.snap.Sites {
		if !s.Reachable {
			p.refuse(nil, "site %s unreachable: %s", s.Name, s.Error)
		}
	}
	for _, c := range d.Clusters {
		if o := p.observed(c.Name); o.Error != "" {
			subj := subjectOf(c)
			p.refuse(&subj, "cannot observe %s: %s", c.Name, o.Error)
		}
	}
	p.checkRevisions()
	if p.plan.Refused() {
		p.roles("")
		return
	}

	var writable []string
	for _, c := range d.Clusters {
		if o := p.observed(c.Name); o.Exists && o.Writable() {
			writable = append(writable, c.Name)
		}
	}
	want := d.Primary()
	if len(writable) > 1 {
		others := without(writable, want.Name)
		livePrimary := others[0]
		if !slices.Contains(writable, want.Name) {
			livePrimary = writable[0]
		}
		p.refuse(nil, "split brain: %s are writable at once (live says primary is %s, file says %s); CR isReplica edited by hand? Fence one of them before running pgtopo again",
			strings.Join(writable, " and "), livePrimary, want.Name)
		p.roles("")
		return
	}
	livePrimary := ""
	if len(writable) == 1 {
		livePrimary = writable[0]
	}

	journal, journalOn := p.journal()
	switch {
	case journalOn != "":
		p.resumeSwitchover(journal, journalOn)
	case livePrimary == "":
		p.noLivePrimary(want)
	case livePrimary == want.Name:
		p.primaryDrift(want, p.observed(want.Name))
	default:
		p.switchover(livePrimary, want)
	}
	if p.plan.Refused() {
		p.roles("")
		return
	}
	p.standbys(want)
	p.fillExternalIPs(want, livePrimary)
	p.record()
	p.roles(want.Name)
}

// journal finds an unfinished switchover recorded on any CR.
func (p *planner) journal() (alauda.Journal, string) {
	for _, c := range p.d.Clusters {
		o := p.observed(c.Name)
		if !o.Exists {
			continue
		}
		j, ok, err := alauda.ParseJournal(o.CR.Annotations)
		if err != nil {
			subj := subjectOf(c)
			p.refuse(&subj, "%s: %v; fix or remove the annotation by hand", c.Name, err)
			continue
		}
		if ok {
			return j, c.Name
		}
	}
	return alauda.Journal{}, ""
}

func (p *planner) resumeSwitchover(j alauda.Journal, on string) {
	to, okTo := p.d.Cluster(j.To)
	from, okFrom := p.d.Cluster(j.From)
	if !okTo || !okFrom {
		p.refuse(nil, "a switchover journal on %s names %s → %s, which are not both in the file; finish or undo it by hand", on, j.From, j.To)
		return
	}
	if p.d.Primary().Name != to.Name {
		p.refuse(nil, "a switchover %s → %s is unfinished (phase %s) but the file now names %s as primary; apply the file that started it first",
			j.From, j.To, j.Phase, p.d.Primary().Name)
		return
	}
	p.add(Step{Action: ActionSwitchover, Subject: subjectOf(to),
		Reason:        fmt.Sprintf("resume switchover %s → %s from phase %s (journal on %s)", j.From, j.To, j.Phase, on),
		Switchover:    &Switchover{From: from.Name, To: to.Name, MaxLagBytes: p.d.MaxLagBytes, Resume: j.Phase},
		Preconditions: []Precondition{{Kind: CondSiteReachable, Site: from.Site.Name}, {Kind: CondSiteReachable, Site: to.Site.Name}},
	})
}

// noLivePrimary handles a world where nothing is writable: a fresh
// deployment, or a primary still coming up.
func (p *planner) noLivePrimary(want topology.DesiredCluster) {
	o := p.observed(want.Name)
	anyExists := false
	for _, c := range p.d.Clusters {
		if p.observed(c.Name).Exists {
			anyExists = true
		}
	}
	switch {
	case !o.Exists && !anyExists:
		p.add(Step{Action: ActionEnsurePrimary, Subject: subjectOf(want),
			Reason:        "create the primary CR and wait until it is Running and writable",
			Changes:       crChanges(nil, want, p.d, ""),
			Preconditions: []Precondition{{Kind: CondCRAbsent, Cluster: want.Name}}})
	case o.Exists && !o.CR.Replication.IsReplica:
		// Created by an earlier run and still coming up: wait for it.
		step := Step{Action: ActionEnsurePrimary, Subject: subjectOf(want),
			Reason:  fmt.Sprintf("wait until %s is Running and writable (status %q; %s)", want.Name, o.CR.Status, orNone(o.PGError)),
			Changes: crChanges(o.CR, want, p.d, "")}
		p.add(step)
	case !o.Exists:
		p.refuse(nil, "no cluster is writable and %s, the primary in the file, does not exist, while other clusters do: is the primary's site down? This needs a failover, which pgtopo does only when asked", want.Name)
	default:
		p.refuse(nil, "no cluster is writable: %s is a standby (isReplica true) and no pgtopo journal explains it; was a switchover half-done by hand?", want.Name)
	}
}

// primaryDrift plans an update of the primary's CR when it differs.
func (p *planner) primaryDrift(want topology.DesiredCluster, o *live.ClusterState) {
	if ch := crChanges(o.CR, want, p.d, ""); len(ch) > 0 {
		p.add(Step{Action: ActionUpdate, Subject: subjectOf(want), Reason: "the primary's CR differs from the file",
			Changes: ch, Preconditions: []Precondition{{Kind: CondWritable, Cluster: want.Name}}})
	}
	p.versionCheck(want, o)
}

func (p *planner) versionCheck(c topology.DesiredCluster, o *live.ClusterState) {
	if o.Exists && o.CR.Version != "" && o.CR.Version != c.Version {
		subj := subjectOf(c)
		p.refuse(&subj, "%s runs PostgreSQL %s but the file says %s: major upgrades are not something pgtopo does", c.Name, o.CR.Version, c.Version)
	}
}

// switchover plans the role swap from the live primary to the file's,
// or refuses with every reason the preflight finds.
func (p *planner) switchover(from string, to topology.DesiredCluster) {
	fromC, inFile := p.d.Cluster(from)
	if !inFile {
		p.refuse(nil, "the writable cluster %s is not in the file; pgtopo will not switch over from a cluster it does not manage", from)
		return
	}
	of, ot := p.observed(from), p.observed(to.Name)
	subj := subjectOf(to)
	refusals := len(p.plan.Refusals)
	reason := func(format string, args ...any) {
		p.refuse(&subj, "switchover to %s refused: %s", to.Name, fmt.Sprintf(format, args...))
	}
	switch {
	case !ot.Exists:
		reason("its CR does not exist; add it as a standby first (keep primary: %s), then switch over", from)
	case ot.PG == nil:
		reason("cannot read its database: %s", orNone(ot.PGError))
	case of.PG == nil:
		reason("cannot read the primary %s: %s", from, orNone(of.PGError))
	default:
		wr := ot.PG.WalReceiver
		switch {
		case !ot.PG.InRecovery:
			reason("it is not a standby")
		case wr == nil || wr.Status != "streaming":
			reason("it is not streaming (wal receiver: %s)", walStatus(wr))
		case of.Endpoint != nil && (wr.SenderHost != of.Endpoint.Host || wr.SenderPort != of.Endpoint.Port):
			reason("it streams from %s:%d, not from the primary %s at %s", wr.SenderHost, wr.SenderPort, from, of.Endpoint)
		}
		if ot.PG.SystemID != of.PG.SystemID {
			reason("%s system identifier %s differs from primary %s (%s): not a standby of this primary", to.Name, ot.PG.SystemID, from, of.PG.SystemID)
		}
		// A lower timeline on a standby streaming from the primary is only
		// stale reporting (no WAL since the switch); a higher one forked off.
		if ot.PG.Timeline > of.PG.Timeline {
			reason("timeline %d is ahead of the primary's %d: its history forked off", ot.PG.Timeline, of.PG.Timeline)
		}
		if lag := lagBytes(of.PG, ot.PG); lag > p.d.MaxLagBytes {
			reason("lag %s > maxLagBytes %s", humanBytes(lag), humanBytes(p.d.MaxLagBytes))
		}
		if ot.PG.ServerVersion/10000 != of.PG.ServerVersion/10000 {
			reason("PostgreSQL %d differs from the primary's %d", ot.PG.ServerVersion/10000, of.PG.ServerVersion/10000)
		}
	}
	if len(p.plan.Refusals) > refusals {
		return
	}
	p.add(Step{Action: ActionSwitchover, Subject: subj,
		Reason: fmt.Sprintf("switchover: primary %s → %s (demote %s, wait until %s has replayed all of its WAL, then promote)", from, to.Name, from, to.Name),
		Changes: []Change{
			{Field: from + ": clusterReplication.isReplica", Before: "false", After: "true"},
			{Field: from + ": numberOfInstances", Before: strconv.Itoa(of.CR.Instances), After: "1"},
			{Field: from + ": clusterReplication.peer", Before: peerOf(of.CR), After: endpointOf(ot)},
			{Field: to.Name + ": clusterReplication.isReplica", Before: "true", After: "false"},
			{Field: to.Name + ": numberOfInstances", Before: strconv.Itoa(ot.CR.Instances), After: strconv.Itoa(to.DeclaredInstances)},
		},
		Switchover: &Switchover{From: from, To: to.Name, MaxLagBytes: p.d.MaxLagBytes},
		Preconditions: []Precondition{
			{Kind: CondSiteReachable, Site: fromC.Site.Name}, {Kind: CondSiteReachable, Site: to.Site.Name},
			{Kind: CondOnlyPrimary, Cluster: from},
			{Kind: CondStreamingFrom, Cluster: to.Name, Other: from},
			{Kind: CondSameSystemID, Cluster: to.Name, Other: from},
			{Kind: CondSameTimeline, Cluster: to.Name, Other: from},
			{Kind: CondLagAtMost, Cluster: to.Name, Other: from, Bytes: p.d.MaxLagBytes},
			{Kind: CondSameMajor, Cluster: to.Name, Other: from},
		}})
}

// standbys plans secrets, creation, repointing and drift of every standby
// of the file's primary.
func (p *planner) standbys(want topology.DesiredCluster) {
	primary := p.observed(want.Name)
	needCheckpoint := false
	switching := p.hasAction(ActionSwitchover)
	for _, c := range p.d.Standbys() {
		o := p.observed(c.Name)
		subj := subjectOf(c)
		// Before the primary exists, a bootstrap secret already there cannot
		// be a copy of its credentials: someone else made it.
		stale := o.BootstrapSecret.Exists && (!primary.Exists ||
			(primary.Credentials.Exists && o.BootstrapSecret.Hash != primary.Credentials.Hash))
		if !o.BootstrapSecret.Exists || stale {
			before := "absent"
			if o.BootstrapSecret.Exists {
				before = "fingerprint " + o.BootstrapSecret.Hash
			}
			p.add(Step{Action: ActionBootstrapSecret, Subject: subj,
				Reason:  fmt.Sprintf("the standby needs the primary's admin credentials to bootstrap (copied from %s)", alauda.CredentialsSecret(want.Name)),
				Changes: []Change{{Field: "secret " + alauda.BootstrapSecret(p.d.Name), Before: before, After: "copy of " + alauda.CredentialsSecret(want.Name)}}})
		}
		if !o.Exists {
			needCheckpoint = true
			p.add(Step{Action: ActionCreateStandby, Subject: subj,
				Reason:        fmt.Sprintf("create %s as a standby of %s from birth and wait until it streams with the same system identifier", c.Name, want.Name),
				Changes:       crChanges(nil, c, p.d, endpointOf(primary)),
				Preconditions: []Precondition{{Kind: CondCRAbsent, Cluster: c.Name}, {Kind: CondWritable, Cluster: want.Name}}})
			continue
		}
		p.versionCheck(c, o)
		if switching && p.plan.Steps[p.indexOf(ActionSwitchover)].Switchover.From == c.Name {
			continue // the switchover turns it into a standby of the new primary
		}
		if o.PG != nil && primary.PG != nil && o.PG.SystemID != primary.PG.SystemID {
			p.refuse(&subj, "%s system identifier %s differs from primary %s (%s): not a standby of this primary; rebuild it (delete the CR and its volumes) and pgtopo will recreate it",
				c.Name, o.PG.SystemID, want.Name, primary.PG.SystemID)
			continue
		}
		if o.PG != nil && !o.PG.InRecovery {
			continue // writable: handled as split brain or switchover above
		}
		wantPeer := endpointOf(primary)
		if !switching && primary.Endpoint != nil && peerOf(o.CR) != wantPeer {
			p.add(Step{Action: ActionRepoint, Subject: subj, Reason: fmt.Sprintf("follow the primary %s", want.Name),
				Changes:       []Change{{Field: "clusterReplication.peer", Before: peerOf(o.CR), After: wantPeer}},
				Preconditions: []Precondition{{Kind: CondWritable, Cluster: want.Name}}})
		} else if switching {
			p.add(Step{Action: ActionRepoint, Subject: subj, Reason: fmt.Sprintf("follow the new primary %s after the switchover", want.Name),
				Changes: []Change{{Field: "clusterReplication.peer", Before: peerOf(o.CR), After: endpointOf(primary)}}})
		}
		if ch := crChanges(o.CR, c, p.d, "-"); len(ch) > 0 {
			p.add(Step{Action: ActionUpdate, Subject: subj, Reason: "the standby's CR differs from the file", Changes: ch})
		}
		if o.PG != nil && (o.PG.WalReceiver == nil || o.PG.WalReceiver.Status != "streaming") && !switching {
			p.note(&subj, "%s is not streaming (wal receiver: %s)", c.Name, walStatus(o.PG.WalReceiver))
		}
		if o.PG == nil && o.PGError != "" {
			p.note(&subj, "cannot read %s's database: %s", c.Name, o.PGError)
		}
	}
	if needCheckpoint && !switching {
		p.add(Step{Action: ActionCheckpoint, Subject: subjectOf(want),
			Reason:        "CHECKPOINT on the primary before a standby is created, so its base backup starts from a fresh checkpoint",
			Preconditions: []Precondition{{Kind: CondWritable, Cluster: want.Name}}})
	}
}

// fillExternalIPs applies the runbook's check: a LoadBalancer standby's row
// in the primary's multi_cluster_info with an empty external_ip gets the
// standby's load balancer address.
func (p *planner) fillExternalIPs(want topology.DesiredCluster, livePrimary string) {
	if livePrimary != want.Name {
		return
	}
	primary := p.observed(want.Name)
	if primary.PG == nil {
		return
	}
	for _, row := range primary.PG.MultiCluster {
		c, ok := p.d.Cluster(row.Cluster)
		if !ok || c.Name == want.Name || row.ExternalIP != "" {
			continue
		}
		o := p.observed(c.Name)
		if o.Service == nil || o.Service.Type != "LoadBalancer" || o.Endpoint == nil {
			continue
		}
		p.add(Step{Action: ActionFillExternalIP, Subject: subjectOf(c),
			Reason:        fmt.Sprintf("multi_cluster_info on %s lists %s with an empty external_ip", want.Name, c.Name),
			Changes:       []Change{{Field: "sys_operator.multi_cluster_info.external_ip", Before: "", After: o.Endpoint.Host}},
			Preconditions: []Precondition{{Kind: CondWritable, Cluster: want.Name}}})
	}
}

// record annotates every CR with the applied digest and revision.
func (p *planner) record() {
	for _, c := range p.d.Clusters {
		o := p.observed(c.Name)
		var ann map[string]string
		if o.Exists {
			ann = o.CR.Annotations
		}
		var ch []Change
		if ann[alauda.AnnotationDigest] != p.d.Digest {
			ch = append(ch, Change{Field: "annotation " + alauda.AnnotationDigest, Before: ann[alauda.AnnotationDigest], After: p.d.Digest})
		}
		if p.opt.Revision != "" && ann[alauda.AnnotationRevision] != p.opt.Revision {
			ch = append(ch, Change{Field: "annotation " + alauda.AnnotationRevision, Before: ann[alauda.AnnotationRevision], After: p.opt.Revision})
		}
		if len(ch) > 0 {
			p.add(Step{Action: ActionRecord, Subject: subjectOf(c), Reason: "remember what was applied", Changes: ch})
		}
	}
}

func (p *planner) roles(afterPrimary string) {
	for _, c := range p.d.Clusters {
		o := p.observed(c.Name)
		now := RoleUnknown
		switch {
		case !o.Exists && o.Error == "":
			now = RoleAbsent
		case o.PG != nil && !o.PG.InRecovery:
			now = RolePrimary
		case o.PG != nil:
			now = RoleStandby
		case o.Exists && o.CR.Replication.IsReplica:
			now = RoleStandby
		}
		after := now
		if !p.plan.Refused() && afterPrimary != "" {
			after = RoleStandby
			if c.Name == afterPrimary {
				after = RolePrimary
			}
		}
		p.plan.Clusters = append(p.plan.Clusters, ClusterRoles{Name: c.Name, Site: c.Site.Name, Namespace: c.Namespace, Now: now, After: after})
	}
}

func (p *planner) hasAction(a Action) bool { return p.indexOf(a) >= 0 }

func (p *planner) indexOf(a Action) int {
	for i, s := range p.plan.Steps {
		if s.Action == a {
			return i
		}
	}
	return -1
}

// crChanges lists the CR fields pgtopo owns that differ from the desired
// cluster. With cr nil it lists what creation sets. peer is the standby's
// desired peer ("" for a primary, "-" to leave the peer to repoint).
func crChanges(cr *alauda.CR, c topology.DesiredCluster, d *topology.Desired, peer string) []Change {
	var ch []Change
	add := func(field, before, after string) {
		if before != after {
			ch = append(ch, Change{Field: field, Before: before, After: after})
		}
	}
	var cur alauda.CR
	if cr != nil {
		cur = *cr
	}
	before := func(s string) string {
		if cr == nil {
			return ""
		}
		return s
	}
	add("numberOfInstances", before(strconv.Itoa(cur.Instances)), strconv.Itoa(c.Instances))
	if cr == nil {
		add("teamId", "", c.TeamID)
		add("postgresql.version", "", c.Version)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Parameters)) {
		add("postgresql.parameters."+k, cur.Parameters[k], c.Parameters[k])
	}
	if c.VolumeSize != "" {
		add("volume.size", cur.VolumeSize, c.VolumeSize)
	}
	add("clusterReplication.enabled", before(strconv.FormatBool(cur.Replication.Enabled)), "true")
	add("clusterReplication.replSvcType", cur.Replication.ServiceType, d.ServiceType)
	if c.Role == topology.RolePrimary {
		if cr != nil && cur.Replication.IsReplica {
			add("clusterReplication.isReplica", "true", "false")
		}
		return ch
	}
	add("clusterReplication.isReplica", before(strconv.FormatBool(cur.Replication.IsReplica)), "true")
	add("clusterReplication.bootstrapSecret", cur.Replication.BootstrapSecret, alauda.BootstrapSecret(d.Name))
	if peer != "-" {
		add("clusterReplication.peer", peerOf(cr), peer)
	}
	return ch
}

func peerOf(cr *alauda.CR) string {
	if cr == nil || cr.Replication.PeerHost == "" {
		return ""
	}
	return fmt.Sprintf("%s:%d", cr.Replication.PeerHost, cr.Replication.PeerPort)
}

// endpointOf is a cluster's peer endpoint, or a description of it when it
// does not exist yet (apply resolves it when it gets there).
func endpointOf(o *live.ClusterState) string {
	if o.Endpoint != nil {
		return o.Endpoint.String()
	}
	return "endpoint of " + o.Name
}

func lagBytes(primary, standby *live.PGState) int64 {
	end := primary.EndOfWAL()
	if standby.ReplayLSN >= end {
		return 0
	}
	return int64(end - standby.ReplayLSN)
}

func walStatus(w *live.WalReceiver) string {
	if w == nil {
		return "none"
	}
	return w.Status
}

func orNone(s string) string {
	if s == "" {
		return "no error reported"
	}
	return s
}

// humanBytes prints sizes as the file writes them (16 MiB).
func humanBytes(n int64) string {
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

func without(xs []string, x string) []string {
	var out []string
	for _, y := range xs {
		if y != x {
			out = append(out, y)
		}
	}
	return out
}
