package planner

import (
	"fmt"
	"strings"

	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// FenceOptions are a break-glass fence's inputs.
type FenceOptions struct {
	// Force fences the only writable cluster (stopping all writes).
	Force bool
	// Mark is recorded on the cluster: who, when, why.
	Mark snapshot.Fence
}

// PlanFence plans pgtopo fence CLUSTER: make it refuse new writes (new
// sessions read-only, open ones ended), recorded on its object, for split
// brain and for a primary about to be given up. Fencing a fenced cluster
// plans nothing; fencing the only writable cluster is refused unless
// forced.
func PlanFence(d *topology.Desired, snap *snapshot.Snapshot, cluster string, opt FenceOptions) plan.Plan {
	p := fencePlan(d, snap, cluster)
	c, o, ok := p.fenceSubject(cluster, "fence")
	switch {
	case !ok:
	case !o.Writable():
		p.note(nil, "%s is a standby (in recovery): it takes no writes, nothing to fence", cluster)
	case o.Fenced():
		p.note(nil, "%s is fenced already (by %s at %s)", cluster, o.Object.Marks.Fence.By, o.Object.Marks.Fence.At)
	default:
		others := 0
		for _, x := range snap.Clusters {
			if x.Name != cluster && x.Writable() && !x.Fenced() {
				others++
			}
		}
		if others == 0 && !opt.Force {
			p.refuse(nil, "%s is the only writable cluster: fencing it stops every write to the database; pass --force if that is what you want", cluster)
			break
		}
		mark := opt.Mark
		subj := subjectOf(c)
		p.add(plan.Step{Action: plan.ActionFence, Subject: subj, Payload: &plan.Fence{Mark: mark},
			Reason:        fmt.Sprintf("fence %s: new sessions read-only, open client sessions ended, recorded on its CR", cluster),
			Changes:       []plan.Change{{Field: "default_transaction_read_only", Before: "off", After: "on"}, {Field: "mark pgtopo.dev/fenced", Before: "", After: mark.By + " at " + mark.At}},
			Preconditions: []plan.Precondition{{Kind: plan.CondSiteReachable, Site: c.Site.Name}, {Kind: plan.CondWritable, Cluster: cluster}}})
	}
	return p.finish()
}

// PlanUnfence plans pgtopo unfence CLUSTER: lift a fence and its mark.
// Lifting it while another cluster takes writes would make two writable
// primaries, and is refused unless forced.
func PlanUnfence(d *topology.Desired, snap *snapshot.Snapshot, cluster string, opt FenceOptions) plan.Plan {
	p := fencePlan(d, snap, cluster)
	c, o, ok := p.fenceSubject(cluster, "unfence")
	var writable []string
	for _, x := range snap.Clusters {
		if x.Name != cluster && x.Writable() && !x.Fenced() {
			writable = append(writable, x.Name)
		}
	}
	switch {
	case !ok:
	case !o.PG.ReadOnlyDefault && o.Object.Marks.Fence == nil:
		p.note(nil, "%s is not fenced", cluster)
	case len(writable) > 0 && !o.PG.InRecovery && !opt.Force:
		p.refuse(nil, "%s takes writes: unfencing %s would make two writable primaries; fence or demote %s first, or pass --force if that is what you want", strings.Join(writable, ", "), cluster, strings.Join(writable, ", "))
	default:
		p.add(plan.Step{Action: plan.ActionUnfence, Subject: subjectOf(c), Payload: &plan.Unfence{},
			Reason:        fmt.Sprintf("unfence %s: new sessions may write again; the fence mark is removed", cluster),
			Changes:       []plan.Change{{Field: "default_transaction_read_only", Before: "on", After: "off"}},
			Preconditions: []plan.Precondition{{Kind: plan.CondSiteReachable, Site: c.Site.Name}, {Kind: plan.CondReadable, Cluster: cluster}}})
	}
	return p.finish()
}

func fencePlan(d *topology.Desired, snap *snapshot.Snapshot, cluster string) *planner {
	p := &planner{d: d, snap: snap, plan: plan.Plan{Topology: d.Name, Digest: d.Digest, Steps: []plan.Step{}, Refusals: []plan.Refusal{}, Notes: []plan.Note{}}}
	for _, s := range d.Sites() {
		p.plan.Sites = append(p.plan.Sites, plan.Site{Name: s.Name, Context: s.Context})
	}
	for _, s := range snap.Sites {
		if c, ok := d.Cluster(cluster); ok && s.Name == c.Site.Name && !s.Reachable {
			p.refuse(nil, "site %s unreachable: %s", s.Name, s.Error)
		}
	}
	return p
}

// fenceSubject finds the cluster a fence or unfence acts on, refusing one
// it cannot act on: not in the file, not observed, no CR, database
// unreadable.
func (p *planner) fenceSubject(cluster, verb string) (topology.DesiredCluster, *snapshot.ClusterState, bool) {
	c, inFile := p.d.Cluster(cluster)
	o, seen := p.snap.Cluster(cluster)
	switch {
	case !inFile || !seen:
		p.refuse(nil, "%s is not a cluster of topology %s", cluster, p.d.Name)
	case o.Error != "":
		p.refuse(nil, "cannot %s %s: %s", verb, cluster, o.Error)
	case !o.Exists:
		p.refuse(nil, "cannot %s %s: its CR does not exist", verb, cluster)
	case o.PG == nil:
		p.refuse(nil, "cannot %s %s: cannot read its database: %s", verb, cluster, o.PGErrorText())
	default:
		return c, o, true
	}
	return c, o, false
}

// finish puts the lock first, as in every plan that changes something.
func (p *planner) finish() plan.Plan {
	if p.plan.Refused() {
		p.plan.Steps = []plan.Step{}
	}
	if len(p.plan.Steps) > 0 {
		p.plan.Steps = append([]plan.Step{p.lockStep()}, p.plan.Steps...)
	}
	p.roles("")
	return p.plan
}
