// Package diff computes a Plan from the desired state and a snapshot. It is
// pure: no I/O, no clock; the same inputs give the same plan. Each step
// carries the payload apply executes (docs/architecture.md, "The plan").
// Renderers are separate from planning.
package plan

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/pgtopo/pgtopo/snapshot"
)

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

// Change is one field-level difference, before → after, computed from a
// step's payload and the live object. Values are never secrets: a Secret
// change is described by name, presence and resourceVersion.
type Change struct {
	Field  string `json:"field"`
	Before string `json:"before"`
	After  string `json:"after"`
}

// Step is one ordered, idempotent unit of work and its payload: exactly
// what apply writes. Payload's type is the one Actions names for Action.
type Step struct {
	Action        Action         `json:"action"`
	Subject       Subject        `json:"subject"`
	Reason        string         `json:"reason"`
	Changes       []Change       `json:"changes,omitempty"`
	Preconditions []Precondition `json:"preconditions,omitempty"`
	// Sequence orders steps of one rank before their clusters' names do:
	// restarts go standbys first, or the primary first when a standby
	// minimum is lowered.
	Sequence int     `json:"sequence,omitempty"`
	Payload  Payload `json:"payload,omitempty"`
}

// Payload is a step's own data; each action has its type (Actions),
// which names its action.
type Payload interface{ Action() Action }

// UnmarshalJSON reads the payload as the type its action takes.
func (s *Step) UnmarshalJSON(b []byte) error {
	type bare Step
	var raw struct {
		bare
		Payload json.RawMessage `json:"payload"`
	}
	if err := strict(b, &raw); err != nil {
		return err
	}
	*s = Step(raw.bare)
	kind, ok := Actions[s.Action]
	if !ok {
		return fmt.Errorf("step %q: no such action", s.Action)
	}
	p, err := kind.decode(raw.Payload)
	if err != nil {
		return fmt.Errorf("step %s %s: payload: %w (a plan saved before v0.2.0 keeps it elsewhere: save it again with pgtopo diff --out)", s.Action, s.Subject, err)
	}
	s.Payload = p
	return nil
}

// strict decodes b into v, refusing fields v does not have.
func strict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// Lock is the lock step's payload: the Lease it takes in every site, in
// order.
type Lock struct {
	Lease string    `json:"lease"`
	Sites []Subject `json:"sites"`
}

// EnsurePrimary is the spec an ensure-primary step writes.
type EnsurePrimary struct {
	Spec snapshot.Spec `json:"spec"`
	// Existing: the CR exists and its primary is coming back (restarted,
	// or created by an earlier run); the wait is for it to take writes,
	// not for every member to be ready: an in-site replica Patroni cannot
	// repair by itself (a timeline it cannot rewind) must not hold the
	// topology's lock until the step's timeout.
	Existing bool `json:"existing,omitempty"`
}

// Checkpoint has no payload beyond its subject.
type Checkpoint struct{}

// StandbySpec is a standby's spec, the primary it streams from, and the
// cluster whose endpoint becomes its peer when the plan cannot know it
// yet (a standby planned with its primary: apply fills it in from what
// that cluster's creation produced).
type StandbySpec struct {
	Spec    snapshot.Spec `json:"spec"`
	Follows string        `json:"follows"`
	PeerOf  string        `json:"peerOf,omitempty"`
}

// CreateStandby writes a standby's spec and waits until it streams.
type CreateStandby StandbySpec

// Repoint writes a standby's spec with a new peer and waits until it
// streams from it.
type Repoint StandbySpec

// Update writes a cluster's spec, and restarts it when a changed setting
// takes effect only then.
type Update struct {
	Spec    snapshot.Spec `json:"spec"`
	Restart *Restart      `json:"restart,omitempty"`
}

// Record is the marks a record step writes.
type Record struct {
	Marks snapshot.Marks `json:"marks"`
}

// Fence is the mark a fence step records.
type Fence struct {
	Mark snapshot.Fence `json:"mark"`
}

// Unfence has no payload beyond its subject.
type Unfence struct{}

