package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
)

// Action is what a step does.
type Action string

// Actions; their order, rendering and execution are in Actions.
const (
	ActionLock            Action = "lock"
	ActionEnsurePrimary   Action = "ensure-primary"
	ActionEnsureSlot      Action = "ensure-slot"
	ActionCheckpoint      Action = "checkpoint"
	ActionBootstrapSecret Action = "bootstrap-secret"
	// ActionRefreshCredentials copies the primary's admin credentials
	// into a standby's own credentials Secret, which no longer
	// authenticate (the primary's password was rotated and replicated).
	ActionRefreshCredentials Action = "refresh-credentials"
	ActionCreateStandby      Action = "create-standby"
	ActionSwitchover         Action = "switchover"
	ActionFailover           Action = "failover"
	ActionRejoin             Action = "rejoin"
	ActionRepoint            Action = "repoint"
	ActionUpdate             Action = "update"
	// ActionRestart has a cluster's operator (or Patroni) restart its
	// server for settings pending a restart, and waits until they hold.
	ActionRestart        Action = "restart"
	ActionFillExternalIP Action = "fill-external-ip"
	ActionRebuild        Action = "rebuild"
	ActionDeleteCluster  Action = "delete-cluster"
	ActionDropSlot       Action = "drop-slot"
	ActionRecord         Action = "record"
	// Break-glass steps, planned only by pgtopo fence and unfence.
	ActionFence   Action = "fence"
	ActionUnfence Action = "unfence"
)

// Bucket is where a step counts in a plan's closing line.
type Bucket int

// Buckets.
const (
	BucketNone Bucket = iota
	BucketSwitchover
	BucketCreate
	BucketUpdate
	BucketDelete
)

// Executor runs steps; apply implements it. Each method takes its
// action's own payload; Actions binds action, payload and method, so an
// action cannot exist without its executor.
type Executor interface {
	Lock(ctx context.Context, at Subject, p *Lock) error
	EnsurePrimary(ctx context.Context, at Subject, p *EnsurePrimary) error
	EnsureSlot(ctx context.Context, at Subject, p *EnsureSlot) error
	Checkpoint(ctx context.Context, at Subject, p *Checkpoint) error
	BootstrapSecret(ctx context.Context, at Subject, p *BootstrapSecret) error
	RefreshCredentials(ctx context.Context, at Subject, p *RefreshCredentials) error
	CreateStandby(ctx context.Context, at Subject, p *CreateStandby) error
	Switchover(ctx context.Context, at Subject, p *Switchover) error
	Failover(ctx context.Context, at Subject, p *Failover) error
	Rejoin(ctx context.Context, at Subject, p *Rejoin) error
	Repoint(ctx context.Context, at Subject, p *Repoint) error
	Update(ctx context.Context, at Subject, p *Update) error
	Restart(ctx context.Context, at Subject, p *Restart) error
	FillExternalIP(ctx context.Context, at Subject, p *FillExternalIP) error
	Rebuild(ctx context.Context, at Subject, p *Rebuild) error
	DeleteCluster(ctx context.Context, at Subject, p *DeleteCluster) error
	DropSlot(ctx context.Context, at Subject, p *DropSlot) error
	Record(ctx context.Context, at Subject, p *Record) error
	Fence(ctx context.Context, at Subject, p *Fence) error
	Unfence(ctx context.Context, at Subject, p *Unfence) error
}

// ActionInfo is everything pgtopo knows about an action in one place.
type ActionInfo struct {
	// Rank orders steps: by rank, then by sequence, then by cluster name.
	Rank int
	// Symbol marks the step in a text plan.
	Symbol string
	Bucket Bucket
	// Metric is the action label of pgtopo_steps_applied_total.
	Metric string
	// Recheck: once this step is done, apply observes again and goes on
	// only with the plan unchanged (the lock: another run may have changed
	// the world while this one waited for it).
	Recheck bool

	run    func(Executor, context.Context, Step) error
	decode func(json.RawMessage) (Payload, error)
}

// Execute runs the step with its payload on e.
func (k ActionInfo) Execute(e Executor, ctx context.Context, s Step) error { return k.run(e, ctx, s) }

// bind ties an action's kind to its payload type P and its executor.
func bind[P any, PP interface {
	*P
	Payload
}](k ActionInfo, run func(Executor, context.Context, Subject, PP) error) ActionInfo {
	k.run = func(e Executor, ctx context.Context, s Step) error {
		p, ok := s.Payload.(PP)
		if !ok || p == nil {
			return fmt.Errorf("payload is %T, not %T", s.Payload, PP(nil))
		}
		return run(e, ctx, s.Subject, p)
	}
	k.decode = func(raw json.RawMessage) (Payload, error) {
		p := PP(new(P))
		if len(raw) == 0 || string(raw) == "null" {
			return nil, fmt.Errorf("missing (a %T)", p)
		}
		if err := strict(raw, p); err != nil {
			return nil, err
		}
		return p, nil
	}
	return k
}

