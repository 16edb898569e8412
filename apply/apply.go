// Package apply executes a plan exactly as computed: for each step it
// re-observes, re-checks the step's preconditions, runs the step's executor
// from plan.Actions on the step's payload, and waits for the step's
// postcondition, emitting typed progress events. It never decides what to
// do and never reads the topology; the planner does (docs/architecture.md).
package apply

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// Observer observes the live world of the plan's topology.
type Observer interface {
	Observe(ctx context.Context) *snapshot.Snapshot
}

// ClusterObserver is an Observer that can also look at a few clusters
// alone (their objects and databases), for a wait that polls them: the
// API requests of a wait then grow with what it waits for, not with the
// topology.
type ClusterObserver interface {
	ObserveClusters(ctx context.Context, names []string) *snapshot.Snapshot
}

// SiteWriter is what apply needs to change one site: cluster objects in
// the flavor's terms, Secrets, and the Leases of the lock.
type SiteWriter interface {
	WriteSpec(ctx context.Context, ns, name string, s snapshot.Spec) error
	WriteMarks(ctx context.Context, ns, name string, m snapshot.Marks) error
	// DeleteCluster removes a cluster's object, and with it its data (a
	// rebuild).
	DeleteCluster(ctx context.Context, ns, name string) error
	// EnsurePermanentSlot makes the cluster keep a physical slot for a
	// standby in its own configuration (a Patroni cluster's permanent
	// slots), so WAL is retained before the standby's base backup.
	EnsurePermanentSlot(ctx context.Context, ns, name, slot string) error
	// DropPermanentSlot removes a slot from the cluster's own
	// configuration, so that dropping it is not undone.
	DropPermanentSlot(ctx context.Context, ns, name, slot string) error
	// RestartPending has the cluster's servers restarted for settings
	// pending a restart, where pgtopo asks for it (Patroni); an operator
	// that restarts them itself makes it a no-op.
	RestartPending(ctx context.Context, ns, name string) error
	GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error)
	ApplySecret(ctx context.Context, s *corev1.Secret) error
	DeleteSecret(ctx context.Context, ns, name string) error
	GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error)
	CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
	UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
}

// Database opens sessions to a cluster's PostgreSQL as its admin user.
type Database interface {
	Open(ctx context.Context, c *snapshot.ClusterState) (Session, error)
}

// Session is one database session.
type Session interface {
	Exec(ctx context.Context, sql string, args ...any) error
	QueryRow(ctx context.Context, sql string, args ...any) Row
	Close(ctx context.Context) error
}

// Row is one result row (an alias, so a driver's row type fits).
type Row = interface{ Scan(dest ...any) error }

// Catalogue is the operator's list of a primary's standbys in the
// primary's own database, from which it keeps their slots (the flavor
// knows its table). Each method runs its statements through exec, a
// session on the primary.
type Catalogue interface {
	Register(ctx context.Context, exec Exec, cluster, host string, port int, slot string) error
	Forget(ctx context.Context, exec Exec, cluster string) error
	FillExternalIP(ctx context.Context, exec Exec, cluster, host string) error
}

// CredentialKeys are the keys of the admin login in a cluster's
// credentials Secret (the operator's).
type CredentialKeys interface {
	CredentialKeys() (user, password string)
}

// SwitchoverSlots bounds the switchovers running at once per site, across
// runs side by side (many topologies applied together): a switchover takes
// a slot in each of its sites before its fence, and gives them back when
// it ends. Acquire says how long it waited.
type SwitchoverSlots interface {
	Acquire(ctx context.Context, sites []string) (release func(), waited time.Duration, err error)
}

// Exec runs one statement (a Session's Exec).
type Exec = func(ctx context.Context, sql string, args ...any) error

