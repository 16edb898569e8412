// Package apply executes a plan: one step at a time it re-observes, re-checks
// the step's preconditions, acts, and waits for the step's postcondition,
// reporting progress. It never decides what to do; diff does.
package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/pgtopo/pgtopo/diff"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/topology"
)

// SiteWriter is what apply needs to change one site.
type SiteWriter interface {
	ApplyPostgresql(ctx context.Context, u *unstructured.Unstructured) error
	GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error)
	ApplySecret(ctx context.Context, s *corev1.Secret) error
	DeleteSecret(ctx context.Context, ns, name string) error
	GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error)
	CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
	UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
}

// Runner applies plans.
type Runner struct {
	Observer *live.Observer
	// Writer opens a site for changes, by kubeconfig context.
	Writer func(context string) (SiteWriter, error)
	// Progress receives progress lines (stderr by default in the CLI).
	Progress io.Writer
	// Holder identifies this run in the Lease.
	Holder      string
	LockTimeout time.Duration
	// StepTimeout bounds each step's wait for its postcondition.
	StepTimeout time.Duration
	Options     diff.Options
	// Drain, once closed, stops the run before its next step. A step under
	// way (a whole switchover included) finishes first, so a shutdown never
	// leaves a primary fenced waiting for a resume.
	Drain <-chan struct{}
}

// Result says what a run did.
type Result struct {
	Plan      diff.Plan   // the plan executed (after taking the lock)
	Completed []diff.Step // steps done, in order
}

// ErrDrained is returned when Drain stopped a run between steps.
var ErrDrained = errors.New("stopped between steps: shutdown requested; the next run resumes from live state")

// maxRounds bounds plan→execute rounds; one normally suffices, a second
// picks up what only shows once earlier steps are done.
const maxRounds = 3

// Apply plans and executes until the live world matches d.
func (r *Runner) Apply(ctx context.Context, d *topology.Desired) (*Result, error) {
	res := &Result{}
	start := time.Now()
	var lock locks
	defer func() { lock.release(context.Background()) }()
	for round := 0; round < maxRounds; round++ {
		snap := r.Observer.Observe(ctx, d)
		plan := diff.Compute(d, snap, r.Options)
		if round == 0 {
			res.Plan = plan
		}
		if plan.Refused() {
			return res, &RefusedError{Plan: plan}
		}
		if plan.InSync() {
			r.progress(start, "converged: %s", plan.Headline())
			return res, nil
		}
		if len(lock) == 0 {
			l, err := r.acquire(ctx, d, plan.Steps[0], start)
			if err != nil {
				return res, err
			}
			lock = l
			// Another run may have changed the world while we waited.
			round--
			continue
		}
		for _, step := range plan.Steps {
			if step.Action == diff.ActionLock {
				continue
			}
			if r.draining() {
				r.progress(start, "shutdown requested: stopping before %s %s", step.Action, step.Subject)
				return res, ErrDrained
			}
			if err := r.runStep(ctx, d, step, start); err != nil {
				return res, fmt.Errorf("%s %s: %w", step.Action, step.Subject, err)
			}
			res.Completed = append(res.Completed, step)
			if err := lock.err(); err != nil {
				return res, err
			}
		}
	}
	return res, fmt.Errorf("not converged after %d rounds; run diff to see what remains", maxRounds)
}

// RefusedError is a plan with refusals: nothing was changed.
type RefusedError struct{ Plan diff.Plan }

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

func (r *Runner) runStep(ctx context.Context, d *topology.Desired, step diff.Step, start time.Time) error {
	snap := r.Observer.Observe(ctx, d)
	if err := diff.Check(step, snap); err != nil {
		return err
	}
	r.progress(start, "%s %s: %s", step.Action, step.Subject, step.Reason)
	x := &exec{r: r, d: d, step: step, start: start}
	switch step.Action {
	case diff.ActionEnsurePrimary:
		return x.ensurePrimary(ctx, snap)
	case diff.ActionCheckpoint:
		return x.checkpoint(ctx, snap)
	case diff.ActionBootstrapSecret:
		return x.bootstrapSecret(ctx, snap)
	case diff.ActionCreateStandby:
		return x.createStandby(ctx, snap)
	case diff.ActionSwitchover:
		return x.switchover(ctx, snap)
	case diff.ActionRepoint:
		return x.repoint(ctx, snap)
	case diff.ActionUpdate:
		return x.update(ctx, snap)
	case diff.ActionFillExternalIP:
		return x.fillExternalIP(ctx, snap)
	case diff.ActionRecord:
		return x.record(ctx, snap)
	}
	return fmt.Errorf("unknown action %q", step.Action)
}

func (r *Runner) draining() bool {
	select {
	case <-r.Drain:
		return true
	default:
		return false
	}
}

func (r *Runner) progress(start time.Time, format string, args ...any) {
	if r.Progress == nil {
		return
	}
	fmt.Fprintf(r.Progress, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}
