package planner

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// This file plans the runbook's hand repairs as steps: rebuilding a
// standby that cannot catch up, deleting clusters removed from the file
// (by policy), and dropping slots that hold WAL for no one.

// rebuildEvidence says why a standby cannot catch up, "" when it can.
// It is what PostgreSQL itself reports: another system identifier, or
// its slot on the primary lost (the WAL it needs was removed).
func rebuildEvidence(o, primary *snapshot.ClusterState) string {
	var ev []string
	if o.PG != nil && primary.PG != nil && o.PG.SystemID != primary.PG.SystemID {
		ev = append(ev, fmt.Sprintf("system identifier %s differs from %s's (%s): not a copy of the primary", o.PG.SystemID, primary.Name, primary.PG.SystemID))
	}
	if primary.PG != nil && !primary.PG.InRecovery {
		for _, s := range primary.PG.Slots {
			if s.Name == o.SlotName && s.WALStatus == "lost" {
				ev = append(ev, fmt.Sprintf("its slot %s on %s is lost (wal_status lost): the WAL it needs was removed", s.Name, primary.Name))
			}
		}
	}
	if w := neededWAL(o, primary); w != "" {
		ev = append(ev, w)
	}
	return strings.Join(ev, "; ")
}

// neededWAL says when a standby that does not stream needs WAL older than
// the primary still has: the receiver's "requested WAL segment has
// already been removed", seen from the primary.
func neededWAL(o, primary *snapshot.ClusterState) string {
	if o.PG == nil || !o.PG.InRecovery || primary.PG == nil || primary.PG.InRecovery || o.StreamsFrom(primary.Endpoint) {
		return ""
	}
	oldest, ok := snapshot.FileSegmentNo(primary.PG.OldestWAL)
	at := max(o.PG.ReceiveLSN, o.PG.ReplayLSN)
	if !ok || at == 0 || snapshot.SegmentNo(at) >= oldest {
		return ""
	}
	return fmt.Sprintf("it needs WAL from %s on, which %s no longer has (its oldest segment is %s)", at, primary.Name, primary.PG.OldestWAL)
}

// recordedRebuild is the rebuild of c recorded on the primary, if any.
func recordedRebuild(c string, primary *snapshot.ClusterState) *snapshot.RebuildRecord {
	if !primary.Exists || primary.Object == nil {
		return nil
	}
	if r := primary.Object.Marks.Rebuild; r != nil && r.Cluster == c {
		return r
	}
	return nil
}

// rebuild plans a standby's rebuild, or refuses with the evidence when
// its policy does not allow it. It reports whether it planned one.
func (p *planner) rebuild(c topology.DesiredCluster, primary *snapshot.ClusterState, primaryEP *snapshot.Endpoint, evidence string) bool {
	subj := subjectOf(c)
	resume := recordedRebuild(c.Name, primary)
	consent := ""
	if resume != nil {
		consent, evidence = resume.Consent, resume.Evidence
	} else if c.RebuildAllowed {
		consent = "the file (rebuild: allow)"
	} else if slices.Contains(p.opt.AllowRebuild, c.Name) {
		consent = "apply --allow-rebuild " + c.Name
	} else {
		p.refuse(&subj, "%s needs a rebuild: %s. pgtopo rebuilds a standby only where allowed: set rebuild: allow on %s (or spec.replication.rebuild), or run apply --allow-rebuild %s; it then deletes %s's object and volumes, removes its row from %s's multi_cluster_info, and creates it again as a standby from birth",
			c.Name, evidence, c.Name, c.Name, c.Name, primary.Name)
		return false
	}
	spec := p.desiredSpec(c, primaryEP)
	rebuild := &plan.Rebuild{Standby: plan.StandbySpec{Spec: spec, Follows: primary.Name}, Primary: primary.Name, Evidence: evidence, Consent: consent, Resume: resume != nil}
	step := plan.Step{Action: plan.ActionRebuild, Subject: subj, Payload: rebuild,
		Reason: fmt.Sprintf("rebuild %s (%s; consent: %s): delete it with its volumes, remove its catalogue row on %s, create it again as a standby from birth and wait until it streams", c.Name, evidence, consent, primary.Name),
		Changes: []plan.Change{
			{Field: "object " + c.Namespace + "/" + c.Name + " and its volumes", Before: "present", After: "deleted, created again as a standby of " + primary.Name},
			{Field: "sys_operator.multi_cluster_info " + c.Name + " on " + primary.Name, Before: "present", After: "removed (the new standby registers again)"},
		},
		Preconditions: []plan.Precondition{{Kind: plan.CondNotWritable, Cluster: c.Name}, {Kind: plan.CondWritable, Cluster: primary.Name}}}
	if resume != nil {
		step.Reason = fmt.Sprintf("resume the rebuild of %s recorded on %s at %s (%s)", c.Name, primary.Name, resume.At, evidence)
		step.Changes = nil
	}
	if primaryEP == nil {
		rebuild.Standby.PeerOf = primary.Name
	}
	p.add(step)
	return true
}

