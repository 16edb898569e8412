package planner

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// fencedSpec is a live spec with the fence on return added as a parameter,
// leaving the parameters another manager set to it.
func fencedSpec(live *snapshot.Object) snapshot.Spec {
	s := live.Spec
	s.Parameters = maps.Clone(s.Parameters)
	for _, k := range live.ForeignParameters {
		delete(s.Parameters, k)
	}
	if s.Parameters == nil {
		s.Parameters = map[string]string{}
	}
	s.Parameters[plan.FenceParameter] = "on"
	return s
}

// lostPrimary is a cluster whose site does not answer, which the plan
// treats as the lost primary.
type lostPrimary struct {
	cluster topology.DesiredCluster
	record  *snapshot.FailoverRecord // a failover from it, already recorded
}

// away lists the file's clusters whose site did not answer.
func (p *planner) away() []topology.DesiredCluster {
	var out []topology.DesiredCluster
	for _, c := range p.d.Clusters {
		if p.down(c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// findLost decides whether an unreachable site is a lost primary's: one
// already failed over from (recorded), or, when nothing reachable is
// writable and the file's primary is a reachable standby, the one cluster
// that is away. Any other unreachable site is refused as before.
func (p *planner) findLost() *lostPrimary {
	away := p.away()
	if len(away) == 0 {
		return nil
	}
	sites := map[string]bool{}
	for _, c := range away {
		sites[c.Site.Name] = true
	}
	if len(sites) > 1 {
		return nil
	}
	// A recorded failover from the cluster that is away: being promoted
	// (resume), or done and its target the primary (still away). One whose
	// target is not writable is history: the cluster was lost again.
	if rec := p.snap.LastFailover(); rec != nil {
		if c, ok := p.d.Cluster(rec.From); ok && p.down(c.Name) && len(away) == 1 &&
			(rec.Phase == snapshot.FailoverPromoting || p.observed(rec.To).Writable()) {
			return &lostPrimary{cluster: c, record: rec}
		}
	}
	want := p.d.Primary()
	t := p.observed(want.Name)
	if p.down(want.Name) || t.PG == nil || !t.PG.InRecovery {
		return nil
	}
	for _, c := range p.d.Clusters {
		if p.observed(c.Name).Writable() {
			return nil
		}
	}
	if len(away) != 1 {
		return nil
	}
	return &lostPrimary{cluster: away[0]}
}

// failover plans the promotion of the file's primary after its primary's
// site was lost, or refuses and says what consent it needs.
func (p *planner) failover(l *lostPrimary) {
	from, to := l.cluster, p.d.Primary()
	t := p.observed(to.Name)
	subj, fromSubj := subjectOf(to), subjectOf(from)
	p.failoverWords(from, to, t)
	c, source, ok := p.consent(from, t)
	if !ok {
		return
	}
	sw := &plan.Failover{From: fromSubj, To: subj, ToEndpoint: t.Endpoint, Promoted: p.desiredSpec(to, nil),
		SystemID: c.SystemIdentifier, FromTimeline: c.Timeline, Epoch: p.nextEpoch(), Consent: source}
	if t.Exists && t.Object.Spec.Replication.PeerHost != "" {
		sw.FromEndpoint = &snapshot.Endpoint{Host: t.Object.Spec.Replication.PeerHost, Port: t.Object.Spec.Replication.PeerPort}
	}
	sw.PromoteFirst = p.promoteFirst(to, sw.Promoted)
	p.failingOver = sw
	changes := specChanges(t.Object, sw.Promoted, "")
	for i := range changes {
		changes[i].Field = to.Name + ": " + changes[i].Field
	}
	p.add(plan.Step{Action: plan.ActionFailover, Subject: subj, Payload: sw, Changes: changes,
		Reason: fmt.Sprintf("failover: %s (site %s) is lost; promote %s on consent (%s) to lose %s's writes it never received, then repoint the reachable standbys",
			from.Name, from.Site.Name, to.Name, source, from.Name),
		Preconditions: []plan.Precondition{
			{Kind: plan.CondSiteUnreachable, Site: from.Site.Name},
			{Kind: plan.CondReadable, Cluster: to.Name},
			{Kind: plan.CondInRecovery, Cluster: to.Name},
		}})
}

// resumeFailover finishes a failover whose consent is recorded.
func (p *planner) resumeFailover(rec snapshot.FailoverRecord) {
	to, ok := p.d.Cluster(rec.To)
	from, okFrom := p.d.Cluster(rec.From)
	if !ok || !okFrom {
		p.refuse(nil, "a failover %s → %s is recorded (epoch %d) but the file does not list both; restore them in the file", rec.From, rec.To, rec.Epoch)
		return
	}
	if want := p.d.Primary().Name; want != rec.To {
		p.refuse(nil, "a failover %s → %s is unfinished (epoch %d, consent recorded, %s being promoted) but the file names %s as primary; apply a file with primary: %s first",
			rec.From, rec.To, rec.Epoch, rec.To, want, rec.To)
		return
	}
	t := p.observed(to.Name)
	sw := &plan.Failover{From: subjectOf(from), To: subjectOf(to), ToEndpoint: t.Endpoint, Promoted: p.desiredSpec(to, nil),
		SystemID: rec.SystemID, FromTimeline: rec.FromTimeline, Epoch: rec.Epoch, Consent: rec.Consent, Resume: snapshot.FailoverPromoting}
	sw.PromoteFirst = p.promoteFirst(to, sw.Promoted)
	p.failingOver = sw
	changes := specChanges(t.Object, sw.Promoted, "")
	for i := range changes {
		changes[i].Field = to.Name + ": " + changes[i].Field
	}
	p.add(plan.Step{Action: plan.ActionFailover, Subject: subjectOf(to), Payload: sw, Changes: changes,
		Reason:        fmt.Sprintf("resume failover %s → %s (epoch %d): consent recorded on %s; finish promoting %s", rec.From, rec.To, rec.Epoch, rec.Consent, rec.To),
		Preconditions: []plan.Precondition{{Kind: plan.CondReadable, Cluster: to.Name}}})
}

func (p *planner) nextEpoch() int {
	n := 0
	for _, f := range p.snap.Failovers() {
		n = max(n, f.Epoch)
	}
	return n + 1
}

// consent finds the consent to a failover from `from`, bound to the
// system identifier and timeline the target last saw it on, or refuses,
// saying what consent would look like. A file's consent that a recorded
// failover used is spent and never consents again.
func (p *planner) consent(from topology.DesiredCluster, t *snapshot.ClusterState) (topology.Consent, string, bool) {
	seen := topology.Consent{Cluster: from.Name, SystemIdentifier: t.PG.SystemID, Timeline: t.PG.Timeline}
	to := p.d.Primary().Name
	if flag := p.opt.AcceptDataLoss; flag != "" {
		if flag != from.Name {
			p.refuse(nil, "--accept-data-loss names %s, but the lost primary is %s: name the cluster whose writes may be lost", flag, from.Name)
			return seen, "", false
		}
		return seen, plan.ConsentFlag, true
	}
	c := p.d.AcceptDataLoss
	if c == nil {
		p.refuse(nil, "failover to %s needs consent to lose %s's writes that %s never received: add to the file, in the same change as primary: %s, spec.acceptDataLoss: {cluster: %s, systemIdentifier: \"%s\", timeline: %d}, or run pgtopo apply --accept-data-loss %s (break-glass)",
			to, from.Name, to, to, seen.Cluster, seen.SystemIdentifier, seen.Timeline, from.Name)
		return seen, "", false
	}
	for _, f := range p.snap.Failovers() {
		if f.From == c.Cluster && f.SystemID == c.SystemIdentifier && f.FromTimeline == c.Timeline {
			p.refuse(nil, "spec.acceptDataLoss is spent: failover %s → %s (epoch %d) was carried out on it at %s; a new failover needs new consent: {cluster: %s, systemIdentifier: \"%s\", timeline: %d}",
				f.From, f.To, f.Epoch, f.At, seen.Cluster, seen.SystemIdentifier, seen.Timeline)
			return seen, "", false
		}
	}
	var wrong []string
	if c.Cluster != seen.Cluster {
		wrong = append(wrong, fmt.Sprintf("it names %s, but the lost primary is %s", c.Cluster, seen.Cluster))
	}
	if c.SystemIdentifier != seen.SystemIdentifier {
		wrong = append(wrong, fmt.Sprintf("system identifier %s, but %s's is %s", c.SystemIdentifier, to, seen.SystemIdentifier))
	}
	if c.Timeline != seen.Timeline {
		wrong = append(wrong, fmt.Sprintf("timeline %d, but %s last streamed %s's timeline %d", c.Timeline, to, from.Name, seen.Timeline))
	}
	if len(wrong) > 0 {
		p.refuse(nil, "spec.acceptDataLoss does not consent to this failover: %s; it was written for another one. Consent for this one: {cluster: %s, systemIdentifier: \"%s\", timeline: %d}",
			strings.Join(wrong, "; "), seen.Cluster, seen.SystemIdentifier, seen.Timeline)
		return seen, "", false
	}
	return seen, plan.ConsentFile, true
}

// failoverWords says, in notes every output format shows, who is lost and
// since when, what the target has, and which writes may be lost.
func (p *planner) failoverWords(from, to topology.DesiredCluster, t *snapshot.ClusterState) {
	fs := subjectOf(from)
	site, _ := p.snap.Site(from.Site.Name)
	pg := t.PG
	heard := "its WAL receiver is not running, so it has no contact with " + from.Name + " now"
	if w := pg.WalReceiver; w != nil && w.LastMessage != "" {
		heard = fmt.Sprintf("it last heard from %s at %s (pg_stat_wal_receiver, status %s)", from.Name, w.LastMessage, w.Status)
	}
	sign := "none seen"
	switch {
	case pg.WalReceiver != nil && pg.WalReceiver.LastMessage != "":
		sign = pg.WalReceiver.LastMessage + " (" + to.Name + "'s last WAL message from it)"
	case pg.LastReplayedCommit != "":
		sign = pg.LastReplayedCommit + " (the last commit of it " + to.Name + " replayed)"
	}
	p.note(&fs, "%s (site %s) is unreachable: %s; its last sign of life pgtopo can see: %s", from.Name, from.Site.Name, site.Error, sign)
	p.note(&fs, "%s received %s's WAL up to %s and replayed up to %s; %s", to.Name, from.Name, pg.ReceiveLSN, pg.ReplayLSN, heard)
	if pg.LastReplayedCommit != "" {
		p.note(&fs, "writes to %s committed after %s (the last commit %s replayed) may be lost: they stay on %s's disk, and are reported as divergent when it returns", from.Name, pg.LastReplayedCommit, to.Name, from.Name)
	} else {
		p.note(&fs, "%s has replayed no transaction of %s's yet: any write to %s may be lost", to.Name, from.Name, from.Name)
	}
	p.note(&fs, "if %s is alive behind a partition, it can go on taking writes until pgtopo reaches it again: two primaries can exist until then; pgtopo fences and demotes it first when it answers", from.Name)
	best, bestLSN := "", pg.ReplayLSN
	for _, c := range p.d.Standbys() {
		o := p.observed(c.Name)
		if c.Name == to.Name || o.PG == nil || !o.PG.InRecovery || o.PG.SystemID != pg.SystemID {
			continue
		}
		if o.PG.ReplayLSN > bestLSN {
			best, bestLSN = c.Name, o.PG.ReplayLSN
		}
	}
	if best != "" {
		p.note(&fs, "%s has replayed further (%s, %s more than %s): with primary: %s less is lost, which is recommended", best, bestLSN, snapshot.HumanBytes(int64(bestLSN-pg.ReplayLSN)), to.Name, best)
	}
}

// spentConsent notes a consent in the file that a recorded failover used.
func (p *planner) spentConsent() {
	c := p.d.AcceptDataLoss
	if c == nil {
		return
	}
	for _, f := range p.snap.Failovers() {
		if f.From == c.Cluster && f.SystemID == c.SystemIdentifier && f.FromTimeline == c.Timeline {
			p.note(nil, "spec.acceptDataLoss is spent: failover %s → %s (epoch %d) was carried out at %s on it; it changes nothing now, remove it from the file", f.From, f.To, f.Epoch, f.At)
			return
		}
	}
}

// rejoin plans, for a lost primary that answers again, its fence and its
// return as a standby of the primary that took over, before anything else.
// It reports whether it planned that.
func (p *planner) rejoin() bool {
	rec := p.snap.LastFailover()
	if rec == nil || rec.Phase != snapshot.FailoverDone {
		return false
	}
	dc, ok := p.d.Cluster(rec.From)
	o := p.observed(rec.From)
	if !ok || p.down(rec.From) || !o.Exists || o.Error != "" {
		return false
	}
	own := o.Object.Marks.Failover
	begun := own != nil && own.Epoch >= rec.Epoch && own.Returned != nil
	if begun && own.Returned.Done {
		return false
	}
	stale := o.Writable() || !o.Object.Spec.Replication.IsReplica
	if !stale && !begun {
		return false
	}
	subj := subjectOf(dc)
	primary, okP := p.d.Cluster(rec.To)
	np := p.observed(rec.To)
	if !okP || !np.Writable() || np.Endpoint == nil {
		p.refuse(&subj, "%s, lost in failover epoch %d, answers again and must be fenced, but the primary that took over, %s, is not writable (%s): fence %s by hand (pgtopo fence %s) and look at %s",
			rec.From, rec.Epoch, rec.To, np.PGErrorText(), rec.From, rec.From, rec.To)
		return true
	}
	c := dc
	c.Role, c.Instances = topology.RoleStandby, 1
	demoted := p.desiredSpec(c, np.Endpoint)
	rj := &plan.Rejoin{Record: *rec, Primary: subjectOf(primary), PrimaryEP: np.Endpoint, Demoted: demoted, Policy: dc.Rejoin,
		Fenced: fencedSpec(o.Object)}
	patroni := dc.IsPatroni()
	if !patroni && (demoted.Replication.BootstrapSecret == "" || !o.BootstrapSecret.Exists) {
		rj.Secret = &plan.CredentialsCopy{From: subjectOf(primary), FromName: np.Credentials.Name, Name: o.BootstrapSecret.Name, Topology: p.d.Name}
		demoted.Replication.BootstrapSecret = o.BootstrapSecret.Name
		rj.Demoted = demoted
	}
	if begun && own.Returned.NeedsRebuild != "" {
		p.rejoinRebuild(dc, rj, own)
		return true
	}
	// Patroni rewinds a returning primary only when its timeline is older
	// than the new primary's and in its history; on the same timeline
	// number (an internal failover of its own while it was away) it would
	// stream another history's WAL onto it. Only one that stayed on the
	// timeline it was lost on can be rewound safely; the rebuild it needs
	// otherwise deletes data, so it is planned as a step of its own once
	// the rejoin has fenced it and measured what it wrote.
	if o.PG != nil && o.PG.Timeline != rec.FromTimeline && rj.Policy == topology.RejoinRewind {
		p.note(&subj, "%s is on timeline %d, not %d where it was lost (it failed over inside its site meanwhile): its history cannot be told apart from %s's by timeline, so it cannot be rewound; once fenced and measured, its rebuild is planned as a step of its own", rec.From, o.PG.Timeline, rec.FromTimeline, rec.To)
	}
	fence := "fence it (read-only, sessions ended)"
	if o.PG == nil {
		fence = fmt.Sprintf("its database does not answer yet: fence it first in its object (%s on), so it starts refusing writes, and once it answers by SQL (sessions ended)", plan.FenceParameter)
	}
	reason := fmt.Sprintf("%s, lost in failover epoch %d, answers again: %s, report what it wrote after the fork at %s", rec.From, rec.Epoch, fence, rec.ForkLSN)
	rebuildLater := "; if it needs a rebuild (a timeline of its own, a failed rewind), it stops there, still fenced, and the next plan shows the rebuild as a step of its own"
	switch {
	case rj.Policy == topology.RejoinManual:
		reason += ", demote it to a standby of " + rec.To + "; rejoin policy manual: then left to a DBA"
	case patroni:
		reason += ", demote it to a standby of " + rec.To + "; it rejoins by Patroni's pg_rewind; if it needs a rebuild it is held fenced for a rebuild by hand (pgtopo does not rebuild a Patroni cluster)"
	case rj.Policy == topology.RejoinRebuild:
		reason += "; rejoin policy rebuild: then stop, still fenced, and the next plan shows its rebuild as a step of its own"
	default:
		reason += ", demote it to a standby of " + rec.To + "; it rejoins by pg_rewind" + rebuildLater
	}
	changes := specChanges(o.Object, demoted, "")
	p.add(plan.Step{Action: plan.ActionRejoin, Subject: subj, Payload: rj, Changes: changes, Reason: reason,
		Preconditions: []plan.Precondition{{Kind: plan.CondWritable, Cluster: rec.To}}})
	return true
}

// rejoinRebuild plans the rebuild a returned primary needs, recorded by the
// rejoin that fenced it and measured what it wrote after the fork: a step
// of its own that says what it deletes, under the rebuild policy's
// consent, or a refusal that says how to give it. A Patroni cluster is
// never rebuilt by pgtopo: refused with the way back by hand.
func (p *planner) rejoinRebuild(dc topology.DesiredCluster, rj *plan.Rejoin, own *snapshot.FailoverRecord) {
	subj := subjectOf(dc)
	ret, rec := own.Returned, rj.Record
	wrote := fmt.Sprintf("%s written after the fork at %s that %s never received", snapshot.HumanBytes(ret.Diverged), rec.ForkLSN, rec.To)
	if dc.IsPatroni() {
		p.refuse(&subj, "%s needs a rebuild (%s) and is held fenced, not demoted: pgtopo does not rebuild a Patroni cluster outside Kubernetes; rebuild its members by hand as a standby of %s (stop Patroni on every member, move their data directories away, patronictl remove the cluster, start them with the bootstrap from pgtopo render patroni-bootstrap %s); its %s go with its old data",
			dc.Name, ret.NeedsRebuild, rec.To, dc.Name, wrote)
		return
	}
	consent := ""
	switch {
	case dc.Rejoin == topology.RejoinRebuild:
		consent = "the file (rejoin: rebuild)"
	case dc.RebuildAllowed:
		consent = "the file (rebuild: allow)"
	case slices.Contains(p.opt.AllowRebuild, dc.Name):
		consent = "apply --allow-rebuild " + dc.Name
	default:
		p.refuse(&subj, "%s needs a rebuild (%s); it stays fenced. A rebuild deletes its data, including %s: consent with rebuild: allow on %s (or spec.replication.rebuild), or apply --allow-rebuild %s; or copy out what you need first",
			dc.Name, ret.NeedsRebuild, wrote, dc.Name, dc.Name)
		return
	}
	rj.Rebuild = true
	p.add(plan.Step{Action: plan.ActionRejoin, Subject: subj, Payload: rj,
		Reason: fmt.Sprintf("rebuild %s, the primary lost in failover epoch %d (%s; consent: %s): delete it with its volumes and data, including %s, and create it again as a standby of %s from birth",
			dc.Name, rec.Epoch, ret.NeedsRebuild, consent, wrote, rec.To),
		Changes: []plan.Change{{Field: "object " + dc.Namespace + "/" + dc.Name + " and its volumes", Before: "present (fenced; " + snapshot.HumanBytes(ret.Diverged) + " past the fork)",
			After: "deleted, created again as a standby of " + rec.To}},
		Preconditions: []plan.Precondition{{Kind: plan.CondWritable, Cluster: rec.To}}})
}

// lostNote says a lost primary is still away after its failover.
func (p *planner) lostNote(l *lostPrimary) {
	s := subjectOf(l.cluster)
	p.note(&s, "%s (site %s) is still unreachable since failover epoch %d at %s: when it answers, pgtopo fences and demotes it before anything else", l.cluster.Name, l.cluster.Site.Name, l.record.Epoch, l.record.At)
}

// lostHint adds to a refusal for an unreachable primary how to fail over.
func (p *planner) lostHint() {
	want := p.d.Primary()
	if !p.down(want.Name) {
		return
	}
	var standbys []string
	for _, c := range p.d.Standbys() {
		if o := p.observed(c.Name); o.PG != nil && o.PG.InRecovery {
			standbys = append(standbys, c.Name)
		}
	}
	if len(standbys) == 0 {
		return
	}
	s := subjectOf(want)
	p.note(&s, "if %s is lost, fail over: set primary to one of %s and consent to losing its unreplicated writes (spec.acceptDataLoss, or pgtopo apply --accept-data-loss %s); see docs/disaster-recovery.md",
		want.Name, strings.Join(standbys, ", "), want.Name)
}
