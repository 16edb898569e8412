// Package diff computes a Plan from the desired state and a snapshot. It is
// pure: no I/O, no clock; the same inputs give the same plan. Renderers are
// separate from planning.
package diff

import (
	"fmt"
	"sort"
)

// Action is what a step does.
type Action string

// Actions, in the order apply runs them (see order).
const (
	ActionLock            Action = "lock"
	ActionEnsurePrimary   Action = "ensure-primary"
	ActionCheckpoint      Action = "checkpoint"
	ActionBootstrapSecret Action = "bootstrap-secret"
	ActionCreateStandby   Action = "create-standby"
	ActionSwitchover      Action = "switchover"
	ActionRepoint         Action = "repoint"
	ActionUpdate          Action = "update"
	ActionFillExternalIP  Action = "fill-external-ip"
	ActionRecord          Action = "record"
)

// order is the rank of each action: steps run by rank, then by cluster name.
var order = map[Action]int{
	ActionLock: 0, ActionEnsurePrimary: 1, ActionCheckpoint: 2, ActionBootstrapSecret: 3,
	ActionCreateStandby: 4, ActionSwitchover: 5, ActionRepoint: 6, ActionUpdate: 7,
	ActionFillExternalIP: 8, ActionRecord: 9,
}

// Subject is the object a step acts on.
type Subject struct {
	Site      string `json:"site"`
	Namespace string `json:"namespace"`
	Cluster   string `json:"cluster"`
}

func (s Subject) String() string {
	if s.Cluster == "" {
		return fmt.Sprintf("topology (%s/%s)", s.Site, s.Namespace)
	}
	return fmt.Sprintf("%s (%s/%s)", s.Cluster, s.Site, s.Namespace)
}

// Change is one field-level difference, before → after. Values are never
// secrets: a Secret change is described by name and fingerprint.
type Change struct {
	Field  string `json:"field"`
	Before string `json:"before"`
	After  string `json:"after"`
}

// Condition kinds apply re-checks on a fresh snapshot before a step.
type ConditionKind string

// Condition kinds.
const (
	CondSiteReachable  ConditionKind = "site-reachable"
	CondCRAbsent       ConditionKind = "cr-absent"
	CondCRPresent      ConditionKind = "cr-present"
	CondWritable       ConditionKind = "writable"
	CondStreamingFrom  ConditionKind = "streaming-from"
	CondSameSystemID   ConditionKind = "same-system-identifier"
	CondSameTimeline   ConditionKind = "same-timeline"
	CondLagAtMost      ConditionKind = "lag-at-most"
	CondSameMajor      ConditionKind = "same-major-version"
	CondOnlyPrimary    ConditionKind = "only-writable"
	CondNoOtherJournal ConditionKind = "no-other-journal"
)

// Precondition is a condition on a cluster (and sometimes a second one).
type Precondition struct {
	Kind    ConditionKind `json:"kind"`
	Cluster string        `json:"cluster,omitempty"`
	Other   string        `json:"other,omitempty"`
	Site    string        `json:"site,omitempty"`
	Bytes   int64         `json:"bytes,omitempty"`
}

// Step is one ordered, idempotent unit of work.
type Step struct {
	Action        Action         `json:"action"`
	Subject       Subject        `json:"subject"`
	Reason        string         `json:"reason"`
	Changes       []Change       `json:"changes,omitempty"`
	Preconditions []Precondition `json:"preconditions,omitempty"`
	// Switchover names both ends of a role swap.
	Switchover *Switchover `json:"switchover,omitempty"`
	// Locks are the Leases a lock step takes, in order.
	Locks []Subject `json:"locks,omitempty"`
}

// Switchover is the two clusters of a role swap.
type Switchover struct {
	From        string `json:"from"`
	To          string `json:"to"`
	MaxLagBytes int64  `json:"maxLagBytes"`
	// Resume is set when a journal shows an interrupted switchover.
	Resume string `json:"resume,omitempty"`
}

// Refusal is a reason the plan cannot be applied. Any refusal stops apply
// before it changes anything.
type Refusal struct {
	Subject *Subject `json:"subject,omitempty"`
	Reason  string   `json:"reason"`
}

// Note is something the user should know that needs no action.
type Note struct {
	Subject *Subject `json:"subject,omitempty"`
	Message string   `json:"message"`
}

// ClusterRoles is a cluster's role now and after the plan.
type ClusterRoles struct {
	Name      string `json:"name"`
	Site      string `json:"site"`
	Namespace string `json:"namespace"`
	Now       string `json:"now"`
	After     string `json:"after"`
}

// Plan is the ordered work that makes the live world match the file.
type Plan struct {
	Topology string         `json:"topology"`
	Revision string         `json:"revision,omitempty"`
	Digest   string         `json:"digest"`
	Clusters []ClusterRoles `json:"clusters"`
	Steps    []Step         `json:"steps"`
	Refusals []Refusal      `json:"refusals"`
	Notes    []Note         `json:"notes"`
}

// InSync reports whether nothing needs doing.
func (p *Plan) InSync() bool { return len(p.Steps) == 0 && len(p.Refusals) == 0 }

// Refused reports whether the plan must not be applied.
func (p *Plan) Refused() bool { return len(p.Refusals) > 0 }

// sortSteps orders steps by action rank, then cluster name.
func sortSteps(steps []Step) {
	sort.SliceStable(steps, func(i, j int) bool {
		a, b := steps[i], steps[j]
		if order[a.Action] != order[b.Action] {
			return order[a.Action] < order[b.Action]
		}
		return a.Subject.Cluster < b.Subject.Cluster
	})
}

// Count summarises steps the way the closing line of a plan says them.
type Count struct {
	Switchovers, Create, Update, Refused int
}

// Count returns the plan's summary numbers.
func (p *Plan) Count() Count {
	var c Count
	for _, s := range p.Steps {
		switch s.Action {
		case ActionSwitchover:
			c.Switchovers++
		case ActionEnsurePrimary, ActionCreateStandby, ActionBootstrapSecret:
			c.Create++
		case ActionUpdate, ActionRepoint, ActionRecord, ActionFillExternalIP:
			c.Update++
		}
	}
	c.Refused = len(p.Refusals)
	return c
}