// deletions plans the deletion of clusters the file no longer lists, when
// its deletion policy says so; otherwise they are reported.
func (p *planner) deletions(livePrimary string) {
	for _, o := range p.snap.Orphans {
		s := plan.Subject{Site: o.Site, Namespace: o.Namespace, Cluster: o.Name}
		if p.d.DeletionPolicy != topology.DeletionDelete {
			p.note(&s, "labelled for topology %s but no longer in the file: left alone (spec.deletionPolicy is orphan; delete deletes it)", p.d.Name)
			continue
		}
		if p.siteDown[o.Site] {
			p.note(&s, "%s is to be deleted but its site %s does not answer: left for a later run", o.Name, o.Site)
			continue
		}
		if err := (plan.Precondition{Kind: plan.CondObjectReplica, Cluster: o.Name}).Holds(p.snap); err != nil {
			p.refuse(&s, "deletionPolicy delete: %v", err)
			continue
		}
		del := &plan.DeleteCluster{}
		changes := []plan.Change{{Field: "object " + o.Namespace + "/" + o.Name + " and its volumes", Before: "present", After: "deleted"}}
		if lp := p.observed(livePrimary); livePrimary != "" && lp.PG != nil {
			del.Primary = livePrimary
			if slices.ContainsFunc(lp.PG.MultiCluster, func(r snapshot.MultiClusterInfo) bool { return r.Cluster == o.Name }) {
				changes = append(changes, plan.Change{Field: "sys_operator.multi_cluster_info " + o.Name + " on " + livePrimary, Before: "present", After: "removed"})
			}
			if sl, ok := slotOf(lp, o.SlotName); ok {
				del.Slot = sl.Name
				changes = append(changes, plan.Change{Field: "slot " + sl.Name + " on " + livePrimary, Before: "present (holds " + snapshot.HumanBytes(sl.RetainedBytes) + ")", After: "dropped"})
			}
		}
		p.add(plan.Step{Action: plan.ActionDeleteCluster, Subject: s, Payload: del, Changes: changes,
			Reason:        fmt.Sprintf("%s is no longer in the file and spec.deletionPolicy is delete", o.Name),
			Preconditions: []plan.Precondition{{Kind: plan.CondObjectReplica, Cluster: o.Name}}})
	}
}

func slotOf(c *snapshot.ClusterState, name string) (snapshot.Slot, bool) {
	if c.PG == nil || name == "" {
		return snapshot.Slot{}, false
	}
	for _, s := range c.PG.Slots {
		if s.Name == name {
			return s, true
		}
	}
	return snapshot.Slot{}, false
}