// Runner executes plans.
type Runner struct {
	Observer Observer
	// Sites opens a site for changes, by the site's name in the plan.
	Sites    func(site string) (SiteWriter, error)
	Database Database
	// Catalogue is the operator's standby list, where a plan writes it.
	Catalogue Catalogue
	// Keys name the login in a credentials Secret, for the steps that
	// copy one.
	Keys CredentialKeys
	// Switchovers, when set, bounds switchovers at once per site.
	Switchovers SwitchoverSlots
	// Progress receives events; nil drops them.
	Progress func(Event)
	// Holder identifies the process (an agent, a CLI run); the Lease
	// names each run apart (lockHolder), so that two runs of one process
	// exclude each other.
	Holder string
	// HolderGone, when set, says whether another holder is known to be
	// gone (a process of this host that no longer runs): its Lease is taken
	// over at once instead of after it expires.
	HolderGone  func(holder string) bool
	LockTimeout time.Duration
	// StepTimeout bounds each step's wait for its postcondition.
	StepTimeout time.Duration
	// SiteAwayBound, when set, replaces how long a step's wait goes on
	// while the site of a cluster it waits on does not answer
	// (DefaultSiteAwayBound).
	SiteAwayBound time.Duration
	// MaxWritePause, when set, replaces the plan's write-outage budget of
	// a switchover.
	MaxWritePause time.Duration
	// StallAfter, when set, replaces how long a switchover's wait may see
	// no progress (a third of the budget, 3 to 15 s).
	StallAfter time.Duration
	// Replan plans again from a fresh snapshot: after the lock, to find
	// out whether the world changed while this run waited, and after the
	// last step, for what only shows once earlier steps are done.
	Replan func(*snapshot.Snapshot) plan.Plan
	// Changed decides what a changed plan means. It is told the new plan
	// and why it differs; returning nil runs the new plan (after saying
	// so), an error stops the run with it. Nil refuses: a saved plan runs
	// as saved or not at all.
	Changed func(now plan.Plan, why []string) error
	// FollowUps is how many follow-up plans may run after the plan's last
	// step (0: none; a saved plan runs only itself).
	FollowUps int
	// Drain, once closed, stops the run before its next step. A step under
	// way (a whole switchover included) finishes first, so a shutdown never
	// leaves a primary fenced waiting for a resume.
	Drain <-chan struct{}
	// Poll intervals; zero means the defaults (300 ms, 100 ms during a
	// switchover, when writes are refused).
	PollEvery, PollSwitchover time.Duration
	// ReadyPatience is how long a switchover waits before its fence for
	// the old primary's operator to report it ready (zero:
	// DefaultReadyPatience).
	ReadyPatience time.Duration
	// RestoreSettle is how long a backed-out primary whose demote was
	// written but not yet acted on must stay writable before the back-out
	// is done (zero: 5 s).
	RestoreSettle time.Duration

	// FullPolls makes every wait observe every site each poll, as before
	// waits named what they wait for: a benchmark's baseline.
	FullPolls bool
	// Held is a Lease taken before the run and kept after it (HoldLock):
	// the plan's lock step takes nothing, and the run releases nothing.
	Held *HeldLock

	held   locks
	start  time.Time
	lockAs string // this run's name in the Leases it takes (lockHolder)
}

// Result says what a run did.
type Result struct {
	Plan      plan.Plan       // the plan executed last
	Completed []CompletedStep // steps done, in order
	// Remaining is what the live world still needs once the plan and its
	// follow-ups are done (nil when converged or not known).
	Remaining *plan.Plan
}

// CompletedStep is a step done and how long it took.
type CompletedStep struct {
	plan.Step
	Seconds float64 `json:"seconds"`
}

// ErrDrained is returned when Drain stopped a run between steps.
var ErrDrained = errors.New("stopped between steps: shutdown requested; the next run resumes from live state")

// RefusedError is a plan with refusals: nothing was changed by it.
type RefusedError struct{ Plan plan.Plan }

func (e *RefusedError) Error() string {
	if len(e.Plan.Refusals) == 0 {
		return "refused"
	}
	return "refused: " + e.Plan.Refusals[0].Reason
}

// IsRefused reports whether err is a refusal.
func IsRefused(err error) bool {
	var re *RefusedError
	return errors.As(err, &re)
}

// StaleError is a saved plan the live world no longer matches.
type StaleError struct {
	Why []string
	Now plan.Plan
}

func (e *StaleError) Error() string {
	return "stale plan: " + strings.Join(e.Why, "; ") + "; run diff again"
}

// PrimaryMovedError: another run changed the primary while this one waited
// for the lock. Going on would make a second switchover, and a second
// write outage, from a file written before the first.
type PrimaryMovedError struct{ Was, Now string }

func (e *PrimaryMovedError) Error() string {
	return fmt.Sprintf("another run changed the primary from %s to %s while this run waited for the lock: refusing to go on from a plan made before that (with --repo, a revision newer than the one applied goes on); run diff to see what this file would do now, then apply again", e.Was, e.Now)
}

// Execute runs plan, computed from a snapshot whose basis is basis.
func (r *Runner) Execute(ctx context.Context, pl plan.Plan, basis plan.Basis) (*Result, error) {
	return r.execute(ctx, pl, basis, nil)
}

// ExecuteFrom runs plan just computed from snap: the first step's
// preconditions are checked on snap rather than on a new look.
func (r *Runner) ExecuteFrom(ctx context.Context, pl plan.Plan, snap *snapshot.Snapshot) (*Result, error) {
	return r.execute(ctx, pl, plan.BasisOf(snap), snap)
}

