package plan

import "fmt"

// PlanAPIVersion versions the JSON form of a plan.
const PlanAPIVersion = "pgtopo.dev/v1alpha1"

// Summary is the closing line of a text plan.
func (p *Plan) Summary() string {
	if p.InSync() {
		return "No changes. The live topology matches the file."
	}
	c := p.Count()
	if c.Delete > 0 {
		return fmt.Sprintf("Plan: %d switchover, %d to create, %d to update, %d to delete, %d refused.", c.Switchovers, c.Create, c.Update, c.Delete, c.Refused)
	}
	return fmt.Sprintf("Plan: %d switchover, %d to create, %d to update, %d refused.", c.Switchovers, c.Create, c.Update, c.Refused)
}

// Headline says in words what applying the plan does to the roles.
func (p *Plan) Headline() string {
	var now, after string
	for _, c := range p.Clusters {
		if c.Now == RolePrimary {
			now = c.Name
		}
		if c.After == RolePrimary {
			after = c.Name
		}
	}
	if p.Refused() {
		return fmt.Sprintf("topology %s: refused", p.Topology)
	}
	if after != "" && now == "" {
		return fmt.Sprintf("topology %s: bring up with primary %s", p.Topology, after)
	}
	if after != "" && now != after {
		return fmt.Sprintf("topology %s: switchover %s → %s", p.Topology, now, after)
	}
	return fmt.Sprintf("topology %s: primary %s", p.Topology, now)
}