// slotHygiene looks at every physical slot on the live primary: its own
// members' are Patroni's; a cluster's of the file that is inactive with
// no restart LSN holds nothing and is dropped so its keeper makes it
// afresh (the runbook's repair); one kept for a cluster the file no
// longer lists, or listed in spec.replication.dropSlots, is dropped when
// inactive; any other is reported, never dropped.
func (p *planner) slotHygiene(livePrimary string) {
	lp, ok := p.d.Cluster(livePrimary)
	if !ok || p.switching != nil || p.failingOver != nil || p.down(livePrimary) {
		return
	}
	o := p.observed(livePrimary)
	if !o.Exists || o.PG == nil || o.PG.InRecovery || o.Object == nil {
		return
	}
	ours := map[string]string{} // slot → cluster of the file
	for _, c := range p.d.Clusters {
		name := p.observed(c.Name).SlotName
		if name == "" {
			return // whose slot is whose is not known: never guess
		}
		if c.Name != livePrimary {
			ours[name] = c.Name
		}
	}
	gone := map[string]string{} // slot → cluster no longer in the file
	rows := map[string]bool{}   // clusters with a catalogue row
	for _, r := range o.PG.MultiCluster {
		rows[r.Cluster] = true
		if _, inFile := p.d.Cluster(r.Cluster); !inFile && r.Slot != "" {
			gone[r.Slot] = r.Cluster
		}
	}
	deleting := map[string]bool{}
	for _, orphan := range p.snap.Orphans {
		if orphan.SlotName != "" {
			gone[orphan.SlotName] = orphan.Name
		}
		deleting[orphan.Name] = p.d.DeletionPolicy == topology.DeletionDelete
	}
	subj := subjectOf(lp)
	for _, s := range o.PG.Slots {
		if slices.Contains(o.Object.MemberSlots, s.Name) {
			continue
		}
		held := snapshot.HumanBytes(s.RetainedBytes)
		drop := plan.DropSlot{Primary: livePrimary, Slot: s.Name, RetainedBytes: s.RetainedBytes,
			PermanentSlot: slices.Contains(o.Object.PermanentSlots, s.Name)}
		var reason string
		// An if-chain, not a switch: mutation testing measures its conditions.
		if cluster, isOurs := ours[s.Name]; isOurs {
			co := p.observed(cluster)
			if s.Active || s.RestartLSN != 0 || !co.Exists {
				continue
			}
			reason = fmt.Sprintf("slot %s on %s is %s's but inactive with no restart LSN: it holds nothing and Patroni's slot handling trips on it; dropped, its keeper makes it afresh", s.Name, livePrimary, cluster)
			drop.For = cluster
		} else if gone[s.Name] != "" {
			cluster := gone[s.Name]
			if deleting[cluster] {
				continue // delete-cluster drops it with the cluster
			}
			if s.Active {
				p.note(&subj, "slot %s on %s is kept for %s, which the file no longer lists, and something streams through it: left alone", s.Name, livePrimary, cluster)
				continue
			}
			if s.RestartLSN == 0 {
				continue
			}
			reason = fmt.Sprintf("slot %s on %s was kept for %s, which the file no longer lists; inactive, it holds %s of WAL", s.Name, livePrimary, cluster, held)
			drop.For, drop.CatalogueRow = cluster, rows[cluster]
		} else if slices.Contains(p.d.DropSlots, s.Name) {
			if s.Active {
				p.note(&subj, "slot %s on %s is listed in spec.replication.dropSlots but something streams through it: left alone", s.Name, livePrimary)
				continue
			}
			reason = fmt.Sprintf("slot %s on %s is listed in spec.replication.dropSlots; inactive, it holds %s of WAL", s.Name, livePrimary, held)
		} else {
			p.note(&subj, "slot %s on %s (%s, holds %s of WAL) is not one pgtopo knows: no cluster of the topology, nor of %s's catalogue, streams through it. Left alone; list it in spec.replication.dropSlots to have it dropped",
				s.Name, livePrimary, activeWord(s.Active), held, livePrimary)
			continue
		}
		d := drop
		p.add(plan.Step{Action: plan.ActionDropSlot, Subject: subj, Payload: &d, Reason: reason,
			Changes:       []plan.Change{{Field: "slot " + s.Name, Before: "present (holds " + held + ")", After: "dropped"}},
			Preconditions: []plan.Precondition{{Kind: plan.CondWritable, Cluster: livePrimary}, {Kind: plan.CondSlotInactive, Cluster: livePrimary, Other: s.Name}}})
	}
}

func activeWord(active bool) string {
	if active {
		return "active"
	}
	return "inactive"
}
