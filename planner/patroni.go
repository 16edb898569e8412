package planner

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// This file plans what is particular to Patroni clusters outside
// Kubernetes: pgtopo neither starts nor removes them, it writes their role
// (standby_cluster) and the slots that keep WAL for their standbys.

// patroniMembers lists a Patroni cluster's REST endpoints for people.
func patroniMembers(c topology.DesiredCluster) string {
	var out []string
	for _, m := range c.Patroni.Members {
		out = append(out, fmt.Sprintf("%s:%d", m.Host, m.Port))
	}
	return "REST API at " + strings.Join(out, ", ")
}

// RenderHint is what to run for a Patroni standby that does not exist.
func RenderHint(cluster string) string {
	return "pgtopo render patroni-bootstrap " + cluster
}

// patroniStandby plans a Patroni standby: nothing to create (a refusal
// with what to do once its slot holds WAL), the pitfall refused, and its
// standby_cluster kept pointed at the primary.
func (p *planner) patroniStandby(c topology.DesiredCluster, o, primary *snapshot.ClusterState, primaryEP *snapshot.Endpoint) {
	subj := subjectOf(c)
	if !o.Exists {
		if p.slotHeld(primary, c.Name, o.SlotName) {
			p.refuse(&subj, "%s does not exist (no member answers its %s): pgtopo does not start VMs. Its slot %s on %s holds WAL for it; bootstrap it as a standby from birth with the section `%s` prints, then run pgtopo again",
				c.Name, patroniMembers(c), o.SlotName, primary.Name, RenderHint(c.Name))
		} else {
			p.note(&subj, "%s does not exist yet (no member answers its %s): once its slot %s holds WAL on %s, bootstrap it as a standby from birth with the section `%s` prints",
				c.Name, patroniMembers(c), o.SlotName, primary.Name, RenderHint(c.Name))
		}
		return
	}
	if p.switching != nil && p.switching.From.Cluster == c.Name {
		return // the switchover turns it into a standby of the new primary
	}
	if why := patroniStandbyRefusal(c, o, primary, primaryEP, p.slotHeld(primary, c.Name, o.SlotName)); why != "" {
		p.refuse(&subj, "%s", why)
		return
	}
	spec := p.desiredSpec(c, primaryEP)
	if primaryEP == nil {
		spec.Replication.PeerHost, spec.Replication.PeerPort = o.Object.Spec.Replication.PeerHost, o.Object.Spec.Replication.PeerPort
	}
	ch := specChanges(o.Object, spec, "")
	if len(ch) == 0 {
		return
	}
	step := plan.Step{Action: plan.ActionRepoint, Subject: subj, Payload: &plan.Repoint{Spec: spec, Follows: p.d.Primary().Name}, Changes: ch,
		Reason: fmt.Sprintf("point standby_cluster at the primary %s through slot %s", p.d.Primary().Name, spec.Replication.PrimarySlot)}
	if p.switching == nil && p.failingOver == nil {
		step.Preconditions = []plan.Precondition{{Kind: plan.CondWritable, Cluster: p.d.Primary().Name}}
	}
	p.add(step)
}

// slotHeld reports whether the primary keeps the named slot for cluster:
// a Patroni primary in its permanent slots, an operator's through the
// cluster's catalogue row (its operator makes the slot from it).
func (p *planner) slotHeld(primary *snapshot.ClusterState, cluster, slot string) bool {
	if !primary.Exists || primary.Object == nil {
		return false
	}
	if pc, ok := p.d.Cluster(primary.Name); ok && pc.IsPatroni() {
		return slices.Contains(primary.Object.PermanentSlots, slot)
	}
	return primary.PG != nil && slices.ContainsFunc(primary.PG.MultiCluster, func(r snapshot.MultiClusterInfo) bool { return r.Cluster == cluster })
}