func (r *Runner) execute(ctx context.Context, pl plan.Plan, basis plan.Basis, seen *snapshot.Snapshot) (*Result, error) {
	r.start = time.Now()
	res := &Result{Plan: pl}
	defer func() {
		if len(r.held) > 0 {
			// Said before the release, so no other run's "holding"
			// line can come before this run's last.
			r.emit(Event{Type: EventLock, Message: fmt.Sprintf("lock: releasing Lease %s", r.held[0].name)})
			r.held.release(context.Background())
		}
		r.held = nil
	}()
	for round := 0; ; round++ {
		if pl.Refused() {
			return res, &RefusedError{Plan: pl}
		}
		next, err := r.run(ctx, pl, basis, seen, res)
		seen = nil // a follow-up pl's first step looks again
		if err != nil || next == nil {
			return res, err
		}
		if next.InSync() {
			r.emit(Event{Type: EventConverged, Message: "converged: " + next.Headline()})
			return res, nil
		}
		if round >= r.FollowUps {
			res.Remaining = next
			return res, nil
		}
		r.emit(Event{Type: EventReplan, Message: "follow-up plan (what only shows once the earlier steps are done): " + next.Summary()})
		pl, basis = *next, plan.Basis{}
		res.Plan = pl
	}
}

// run executes the steps of plan; it returns the plan the world needs
// afterwards, or nil when it cannot tell (no Replan). fresh, when not nil,
// is a look just taken, for the first step.
func (r *Runner) run(ctx context.Context, pl plan.Plan, basis plan.Basis, fresh *snapshot.Snapshot, res *Result) (*plan.Plan, error) {
	// The look taken after a step to re-plan is the next step's look too:
	// nothing ran in between.
	for i := 0; i < len(pl.Steps); i++ {
		step := pl.Steps[i]
		if r.draining() {
			r.emit(Event{Type: EventStopped, Message: fmt.Sprintf("shutdown requested: stopping before %s %s", step.Action, step.Subject)})
			return nil, ErrDrained
		}
		began := time.Now()
		err := r.runStep(ctx, step, i+1, len(pl.Steps), fresh)
		fresh = nil
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", step.Action, step.Subject, err)
		}
		res.Completed = append(res.Completed, CompletedStep{Step: step, Seconds: time.Since(began).Seconds()})
		if err := r.lockLost(); err != nil {
			return nil, err
		}
		if !plan.Actions[step.Action].Recheck || r.Replan == nil {
			continue
		}
		snap := r.Observer.Observe(ctx)
		now := r.Replan(snap)
		fresh = snap
		// Refused only when this file still asks for another primary than
		// the one the other run made: one that asks for the same has
		// nothing left to do.
		if was, is := pl.PrimaryNow(), now.PrimaryNow(); was != "" && is != "" && was != is && now.PrimaryAfter() != is {
			// A revision from Git that the planner did not refuse is not
			// older than the one the other run recorded: it goes on.
			if now.Revision == "" || now.Refused() {
				return nil, &PrimaryMovedError{Was: was, Now: is}
			}
			r.emit(Event{Type: EventReplan, Message: fmt.Sprintf("another run changed the primary from %s to %s while this run waited for the lock; revision %s is not older than the one it applied: going on", was, is, now.Revision)})
		}
		if plan.Same(pl, now) {
			continue
		}
		why := plan.Staleness(pl, basis, now, plan.BasisOf(snap))
		if r.Changed == nil {
			return nil, &StaleError{Why: why, Now: now}
		}
		if err := r.Changed(now, why); err != nil {
			return nil, err
		}
		if now.Refused() {
			return nil, &RefusedError{Plan: now}
		}
		res.Plan, pl, basis = now, now, plan.BasisOf(snap)
		if now.InSync() {
			return &now, nil
		}
		i = indexAfter(now, step.Action)
	}
	if r.Replan == nil {
		return nil, nil
	}
	next := r.Replan(r.Observer.Observe(ctx))
	return &next, nil
}

// indexAfter is the index of the last step of the plan with the action
// just done (the lock, held already), so the loop resumes after it.
func indexAfter(p plan.Plan, a plan.Action) int {
	last := -1
	for i, s := range p.Steps {
		if s.Action == a {
			last = i
		}
	}
	return last
}

// runStep checks the step's preconditions on snap, a look taken since the
// last step ended (nil: look now), then executes it.
func (r *Runner) runStep(ctx context.Context, step plan.Step, n, total int, snap *snapshot.Snapshot) error {
	if snap == nil {
		snap = r.Observer.Observe(ctx)
	}
	if err := plan.Check(step, snap); err != nil {
		return err
	}
	x := &stepRun{r: r, step: step, n: n, total: total, last: snap}
	x.emit(Event{Type: EventStep, Message: fmt.Sprintf("%s %s: %s", step.Action, step.Subject, step.Reason)})
	kind, ok := plan.Actions[step.Action]
	if !ok {
		return fmt.Errorf("unknown action %q", step.Action)
	}
	return kind.Execute(x, ctx, step)
}

func (r *Runner) draining() bool {
	select {
	case <-r.Drain:
		return true
	default:
		return false
	}
}

func (r *Runner) emit(e Event) {
	if r.Progress == nil {
		return
	}
	e.Time = time.Now()
	e.Elapsed = time.Since(r.start).Seconds()
	r.Progress(e)
}
