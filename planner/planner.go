package planner

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/flavor/owned"
	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// planner holds the inputs while a plan is computed.
type planner struct {
	d    *topology.Desired
	snap *snapshot.Snapshot
	opt  plan.Options
	plan plan.Plan
	// switching is the planned switchover, if any.
	switching *plan.Switchover
	// failingOver is the planned failover, if any.
	failingOver *plan.Failover
	// lost is the lost primary whose site the plan does without.
	lost *lostPrimary
	// Indexes, so that planning is linear in the number of clusters.
	byName   map[string]*snapshot.ClusterState
	siteDown map[string]bool
}

// Compute plans the steps that make snap match d.
func Compute(d *topology.Desired, snap *snapshot.Snapshot, opt plan.Options) plan.Plan {
	p := &planner{d: d, snap: snap, opt: opt,
		plan:     plan.Plan{Topology: d.Name, Revision: opt.Revision, Digest: d.Digest, Steps: []plan.Step{}, Refusals: []plan.Refusal{}, Notes: []plan.Note{}},
		byName:   make(map[string]*snapshot.ClusterState, len(snap.Clusters)),
		siteDown: map[string]bool{}}
	for i := range snap.Clusters {
		p.byName[snap.Clusters[i].Name] = &snap.Clusters[i]
	}
	for _, s := range snap.Sites {
		p.siteDown[s.Name] = !s.Reachable
	}
	for _, s := range d.Sites() {
		p.plan.Sites = append(p.plan.Sites, plan.Site{Name: s.Name, Context: s.Context})
	}
	p.run()
	p.planRestarts()
	plan.SortSteps(p.plan.Steps)
	if p.plan.Refused() {
		// A refused plan changes nothing; listing steps would suggest it might.
		p.plan.Steps = []plan.Step{}
	}
	if len(p.plan.Steps) > 0 {
		steps := append(p.plan.Steps, plan.Step{}) // in place when there is room
		copy(steps[1:], steps)
		steps[0] = p.lockStep()
		p.plan.Steps = steps
	}
	return p.plan
}

func (p *planner) lockStep() plan.Step {
	var locks []plan.Subject
	var where []string
	for _, l := range p.d.LockSites() {
		if s, ok := p.snap.Site(l.Site.Name); ok && !s.Reachable {
			continue // a lost primary's site: the failover fences it on return
		}
		locks = append(locks, plan.Subject{Site: l.Site.Name, Namespace: l.Namespace})
		where = append(where, l.Site.Name+"/"+l.Namespace)
	}
	return plan.Step{Action: plan.ActionLock, Subject: locks[0], Payload: &plan.Lock{Lease: p.d.LeaseName(), Sites: locks},
		Reason: fmt.Sprintf("hold Lease %s in every site (%s, in this order) so no other run changes this topology meanwhile",
			p.d.LeaseName(), strings.Join(where, ", "))}
}

func (p *planner) refuse(subj *plan.Subject, format string, args ...any) {
	p.plan.Refusals = append(p.plan.Refusals, plan.Refusal{Subject: subj, Reason: fmt.Sprintf(format, args...)})
}

func (p *planner) note(subj *plan.Subject, format string, args ...any) {
	p.plan.Notes = append(p.plan.Notes, plan.Note{Subject: subj, Message: fmt.Sprintf(format, args...)})
}

func (p *planner) add(s plan.Step) { p.plan.Steps = append(p.plan.Steps, s) }

func subjectOf(c topology.DesiredCluster) plan.Subject {
	return plan.Subject{Site: c.Site.Name, Namespace: c.Namespace, Cluster: c.Name}
}

func (p *planner) observed(name string) *snapshot.ClusterState {
	c, ok := p.byName[name]
	if !ok {
		return &snapshot.ClusterState{Name: name}
	}
	return c
}

// down reports whether a cluster's site was observed and did not answer.
func (p *planner) down(cluster string) bool {
	c, ok := p.byName[cluster]
	return ok && p.siteDown[c.Site]
}

// object is the cluster's live object, nil when it does not exist.
func (p *planner) object(name string) *snapshot.Object {
	if o := p.observed(name); o.Exists {
		return o.Object
	}
	return nil
}

