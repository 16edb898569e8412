package diff

import (
	"context"
	"sort"
)

// Action is what a step does.
type Action string

// Actions; their order, rendering and execution are in Catalogue.
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

// Executor runs steps; apply implements it. Catalogue names which method
// runs which action, so an action cannot exist without its executor.
type Executor interface {
	Lock(ctx context.Context, s Step) error
	EnsurePrimary(ctx context.Context, s Step) error
	EnsureSlot(ctx context.Context, s Step) error
	Checkpoint(ctx context.Context, s Step) error
	BootstrapSecret(ctx context.Context, s Step) error
	RefreshCredentials(ctx context.Context, s Step) error
	CreateStandby(ctx context.Context, s Step) error
	Switchover(ctx context.Context, s Step) error
	Failover(ctx context.Context, s Step) error
	Rejoin(ctx context.Context, s Step) error
	Repoint(ctx context.Context, s Step) error
	Update(ctx context.Context, s Step) error
	Restart(ctx context.Context, s Step) error
	FillExternalIP(ctx context.Context, s Step) error
	Rebuild(ctx context.Context, s Step) error
	DeleteCluster(ctx context.Context, s Step) error
	DropSlot(ctx context.Context, s Step) error
	Record(ctx context.Context, s Step) error
	Fence(ctx context.Context, s Step) error
	Unfence(ctx context.Context, s Step) error
}

// Kind is everything pgtopo knows about an action in one place.
type Kind struct {
	// Rank orders steps: by rank, then by cluster name.
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
	Execute func(Executor, context.Context, Step) error
}

// Catalogue is the step catalogue: one entry per action.
var Catalogue = map[Action]Kind{
	ActionLock:               {Rank: 0, Symbol: "*", Bucket: BucketNone, Metric: "lock", Recheck: true, Execute: Executor.Lock},
	ActionRejoin:             {Rank: 1, Symbol: "!", Bucket: BucketSwitchover, Metric: "rejoin", Execute: Executor.Rejoin},
	ActionEnsurePrimary:      {Rank: 2, Symbol: "+", Bucket: BucketCreate, Metric: "ensure-primary", Execute: Executor.EnsurePrimary},
	ActionEnsureSlot:         {Rank: 3, Symbol: "+", Bucket: BucketCreate, Metric: "ensure-slot", Execute: Executor.EnsureSlot},
	ActionCheckpoint:         {Rank: 4, Symbol: "*", Bucket: BucketNone, Metric: "checkpoint", Execute: Executor.Checkpoint},
	ActionBootstrapSecret:    {Rank: 5, Symbol: "+", Bucket: BucketCreate, Metric: "bootstrap-secret", Execute: Executor.BootstrapSecret},
	ActionRefreshCredentials: {Rank: 6, Symbol: "~", Bucket: BucketUpdate, Metric: "refresh-credentials", Execute: Executor.RefreshCredentials},
	ActionRebuild:            {Rank: 7, Symbol: "-+", Bucket: BucketCreate, Metric: "rebuild", Execute: Executor.Rebuild},
	ActionCreateStandby:      {Rank: 8, Symbol: "+", Bucket: BucketCreate, Metric: "create-standby", Execute: Executor.CreateStandby},
	ActionSwitchover:         {Rank: 9, Symbol: "<>", Bucket: BucketSwitchover, Metric: "switchover", Execute: Executor.Switchover},
	ActionFailover:           {Rank: 10, Symbol: "!>", Bucket: BucketSwitchover, Metric: "failover", Execute: Executor.Failover},
	ActionRepoint:            {Rank: 11, Symbol: "~", Bucket: BucketUpdate, Metric: "repoint", Execute: Executor.Repoint},
	ActionUpdate:             {Rank: 12, Symbol: "~", Bucket: BucketUpdate, Metric: "update", Execute: Executor.Update},
	ActionRestart:            {Rank: 13, Symbol: "~", Bucket: BucketUpdate, Metric: "restart", Execute: Executor.Restart},
	ActionFillExternalIP:     {Rank: 14, Symbol: "~", Bucket: BucketUpdate, Metric: "fill-external-ip", Execute: Executor.FillExternalIP},
	ActionDeleteCluster:      {Rank: 15, Symbol: "-", Bucket: BucketDelete, Metric: "delete-cluster", Execute: Executor.DeleteCluster},
	ActionDropSlot:           {Rank: 16, Symbol: "-", Bucket: BucketDelete, Metric: "drop-slot", Execute: Executor.DropSlot},
	ActionRecord:             {Rank: 17, Symbol: "~", Bucket: BucketUpdate, Metric: "record", Execute: Executor.Record},
	ActionFence:              {Rank: 18, Symbol: "!", Bucket: BucketUpdate, Metric: "fence", Execute: Executor.Fence},
	ActionUnfence:            {Rank: 19, Symbol: "!", Bucket: BucketUpdate, Metric: "unfence", Execute: Executor.Unfence},
}

// sortSteps orders steps by action rank, then sequence, then cluster name.
func sortSteps(steps []Step) {
	sort.SliceStable(steps, func(i, j int) bool {
		a, b := steps[i], steps[j]
		if ra, rb := Catalogue[a.Action].Rank, Catalogue[b.Action].Rank; ra != rb {
			return ra < rb
		}
		if a.Sequence != b.Sequence {
			return a.Sequence < b.Sequence
		}
		return a.Subject.Cluster < b.Subject.Cluster
	})
}