func (*Lock) Action() Action               { return ActionLock }
func (*EnsurePrimary) Action() Action      { return ActionEnsurePrimary }
func (*EnsureSlot) Action() Action         { return ActionEnsureSlot }
func (*Checkpoint) Action() Action         { return ActionCheckpoint }
func (*BootstrapSecret) Action() Action    { return ActionBootstrapSecret }
func (*RefreshCredentials) Action() Action { return ActionRefreshCredentials }
func (*Rebuild) Action() Action            { return ActionRebuild }
func (*CreateStandby) Action() Action      { return ActionCreateStandby }
func (*Switchover) Action() Action         { return ActionSwitchover }
func (*Failover) Action() Action           { return ActionFailover }
func (*Rejoin) Action() Action             { return ActionRejoin }
func (*Repoint) Action() Action            { return ActionRepoint }
func (*Update) Action() Action             { return ActionUpdate }
func (*Restart) Action() Action            { return ActionRestart }
func (*FillExternalIP) Action() Action     { return ActionFillExternalIP }
func (*DeleteCluster) Action() Action      { return ActionDeleteCluster }
func (*DropSlot) Action() Action           { return ActionDropSlot }
func (*Record) Action() Action             { return ActionRecord }
func (*Fence) Action() Action              { return ActionFence }
func (*Unfence) Action() Action            { return ActionUnfence }

// How an ensure-slot step makes a primary keep a standby's slot.
const (
	// SlotViaPatroni: a permanent slot in a Patroni primary's dynamic
	// configuration.
	SlotViaPatroni = "patroni-config"
	// SlotViaCatalogue: the cluster's row in an operator primary's
	// sys_operator.multi_cluster_info, from which the operator keeps its
	// standbys' slots (a Patroni cluster has no operator to register it).
	SlotViaCatalogue = "catalogue"
)

// EnsureSlot is the payload of ensure-slot: the primary keeps Slot for
// the cluster For, so WAL is retained before For's base backup (or, via
// the catalogue, once the operator's cluster is primary).
type EnsureSlot struct {
	Primary string `json:"primary"`
	For     string `json:"for"`
	Slot    string `json:"slot"`
	Via     string `json:"via"`
	// Host and Port are For's endpoint, for its catalogue row.
	Host string `json:"host,omitempty"`
	Port int    `json:"port,omitempty"`
}

// CredentialsCopy copies a cluster's admin credentials into a standby's
// namespace.
type CredentialsCopy struct {
	From     Subject `json:"from"`
	FromName string  `json:"fromName"`
	Name     string  `json:"name"`
	Topology string  `json:"topology"`
}

// BootstrapSecret copies the primary's credentials into a standby's
// namespace as the basic-auth Secret it bootstraps with.
type BootstrapSecret CredentialsCopy

// RefreshCredentials copies the primary's username and password into a
// standby's own credentials Secret.
type RefreshCredentials CredentialsCopy

// FillExternalIP fills a standby's empty external_ip in the primary's
// sys_operator.multi_cluster_info.
type FillExternalIP struct {
	Primary string `json:"primary"`
	Cluster string `json:"cluster"`
	Host    string `json:"host"`
}

// Rebuild is a rebuild's payload: the standby that cannot catch up, why
// (the evidence), on whose consent, and the spec it is created again with.
type Rebuild struct {
	Standby  StandbySpec `json:"standby"`
	Primary  string      `json:"primary"`
	Evidence string      `json:"evidence"`
	Consent  string      `json:"consent"`
	// Resume: a rebuild recorded on the primary goes on, consented then.
	Resume bool `json:"resume,omitempty"`
}

// DeleteCluster is a delete-cluster step's payload: the cluster removed
// from the file, and what goes with it on the primary.
type DeleteCluster struct {
	Primary string `json:"primary,omitempty"`
	Slot    string `json:"slot,omitempty"`
}

// DropSlot is a drop-slot step's payload: the slot, on which primary, the
// cluster it was for ("" when pgtopo cannot tell), and how it is kept
// there (its catalogue row or a permanent slot, removed first so the slot
// is not made again).
type DropSlot struct {
	Primary       string `json:"primary"`
	Slot          string `json:"slot"`
	For           string `json:"for,omitempty"`
	CatalogueRow  bool   `json:"catalogueRow,omitempty"`
	PermanentSlot bool   `json:"permanentSlot,omitempty"`
	RetainedBytes int64  `json:"retainedBytes"`
}