func (p *planner) run() {
	d := p.d
	for _, o := range p.snap.Orphans {
		if d.DeletionPolicy != topology.DeletionDelete {
			s := plan.Subject{Site: o.Site, Namespace: o.Namespace, Cluster: o.Name}
			p.note(&s, "labelled for topology %s but no longer in the file: left alone (spec.deletionPolicy orphan, the default; delete deletes it)", d.Name)
		}
	}
	// Without every site, split brain cannot be ruled out: refuse outright,
	// unless the site is a lost primary's (a failover is how to go on).
	p.lost = p.findLost()
	for _, s := range p.snap.Sites {
		if !s.Reachable && (p.lost == nil || s.Name != p.lost.cluster.Site.Name) {
			p.refuse(nil, "site %s unreachable: %s", s.Name, s.Error)
		}
		if s.Reachable && s.Unsupported != "" {
			p.refuse(nil, "site %s: %s", s.Name, s.Unsupported)
		}
		for _, e := range s.ReadErrors {
			p.refuse(nil, "site %s: cannot read what the plan depends on, so nothing is planned from it: %s", s.Name, e)
		}
	}
	p.spentConsent()
	for _, c := range d.Clusters {
		if o := p.observed(c.Name); o.Error != "" {
			subj := subjectOf(c)
			p.refuse(&subj, "cannot observe %s: %s", c.Name, o.Error)
		} else if o.Exists && o.Object.MarksError != "" {
			subj := subjectOf(c)
			p.refuse(&subj, "%s: %s; fix or remove the annotation by hand", c.Name, o.Object.MarksError)
		}
	}
	for _, c := range d.Clusters {
		if o := p.observed(c.Name); o.Fenced() {
			subj := subjectOf(c)
			f := o.Object.Marks.Fence
			p.note(&subj, "%s is fenced (by %s at %s%s): it refuses new writes until pgtopo unfence %s", c.Name, f.By, f.At, reasonSuffix(f.Reason), c.Name)
		}
	}
	p.unmarkedFences()
	p.foreignParameters()
	p.checkCredentials()
	p.checkRevisions()
	if p.plan.Refused() {
		p.lostHint()
		p.roles("")
		return
	}
	// A lost primary that answers again is fenced before anything else.
	if p.rejoin() {
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
		livePrimary := writable[0]
		if others := without(writable, want.Name); slices.Contains(writable, want.Name) {
			livePrimary = others[0]
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

	if j, on := p.journal(); j != nil {
		p.resumeSwitchover(*j, on)
	} else if l := p.lost; l != nil && l.record != nil && l.record.Phase == snapshot.FailoverPromoting {
		p.resumeFailover(*l.record)
	} else if l != nil && l.record == nil {
		p.failover(l)
	} else if livePrimary == "" {
		p.noLivePrimary(want)
	} else if livePrimary == want.Name {
		p.primaryDrift(want)
	} else {
		p.switchover(livePrimary, want)
	}
	if p.plan.Refused() {
		p.roles("")
		return
	}
	if l := p.lost; l != nil && l.record != nil && l.record.Phase == snapshot.FailoverDone {
		p.lostNote(l)
	}
	p.standbys(want)
	p.slots(livePrimary)
	p.slotHygiene(livePrimary)
	if d.DeletionPolicy == topology.DeletionDelete {
		p.deletions(livePrimary)
	}
	p.fillExternalIPs(want, livePrimary)
	p.record()
	p.roles(want.Name)
}

// unmarkedFences notes a cluster whose new sessions start read-only with no
// fence mark and no switchover under way to explain it: a fence left behind
// (or set by hand) that makes a primary refuse writes, or a standby refuse
// them once promoted.
func (p *planner) unmarkedFences() {
	if j, _ := p.journal(); j != nil {
		return // the switchover's own fence
	}
	for _, c := range p.d.Clusters {
		o := p.observed(c.Name)
		if !o.Exists || o.PG == nil || !o.PG.ReadOnlyDefault || o.Object.Marks.Fence != nil || rejoinFence(o) {
			continue
		}
		subj := subjectOf(c)
		what := "it refuses writes"
		if !o.Writable() {
			what = "it would refuse writes once primary"
		}
		p.note(&subj, "%s starts new sessions read-only (default_transaction_read_only on) with no fence mark: %s; a fence left behind or set by hand: pgtopo unfence %s lifts it", c.Name, what, c.Name)
	}
}

// rejoinFence reports whether a cluster's fence is its fence on return
// from a failover: the rejoin under way lifts it, and policy manual keeps
// it for a DBA.
func rejoinFence(o *snapshot.ClusterState) bool {
	f := o.Object.Marks.Failover
	return f != nil && f.Returned != nil && (!f.Returned.Done || f.Returned.Rejoin == topology.RejoinManual)
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}

// checkCredentials refuses when the primary's credentials Secret does not
// authenticate: a plan would otherwise take it for a cluster still coming
// up, and copy the bad credentials to the standbys as their bootstrap
// Secret. A standby's that fails where the live primary's authenticates is
// stale: the primary's password was rotated and its role replicated, so
// the standby's own Secret is refreshed from the primary's. Otherwise a
// standby's failing Secret is a note: it cannot be read.
func (p *planner) checkCredentials() {
	want := p.d.Primary().Name
	for _, c := range p.d.Clusters {
		o := p.observed(c.Name)
		if !o.AuthFailed {
			continue
		}
		subj := subjectOf(c)
		msg := fmt.Sprintf("credentials Secret %s (%s/%s) fails to authenticate to %s: fix the Secret's password (or the role's); pgtopo copies it to no standby meanwhile",
			o.Credentials.Name, c.Site.Name, c.Namespace, c.Name)
		if c.Name == want || o.Exists && !o.Object.Spec.Replication.IsReplica {
			p.refuse(&subj, "%s", msg)
			continue
		}
		if fromDC, from, ok := p.refreshableFrom(c, o); ok {
			p.add(plan.Step{Action: plan.ActionRefreshCredentials, Subject: subj,
				Reason: fmt.Sprintf("its credentials Secret %s fails to authenticate to %s, whose roles are %s's, replicated: %s's password was changed; copy %s (the value is never shown)",
					o.Credentials.Name, c.Name, from.Name, from.Name, from.Credentials.Name),
				Payload: &plan.RefreshCredentials{From: subjectOf(fromDC), FromName: from.Credentials.Name, Name: o.Credentials.Name, Topology: p.d.Name},
				Changes: []plan.Change{{Field: "secret " + o.Credentials.Name, Before: "fails to authenticate", After: "username and password of " + from.Credentials.Name}}})
			continue
		}
		p.note(&subj, "%s", msg)
	}
}

// refreshableFrom is the live primary whose credentials a standby's stale
// Secret can be refreshed from: a writable operator cluster (not Patroni,
// whose credentials pgtopo is given) that authenticates with its own
// Secret, of which the standby's object says it is a replica.
func (p *planner) refreshableFrom(c topology.DesiredCluster, o *snapshot.ClusterState) (topology.DesiredCluster, *snapshot.ClusterState, bool) {
	if c.IsPatroni() || o.Credentials.Unread || !o.Credentials.Exists || o.Object == nil || !o.Object.Spec.Replication.IsReplica {
		return topology.DesiredCluster{}, nil, false
	}
	for i := range p.snap.Clusters {
		pr := &p.snap.Clusters[i]
		dc, known := p.d.Cluster(pr.Name)
		if pr.Name == c.Name || !known || dc.IsPatroni() || !pr.Writable() || pr.AuthFailed || !pr.Credentials.Exists {
			continue
		}
		return dc, pr, true
	}
	return topology.DesiredCluster{}, nil, false
}

// journal finds an unfinished switchover recorded on any cluster.
func (p *planner) journal() (*snapshot.Journal, string) {
	for _, c := range p.d.Clusters {
		if j := p.observed(c.Name).Journal(); j != nil {
			return j, c.Name
		}
	}
	return nil, ""
}

// desiredSpec is the spec a cluster should have in its role in the file.
// A standby's peer is the primary's endpoint when known.
func (p *planner) desiredSpec(c topology.DesiredCluster, primaryEP *snapshot.Endpoint) snapshot.Spec {
	if c.IsPatroni() {
		// A Patroni cluster's owned fields are its role: standby_cluster.
		s := snapshot.Spec{Flavor: snapshot.FlavorPatroni, Replication: snapshot.Replication{Enabled: true}}
		if c.Role == topology.RoleStandby {
			s.Replication.IsReplica = true
			s.Replication.PrimarySlot = p.observed(c.Name).SlotName
			if primaryEP != nil {
				s = s.WithPeer(*primaryEP)
			}
		}
		return s
	}
	s := snapshot.Spec{
		Topology: p.d.Name, Instances: c.Instances, TeamID: c.TeamID, Version: c.Version,
		Parameters: c.Parameters, VolumeSize: c.VolumeSize,
		Replication: snapshot.Replication{Enabled: true, ServiceType: p.d.ServiceType},
	}
	if c.Role == topology.RoleStandby {
		s.Replication.IsReplica = true
		s.Replication.BootstrapSecret = p.observed(c.Name).BootstrapSecret.Name
		if primaryEP != nil {
			s = s.WithPeer(*primaryEP)
		}
	}
	return s
}

// promoteFirst is the spec a promotion writes when Promoted would also add
// instances: Promoted with the count the target runs now. An operator
// builds new instances before, or beside, acting on the role, and the
// promotion, inside the write window, need not wait for them; they are
// added once the target takes writes. Nil when Promoted adds none (a
// resumed promotion whose target was scaled already, a Patroni cluster).
func (p *planner) promoteFirst(to topology.DesiredCluster, promoted snapshot.Spec) *snapshot.Spec {
	t := p.observed(to.Name)
	if to.IsPatroni() || !t.Exists || t.Object == nil {
		return nil
	}
	now := t.Object.Spec.Instances
	if now <= 0 || now >= promoted.Instances {
		return nil
	}
	first := promoted
	first.Instances = now
	return &first
}

func (p *planner) resumeSwitchover(j snapshot.Journal, on string) {
	to, okTo := p.d.Cluster(j.To)
	from, okFrom := p.d.Cluster(j.From)
	if !okTo || !okFrom {
		p.refuse(nil, "a switchover journal on %s names %s → %s, which are not both in the file; finish or undo it by hand", on, j.From, j.To)
		return
	}
	resume, reason := j.Phase, fmt.Sprintf("resume switchover %s → %s from phase %s (journal on %s)", j.From, j.To, j.Phase, on)
	switch want := p.d.Primary().Name; {
	case j.Phase == snapshot.PhaseAborting:
		reason = fmt.Sprintf("finish backing out switchover %s → %s (journal on %s): restore %s as primary", j.From, j.To, on, j.From)
	case want == from.Name && j.Phase != snapshot.PhasePromoted:
		// The file went back before the target was promoted: backing out
		// is safe, and is what the file now asks for.
		resume = snapshot.PhaseAborting
		reason = fmt.Sprintf("back out switchover %s → %s (phase %s, the target not promoted): the file names %s as primary again", j.From, j.To, j.Phase, j.From)
	case want != to.Name && j.Phase == snapshot.PhasePromoted:
		p.refuse(nil, "a switchover %s → %s is unfinished (phase %s, past the point of no return: %s was told to become primary) but the file names %s as primary; apply the file that started it first",
			j.From, j.To, j.Phase, j.To, want)
		return
	case want != to.Name:
		p.refuse(nil, "a switchover %s → %s is unfinished (phase %s, %s not promoted yet) but the file names %s as primary, neither of its ends; apply the file that started it (or one naming %s, which backs it out) first",
			j.From, j.To, j.Phase, j.To, want, j.From)
		return
	}
	fo, ot := p.observed(from.Name), p.observed(to.Name)
	if ot.Endpoint == nil || fo.Endpoint == nil {
		p.refuse(nil, "cannot resume switchover %s → %s: %s or %s has no endpoint", j.From, j.To, from.Name, to.Name)
		return
	}
	sw := &plan.Switchover{From: subjectOf(from), To: subjectOf(to), FromEndpoint: fo.Endpoint, ToEndpoint: ot.Endpoint,
		Demoted: p.desiredSpec(from, ot.Endpoint), Promoted: p.desiredSpec(to, nil), Restore: p.restoreSpec(from),
		MaxLagBytes: p.d.MaxLagBytes, MaxWritePauseSeconds: p.d.MaxWritePause.Seconds(), Resume: resume, FinalLSN: p.finalLSN()}
	sw.PromoteFirst = p.promoteFirst(to, sw.Promoted)
	p.switching = sw
	step := plan.Step{Action: plan.ActionSwitchover, Subject: subjectOf(to), Reason: reason, Payload: sw,
		Preconditions: []plan.Precondition{{Kind: plan.CondSiteReachable, Site: from.Site.Name}, {Kind: plan.CondSiteReachable, Site: to.Site.Name}}}
	if resume == snapshot.PhaseAborting {
		step.Subject = subjectOf(from)
		step.Changes = specChanges(p.object(from.Name), sw.Restore, "")
		for i := range step.Changes {
			step.Changes[i].Field = from.Name + ": " + step.Changes[i].Field
		}
		p.switching = nil // the old primary stays primary
	} else {
		step.Changes = p.switchoverChanges(sw)
	}
	p.add(step)
}

// restoreSpec is the old primary's spec as primary again, should a
// switchover back out: its role in the file that started it.
func (p *planner) restoreSpec(c topology.DesiredCluster) snapshot.Spec {
	c.Role, c.Instances, c.Peer = topology.RolePrimary, c.DeclaredInstances, ""
	return p.desiredSpec(c, nil)
}

// foreignParameters notes the parameters someone else set on a cluster's
// object that the file does not declare: pgtopo leaves them, and says so
// (by name only: a value could be anything).
func (p *planner) foreignParameters() {
	for _, c := range p.d.Clusters {
		o := p.observed(c.Name)
		if !o.Exists {
			continue
		}
		var left []string
		for _, k := range o.Object.ForeignParameters {
			if _, declared := c.Parameters[k]; !declared {
				left = append(left, k)
			}
		}
		if len(left) > 0 {
			subj := subjectOf(c)
			p.note(&subj, "postgresql.parameters set outside pgtopo (%s): left alone; declare them in spec.postgres.parameters for pgtopo to manage them", strings.Join(left, ", "))
		}
	}
}

// noLivePrimary handles a world where nothing is writable: a fresh
// deployment, or a primary still coming up.
func (p *planner) noLivePrimary(want topology.DesiredCluster) {
	o := p.observed(want.Name)
	anyExists := slices.ContainsFunc(p.d.Clusters, func(c topology.DesiredCluster) bool { return p.observed(c.Name).Exists })
	spec := p.desiredSpec(want, nil)
	switch {
	case !o.Exists && want.IsPatroni():
		p.refuse(nil, "no cluster is writable and %s, the primary in the file, is a Patroni cluster none of whose members answers (%s): pgtopo does not start VMs; start it, or name another primary", want.Name, patroniMembers(want))
	case !o.Exists && !anyExists:
		p.add(plan.Step{Action: plan.ActionEnsurePrimary, Subject: subjectOf(want),
			Reason:        "create the primary CR and wait until it is Running and writable",
			Payload:       &plan.EnsurePrimary{Spec: spec},
			Changes:       specChanges(nil, spec, ""),
			Preconditions: []plan.Precondition{{Kind: plan.CondCRAbsent, Cluster: want.Name}}})
	case o.Exists && !o.Object.Spec.Replication.IsReplica:
		// Created by an earlier run and still coming up: wait for it.
		p.add(plan.Step{Action: plan.ActionEnsurePrimary, Subject: subjectOf(want),
			Reason:        fmt.Sprintf("wait until %s takes writes (status %q; %s)", want.Name, o.Object.Status, o.PGErrorText()),
			Payload:       &plan.EnsurePrimary{Spec: spec, Existing: true},
			Changes:       specChanges(o.Object, spec, ""),
			Preconditions: []plan.Precondition{{Kind: plan.CondCRPresent, Cluster: want.Name}}})
	case !o.Exists:
		p.refuse(nil, "no cluster is writable and %s, the primary in the file, does not exist, while other clusters do: is the primary's site down? This needs a failover, which pgtopo does only when asked", want.Name)
	default:
		p.refuse(nil, "no cluster is writable: %s is a standby (isReplica true) and no pgtopo journal explains it; was a switchover half-done by hand?", want.Name)
	}
}

// primaryDrift plans an update of the primary's CR when it differs.
func (p *planner) primaryDrift(want topology.DesiredCluster) {
	obj := p.object(want.Name)
	spec := p.desiredSpec(want, nil)
	if ch := specChanges(obj, spec, ""); len(ch) > 0 {
		p.add(plan.Step{Action: plan.ActionUpdate, Subject: subjectOf(want), Reason: "the primary's CR differs from the file",
			Payload: &plan.Update{Spec: spec}, Changes: ch, Preconditions: []plan.Precondition{{Kind: plan.CondWritable, Cluster: want.Name}}})
	}
	p.versionCheck(want)
}

func (p *planner) versionCheck(c topology.DesiredCluster) {
	if obj := p.object(c.Name); obj != nil && obj.Spec.Version != "" && obj.Spec.Version != c.Version {
		subj := subjectOf(c)
		p.refuse(&subj, "%s runs PostgreSQL %s but the file says %s: major upgrades are not something pgtopo does", c.Name, obj.Spec.Version, c.Version)
	}
}

// switchoverPreconditions is the switchover's preflight: the planner
// refuses with every one that fails, and apply re-checks them all.
func switchoverPreconditions(from, to topology.DesiredCluster, maxLag int64) []plan.Precondition {
	return []plan.Precondition{
		{Kind: plan.CondSiteReachable, Site: from.Site.Name}, {Kind: plan.CondSiteReachable, Site: to.Site.Name},
		{Kind: plan.CondCRPresent, Cluster: to.Name},
		{Kind: plan.CondReadable, Cluster: to.Name}, {Kind: plan.CondReadable, Cluster: from.Name},
		{Kind: plan.CondOnlyPrimary, Cluster: from.Name},
		{Kind: plan.CondStandby, Cluster: to.Name, Other: from.Name},
		{Kind: plan.CondStreamingFrom, Cluster: to.Name, Other: from.Name},
		{Kind: plan.CondSameSystemID, Cluster: to.Name, Other: from.Name},
		{Kind: plan.CondSameTimeline, Cluster: to.Name, Other: from.Name},
		{Kind: plan.CondLagAtMost, Cluster: to.Name, Other: from.Name, Bytes: maxLag},
		{Kind: plan.CondSameMajor, Cluster: to.Name, Other: from.Name},
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
	subj := subjectOf(to)
	pre := switchoverPreconditions(fromC, to, p.d.MaxLagBytes)
	failed := false
	for _, c := range pre {
		if err := c.Holds(p.snap); err != nil {
			p.refuse(&subj, "switchover to %s refused: %v", to.Name, err)
			failed = true
			if c.Kind == plan.CondCRPresent || c.Kind == plan.CondReadable {
				return // the rest cannot be judged
			}
		}
	}
	if failed {
		return
	}
	fo, ot := p.observed(from), p.observed(to.Name)
	sw := &plan.Switchover{From: subjectOf(fromC), To: subj, FromEndpoint: fo.Endpoint, ToEndpoint: ot.Endpoint,
		Demoted: p.desiredSpec(fromC, ot.Endpoint), Promoted: p.desiredSpec(to, nil), Restore: p.restoreSpec(fromC),
		SystemID: fo.PG.SystemID, Timeline: fo.PG.Timeline, MaxLagBytes: p.d.MaxLagBytes, MaxWritePauseSeconds: p.d.MaxWritePause.Seconds(), FinalLSN: p.finalLSN()}
	sw.PromoteFirst = p.promoteFirst(to, sw.Promoted)
	p.switching = sw
	if ot.Object != nil && !ot.Object.Ready {
		p.note(&subj, "%s's operator reports it %s, not ready: the switchover waits until it does (up to the step timeout) before it fences %s, and refuses if it never does", to.Name, statusWord(ot.Object.Status), from)
	}
	if fo.Object != nil && !fo.Object.Ready {
		p.note(&subj, "%s's operator reports it %s, not ready: an instance it builds would take a base backup from it, so the switchover waits up to 20s for it to be ready before it fences %s", from, statusWord(fo.Object.Status), from)
	}
	p.add(plan.Step{Action: plan.ActionSwitchover, Subject: subj,
		Reason:        fmt.Sprintf("switchover: primary %s → %s (demote %s, wait until %s has replayed all of its WAL, then promote)", from, to.Name, from, to.Name),
		Changes:       p.switchoverChanges(sw),
		Payload:       sw,
		Preconditions: pre})
}

// switchoverChanges shows what the switchover writes on both ends.
func (p *planner) switchoverChanges(sw *plan.Switchover) []plan.Change {
	var out []plan.Change
	for _, end := range []struct {
		name string
		spec snapshot.Spec
	}{{sw.From.Cluster, sw.Demoted}, {sw.To.Cluster, sw.Promoted}} {
		for _, c := range specChanges(p.object(end.name), end.spec, "") {
			c.Field = end.name + ": " + c.Field
			out = append(out, c)
		}
	}
	return out
}

// standbys plans secrets, creation, repointing and drift of every standby
// of the file's primary.
func (p *planner) standbys(want topology.DesiredCluster) {
	primary := p.observed(want.Name)
	primaryEP := primary.Endpoint
	if p.switching != nil {
		primaryEP = p.switching.ToEndpoint
	}
	if p.failingOver != nil {
		primaryEP = p.failingOver.ToEndpoint
	}
	needCheckpoint := false
	for _, c := range p.d.Standbys() {
		o := p.observed(c.Name)
		subj := subjectOf(c)
		if p.down(c.Name) {
			continue // the lost primary: fenced and rejoined when it returns
		}
		if c.IsPatroni() {
			p.patroniStandby(c, o, primary, primaryEP)
			continue
		}
		// Before the primary exists, a bootstrap secret already there cannot
		// be a copy of its credentials: someone else made it.
		stale := o.BootstrapSecret.Exists && (!primary.Exists ||
			(primary.Credentials.Exists && o.BootstrapSecret.KeyedDigest != primary.Credentials.KeyedDigest))
		unread := o.BootstrapSecret.Unread || primary.Credentials.Unread
		if unread {
			p.note(&subj, "bootstrap Secret %s not read (observed with an observer login, which reads no other Secret): whether it is a current copy of %s is for apply to check", o.BootstrapSecret.Name, primary.Credentials.Name)
		}
		if !unread && (!o.BootstrapSecret.Exists || stale) {
			before := "absent"
			if o.BootstrapSecret.Exists {
				before = "present, not a copy of " + primary.Credentials.Name
				if v := o.BootstrapSecret.ResourceVersion; v != "" {
					before = fmt.Sprintf("present (resourceVersion %s), not a copy of %s", v, primary.Credentials.Name)
				}
			}
			p.add(plan.Step{Action: plan.ActionBootstrapSecret, Subject: subj,
				Reason:  fmt.Sprintf("the standby needs the primary's admin credentials to bootstrap (copied from %s)", primary.Credentials.Name),
				Payload: &plan.BootstrapSecret{From: subjectOf(want), FromName: primary.Credentials.Name, Name: o.BootstrapSecret.Name, Topology: p.d.Name},
				Changes: []plan.Change{{Field: "secret " + o.BootstrapSecret.Name, Before: before, After: "copy of " + primary.Credentials.Name}}})
		}
		if recordedRebuild(c.Name, primary) != nil && p.switching == nil && p.failingOver == nil {
			// A rebuild killed after the deletion: it goes on, on the
			// consent it recorded.
			needCheckpoint = p.rebuild(c, primary, primaryEP, "") || needCheckpoint
			continue
		}
		spec := p.desiredSpec(c, primaryEP)
		if !o.Exists {
			needCheckpoint = true
			create := &plan.CreateStandby{Spec: spec, Follows: want.Name}
			step := plan.Step{Action: plan.ActionCreateStandby, Subject: subj, Payload: create,
				Reason:        fmt.Sprintf("create %s as a standby of %s from birth and wait until it streams with the same system identifier", c.Name, want.Name),
				Changes:       specChanges(nil, spec, want.Name),
				Preconditions: []plan.Precondition{{Kind: plan.CondCRAbsent, Cluster: c.Name}}}
			if primaryEP == nil {
				create.PeerOf = want.Name
			} else {
				step.Preconditions = append(step.Preconditions, plan.Precondition{Kind: plan.CondWritable, Cluster: want.Name})
			}
			p.add(step)
			continue
		}
		p.versionCheck(c)
		if p.switching != nil && p.switching.From.Cluster == c.Name {
			continue // the switchover turns it into a standby of the new primary
		}
		if ev := rebuildEvidence(o, primary); ev != "" && p.failingOver == nil {
			needCheckpoint = p.rebuild(c, primary, primaryEP, ev) || needCheckpoint
			continue
		}
		if primaryEP == nil {
			spec.Replication.PeerHost, spec.Replication.PeerPort = o.Object.Spec.Replication.PeerHost, o.Object.Spec.Replication.PeerPort
		}
		ch := specChanges(o.Object, spec, "")
		repeer := primaryEP != nil && !o.Object.Spec.Replication.PeerIs(*primaryEP)
		if repeer {
			step := plan.Step{Action: plan.ActionRepoint, Subject: subj, Payload: &plan.Repoint{Spec: spec, Follows: want.Name}, Changes: ch,
				Reason: fmt.Sprintf("follow the primary %s", want.Name)}
			if p.switching != nil {
				step.Reason = fmt.Sprintf("follow the new primary %s after the switchover", want.Name)
			} else if p.failingOver != nil {
				step.Reason = fmt.Sprintf("follow the new primary %s after the failover", want.Name)
			} else {
				step.Preconditions = []plan.Precondition{{Kind: plan.CondWritable, Cluster: want.Name}}
			}
			p.add(step)
		} else if len(ch) > 0 {
			p.add(plan.Step{Action: plan.ActionUpdate, Subject: subj, Reason: "the standby's CR differs from the file", Payload: &plan.Update{Spec: spec}, Changes: ch})
		}
		if o.PG != nil && (o.PG.WalReceiver == nil || o.PG.WalReceiver.Status != "streaming") && p.switching == nil && p.failingOver == nil {
			p.note(&subj, "%s is not streaming (wal receiver: %s)", c.Name, o.Receiver())
		}
		if o.PG == nil && o.PGError != "" {
			p.note(&subj, "cannot read %s's database: %s", c.Name, o.PGError)
		}
	}
	if needCheckpoint && p.switching == nil && p.failingOver == nil {
		p.add(plan.Step{Action: plan.ActionCheckpoint, Subject: subjectOf(want), Payload: &plan.Checkpoint{},
			Reason:        "CHECKPOINT on the primary before a standby is created, so its base backup starts from a fresh checkpoint",
			Preconditions: []plan.Precondition{{Kind: plan.CondWritable, Cluster: want.Name}}})
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
		p.add(plan.Step{Action: plan.ActionFillExternalIP, Subject: subjectOf(c),
			Reason:        fmt.Sprintf("multi_cluster_info on %s lists %s with an empty external_ip", want.Name, c.Name),
			Payload:       &plan.FillExternalIP{Primary: want.Name, Cluster: c.Name, Host: o.Endpoint.Host},
			Changes:       []plan.Change{{Field: "sys_operator.multi_cluster_info.external_ip", Before: "", After: o.Endpoint.Host}},
			Preconditions: []plan.Precondition{{Kind: plan.CondWritable, Cluster: want.Name}}})
	}
}

// record marks every cluster's object with the applied digest and revision.
func (p *planner) record() {
	for _, c := range p.d.Clusters {
		if p.down(c.Name) || c.IsPatroni() && !p.observed(c.Name).Exists {
			continue // nothing to record on: lost, or a Patroni cluster not started
		}
		var now snapshot.Marks
		if obj := p.object(c.Name); obj != nil {
			now = obj.Marks
		}
		want := snapshot.Marks{Digest: p.d.Digest, Revision: now.Revision}
		if p.opt.Revision != "" {
			want.Revision = p.opt.Revision
		}
		var ch []plan.Change
		if now.Digest != want.Digest {
			ch = append(ch, plan.Change{Field: plan.MarkDigest, Before: now.Digest, After: want.Digest})
		}
		if now.Revision != want.Revision {
			ch = append(ch, plan.Change{Field: plan.MarkRevision, Before: now.Revision, After: want.Revision})
		}
		if len(ch) > 0 {
			p.add(plan.Step{Action: plan.ActionRecord, Subject: subjectOf(c), Reason: "remember what was applied", Payload: &plan.Record{Marks: want}, Changes: ch})
		}
	}
}

func (p *planner) roles(afterPrimary string) {
	p.plan.Clusters = make([]plan.ClusterRoles, 0, len(p.d.Clusters))
	for _, c := range p.d.Clusters {
		now := roleNow(p.observed(c.Name))
		if p.down(c.Name) {
			now = plan.RoleUnreachable
		}
		after := now
		if !p.plan.Refused() && afterPrimary != "" {
			after = plan.RoleStandby
			if c.Name == afterPrimary {
				after = plan.RolePrimary
			}
		}
		p.plan.Clusters = append(p.plan.Clusters, plan.ClusterRoles{Name: c.Name, Site: c.Site.Name, Namespace: c.Namespace, Now: now, After: after})
	}
}

// RoleOf is a cluster's role as observed, as plans and metrics name it.
func RoleOf(snap *snapshot.Snapshot, c *snapshot.ClusterState) string {
	if snap.SiteDown(c.Name) {
		return plan.RoleUnreachable
	}
	return roleNow(c)
}

// roleNow is a cluster's role as observed: what its database says, else
// what its object says, else unknown.
func roleNow(o *snapshot.ClusterState) string {
	if !o.Exists && o.Error == "" {
		return plan.RoleAbsent
	}
	if o.PG != nil {
		if o.PG.InRecovery {
			return plan.RoleStandby
		}
		return plan.RolePrimary
	}
	if o.Exists && o.Object.Spec.Replication.IsReplica {
		return plan.RoleStandby
	}
	return plan.RoleUnknown
}

// specChanges lists the owned fields whose payload value differs from the
// live object's (all of them when live is nil: creation). peerOf names the
// cluster whose endpoint becomes the peer once it is known.
//
// A parameter pgtopo set and the file no longer declares is a change (to
// none: the write leaves it out, which removes what pgtopo owned); one that
// someone else set is not, unless the file declares it too.
func specChanges(live *snapshot.Object, want snapshot.Spec, peerOf string) []plan.Change {
	fields := owned.For(want)
	var liveSpec snapshot.Spec
	if live != nil {
		liveSpec = ownedSpec(live, want)
		if fields.Same(liveSpec, want) {
			return nil // the common case, without listing every field twice
		}
	}
	var before map[string]string
	if live != nil {
		shown := fields.Shown(liveSpec)
		before = make(map[string]string, len(shown))
		for _, f := range shown {
			before[f.Path] = f.Value
		}
	}
	var out []plan.Change
	for _, k := range slices.Sorted(maps.Keys(liveSpec.Parameters)) {
		if _, declared := want.Parameters[k]; !declared {
			if field := fields.ParameterField(k); field != "" {
				out = append(out, plan.Change{Field: field, Before: liveSpec.Parameters[k], After: ""})
			}
		}
	}
	for _, f := range fields.Shown(want) {
		if f.Value == "" && fields.IsPeer(f.Path) && peerOf != "" && want.Replication.IsReplica {
			f.Value = "endpoint of " + peerOf + " (known once it exists)"
		}
		if f.Value == "" && fields.Omitted(f.Path) {
			continue // not written: left to whoever set it
		}
		if b := before[f.Path]; b != f.Value && !(live == nil && f.Value == "") {
			out = append(out, plan.Change{Field: f.Path, Before: b, After: f.Value})
		}
	}
	return out
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

// ownedSpec is live's spec as pgtopo compares it with want: without the
// parameters someone else set that want does not declare.
func ownedSpec(live *snapshot.Object, want snapshot.Spec) snapshot.Spec {
	s := live.Spec
	if len(live.ForeignParameters) == 0 {
		return s
	}
	s.Parameters = maps.Clone(s.Parameters)
	for _, k := range live.ForeignParameters {
		if _, declared := want.Parameters[k]; !declared {
			delete(s.Parameters, k)
		}
	}
	return s
}

// statusWord is an operator's status for a sentence ("no status" when it
// reports none).
func statusWord(s string) string {
	if s == "" {
		return "no status"
	}
	return s
}

// finalLSN is a switchover payload's FinalLSN: empty for the default
// (restart), so plans that use it read as they did before the field.
func (p *planner) finalLSN() string {
	if p.d.FinalLSN == topology.FinalLSNRestart {
		return ""
	}
	return p.d.FinalLSN
}