// slots plans, on the live primary, what keeps WAL for the clusters that
// stream (or will) from it, before they need it: a Patroni primary keeps
// each other cluster's slot as a permanent slot, and lists itself in the
// operator's catalogue (which replicates to the operator's standbys, so
// their operator keeps its slot once they are primary); an operator
// primary lists each Patroni cluster in its catalogue.
func (p *planner) slots(livePrimary string) {
	lp, ok := p.d.Cluster(livePrimary)
	if !ok || p.failingOver != nil || p.down(livePrimary) {
		return
	}
	o := p.observed(livePrimary)
	if !o.Exists || o.PG == nil || o.PG.InRecovery {
		return
	}
	anyOperator := false
	for _, c := range p.d.Clusters {
		if c.Name == lp.Name || p.down(c.Name) {
			continue
		}
		anyOperator = anyOperator || !c.IsPatroni()
		co := p.observed(c.Name)
		switch {
		case lp.IsPatroni() && !slices.Contains(o.Object.PermanentSlots, co.SlotName):
			p.addSlot(lp, c, co.SlotName, plan.SlotViaPatroni,
				fmt.Sprintf("keep slot %s for %s on %s (a permanent slot in its dynamic config), so WAL is retained before %s's base backup", co.SlotName, c.Name, lp.Name, c.Name))
		case !lp.IsPatroni() && c.IsPatroni() && !p.slotHeld(o, c.Name, co.SlotName):
			p.addSlot(lp, c, co.SlotName, plan.SlotViaCatalogue,
				fmt.Sprintf("list %s in %s's sys_operator.multi_cluster_info, so its operator keeps slot %s for it", c.Name, lp.Name, co.SlotName))
		}
	}
	if lp.IsPatroni() && anyOperator && !slices.ContainsFunc(o.PG.MultiCluster, func(r snapshot.MultiClusterInfo) bool { return r.Cluster == lp.Name }) {
		p.addSlot(lp, lp, o.SlotName, plan.SlotViaCatalogue,
			fmt.Sprintf("list %s in its own sys_operator.multi_cluster_info, which its operator standbys replicate: once one of them is primary, its operator keeps slot %s for %s", lp.Name, o.SlotName, lp.Name))
	}
}

func (p *planner) addSlot(primary, forCluster topology.DesiredCluster, slot, via, reason string) {
	e := &plan.EnsureSlot{Primary: primary.Name, For: forCluster.Name, Slot: slot, Via: via}
	field := "permanent slot " + slot
	if via == plan.SlotViaCatalogue {
		field = "sys_operator.multi_cluster_info " + forCluster.Name
		if ep := p.observed(forCluster.Name).Endpoint; ep != nil {
			e.Host, e.Port = ep.Host, ep.Port
		} else if forCluster.Endpoint != nil {
			e.Host, e.Port = forCluster.Endpoint.Host, forCluster.Endpoint.Port
		}
	}
	p.add(plan.Step{Action: plan.ActionEnsureSlot, Subject: subjectOf(primary), Payload: e, Reason: reason,
		Changes:       []plan.Change{{Field: field, Before: "absent", After: "present"}},
		Preconditions: []plan.Precondition{{Kind: plan.CondWritable, Cluster: primary.Name}}})
}

// patroniStandbyRefusal says why an existing Patroni cluster cannot be made
// (or kept) a standby of primary, "" when it can. (An if-chain: mutation
// testing measures its conditions.)
func patroniStandbyRefusal(c topology.DesiredCluster, o, primary *snapshot.ClusterState, primaryEP *snapshot.Endpoint, slotHeld bool) string {
	if o.PG == nil || primary.PG == nil {
		return ""
	}
	if o.PG.SystemID != primary.PG.SystemID {
		return fmt.Sprintf("%s system identifier %s differs from primary %s (%s): its data is not a copy of the primary's, and pgtopo will not make it a standby (that would need a rewind it cannot do); remove its data and bootstrap it with `%s`",
			c.Name, o.PG.SystemID, primary.Name, primary.PG.SystemID, RenderHint(c.Name))
	}
	if o.PG.Timeline > primary.PG.Timeline {
		return fmt.Sprintf("%s is on timeline %d, ahead of primary %s (timeline %d): it has history the primary lacks, so becoming a standby would need a rewind; pgtopo refuses that for a Patroni cluster: remove its data and bootstrap it with `%s`",
			c.Name, o.PG.Timeline, primary.Name, primary.PG.Timeline, RenderHint(c.Name))
	}
	if o.PG.InRecovery && !o.StreamsFrom(primaryEP) && !slotHeld {
		// The multi-DC bootstrap pitfall: built from a base backup under
		// writes with no slot holding WAL meanwhile, it can wait for WAL
		// that no longer exists, forever.
		return fmt.Sprintf("%s is a standby that does not stream from %s (wal receiver: %s) and no slot on %s held WAL for it while it was built: the WAL it needs may be gone, so repointing it could wait forever (the Patroni multi-DC bootstrap pitfall). Stop it and remove its data; the next pgtopo run creates its slot %s, then bootstrap it with `%s`",
			c.Name, primary.Name, o.Receiver(), primary.Name, o.SlotName, RenderHint(c.Name))
	}
	return ""
}