// Switchover is the role swap's payload: both ends, their endpoints, the
// specs each gets, and the gate's inputs.
type Switchover struct {
	From         Subject            `json:"from"`
	To           Subject            `json:"to"`
	FromEndpoint *snapshot.Endpoint `json:"fromEndpoint,omitempty"`
	ToEndpoint   *snapshot.Endpoint `json:"toEndpoint,omitempty"`
	// Demoted is the old primary's spec as a standby of the target;
	// Promoted the target's spec as primary; Restore the old primary's
	// spec as it was, written back if the switchover backs out.
	Demoted  snapshot.Spec `json:"demoted"`
	Promoted snapshot.Spec `json:"promoted"`
	Restore  snapshot.Spec `json:"restore"`
	// PromoteFirst, when set, is what promotion writes: Promoted with the
	// instances the target runs as a standby, so that the promotion waits
	// for no new instance; Promoted follows once the target takes writes.
	PromoteFirst *snapshot.Spec `json:"promoteFirst,omitempty"`
	// SystemID and Timeline are the old primary's: the gate compares the
	// target's against them. Zero when resuming (the journal has them).
	SystemID    string `json:"systemIdentifier,omitempty"`
	Timeline    int    `json:"timeline,omitempty"`
	MaxLagBytes int64  `json:"maxLagBytes"`
	// MaxWritePauseSeconds bounds how long writes may be refused, from
	// the fence on; past it (or when a wait stalls) the switchover backs
	// out while the target is not promoted.
	MaxWritePauseSeconds float64 `json:"maxWritePauseSeconds"`
	// Resume is the journaled phase of an interrupted switchover;
	// "aborting" backs it out.
	Resume string `json:"resume,omitempty"`
	// FinalLSN is where the old primary's end of WAL is read (the file's
	// spec.replication.finalLSN); "" is the default, "restart".
	FinalLSN string `json:"finalLSN,omitempty"`
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

// Site is a site of the plan and the kubeconfig context that reaches it,
// so a saved plan can be executed without the topology file.
type Site struct {
	Name    string `json:"name"`
	Context string `json:"context"`
}

// Plan is the ordered work that makes the live world match the file.
type Plan struct {
	Topology string         `json:"topology"`
	Revision string         `json:"revision,omitempty"`
	Digest   string         `json:"digest"`
	Sites    []Site         `json:"sites"`
	Clusters []ClusterRoles `json:"clusters"`
	Steps    []Step         `json:"steps"`
	Refusals []Refusal      `json:"refusals"`
	Notes    []Note         `json:"notes"`
}

// PrimaryNow is the one cluster the plan found taking writes as the
// primary; "" when none or several did.
func (p *Plan) PrimaryNow() string {
	found := ""
	for _, c := range p.Clusters {
		if c.Now == RolePrimary {
			if found != "" {
				return ""
			}
			found = c.Name
		}
	}
	return found
}

// PrimaryAfter is the one cluster the plan makes (or keeps) the primary;
// "" when it changes nothing's role (a refused plan).
func (p *Plan) PrimaryAfter() string {
	for _, c := range p.Clusters {
		if c.After == RolePrimary {
			return c.Name
		}
	}
	return ""
}

// InSync reports whether nothing needs doing.
func (p *Plan) InSync() bool { return len(p.Steps) == 0 && len(p.Refusals) == 0 }

// Refused reports whether the plan must not be applied.
func (p *Plan) Refused() bool { return len(p.Refusals) > 0 }

// Count summarises steps the way the closing line of a plan says them.
type Count struct {
	Switchovers, Create, Update, Refused int
	// Delete counts what goes: clusters and slots.
	Delete int `json:",omitempty"`
}

// Count returns the plan's summary numbers.
func (p *Plan) Count() Count {
	var c Count
	for _, s := range p.Steps {
		switch Actions[s.Action].Bucket {
		case BucketSwitchover:
			c.Switchovers++
		case BucketCreate:
			c.Create++
		case BucketUpdate:
			c.Update++
		case BucketDelete:
			c.Delete++
		}
	}
	c.Refused = len(p.Refusals)
	return c
}