// Actions holds, per action, everything pgtopo knows of it.
var Actions = map[Action]ActionInfo{
	ActionLock:               bind(ActionInfo{Rank: 0, Symbol: "*", Bucket: BucketNone, Metric: "lock", Recheck: true}, Executor.Lock),
	ActionRejoin:             bind(ActionInfo{Rank: 1, Symbol: "!", Bucket: BucketSwitchover, Metric: "rejoin"}, Executor.Rejoin),
	ActionEnsurePrimary:      bind(ActionInfo{Rank: 2, Symbol: "+", Bucket: BucketCreate, Metric: "ensure-primary"}, Executor.EnsurePrimary),
	ActionEnsureSlot:         bind(ActionInfo{Rank: 3, Symbol: "+", Bucket: BucketCreate, Metric: "ensure-slot"}, Executor.EnsureSlot),
	ActionCheckpoint:         bind(ActionInfo{Rank: 4, Symbol: "*", Bucket: BucketNone, Metric: "checkpoint"}, Executor.Checkpoint),
	ActionBootstrapSecret:    bind(ActionInfo{Rank: 5, Symbol: "+", Bucket: BucketCreate, Metric: "bootstrap-secret"}, Executor.BootstrapSecret),
	ActionRefreshCredentials: bind(ActionInfo{Rank: 6, Symbol: "~", Bucket: BucketUpdate, Metric: "refresh-credentials"}, Executor.RefreshCredentials),
	ActionRebuild:            bind(ActionInfo{Rank: 7, Symbol: "-+", Bucket: BucketCreate, Metric: "rebuild"}, Executor.Rebuild),
	ActionCreateStandby:      bind(ActionInfo{Rank: 8, Symbol: "+", Bucket: BucketCreate, Metric: "create-standby"}, Executor.CreateStandby),
	ActionSwitchover:         bind(ActionInfo{Rank: 9, Symbol: "<>", Bucket: BucketSwitchover, Metric: "switchover"}, Executor.Switchover),
	ActionFailover:           bind(ActionInfo{Rank: 10, Symbol: "!>", Bucket: BucketSwitchover, Metric: "failover"}, Executor.Failover),
	ActionRepoint:            bind(ActionInfo{Rank: 11, Symbol: "~", Bucket: BucketUpdate, Metric: "repoint"}, Executor.Repoint),
	ActionUpdate:             bind(ActionInfo{Rank: 12, Symbol: "~", Bucket: BucketUpdate, Metric: "update"}, Executor.Update),
	ActionRestart:            bind(ActionInfo{Rank: 13, Symbol: "~", Bucket: BucketUpdate, Metric: "restart"}, Executor.Restart),
	ActionFillExternalIP:     bind(ActionInfo{Rank: 14, Symbol: "~", Bucket: BucketUpdate, Metric: "fill-external-ip"}, Executor.FillExternalIP),
	ActionDeleteCluster:      bind(ActionInfo{Rank: 15, Symbol: "-", Bucket: BucketDelete, Metric: "delete-cluster"}, Executor.DeleteCluster),
	ActionDropSlot:           bind(ActionInfo{Rank: 16, Symbol: "-", Bucket: BucketDelete, Metric: "drop-slot"}, Executor.DropSlot),
	ActionRecord:             bind(ActionInfo{Rank: 17, Symbol: "~", Bucket: BucketUpdate, Metric: "record"}, Executor.Record),
	ActionFence:              bind(ActionInfo{Rank: 18, Symbol: "!", Bucket: BucketUpdate, Metric: "fence"}, Executor.Fence),
	ActionUnfence:            bind(ActionInfo{Rank: 19, Symbol: "!", Bucket: BucketUpdate, Metric: "unfence"}, Executor.Unfence),
}

// SortSteps orders steps by action rank, then sequence, then cluster name.
func SortSteps(steps []Step) {
	sort.SliceStable(steps, func(i, j int) bool {
		a, b := steps[i], steps[j]
		if ra, rb := Actions[a.Action].Rank, Actions[b.Action].Rank; ra != rb {
			return ra < rb
		}
		if a.Sequence != b.Sequence {
			return a.Sequence < b.Sequence
		}
		return a.Subject.Cluster < b.Subject.Cluster
	})
}
