package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Observer observes the live world of a topology; it fails only when it
// cannot observe at all (an unknown flavor), not for unreachable sites.
type Observer interface {
	Observe(ctx context.Context, d *topology.Desired) (*snapshot.Snapshot, error)
}

// Applier executes the cycle's plan, computed with opt from seen, the
// cycle's look at the world.
type Applier func(ctx context.Context, d *topology.Desired, pl plan.Plan, seen *snapshot.Snapshot, opt plan.Options) (*apply.Result, error)

// Outcome names how a cycle ended.
type Outcome string

// Outcomes, also the values of the metrics' result label.
const (
	OutcomeInSync  Outcome = "in-sync"
	OutcomeApplied Outcome = "applied"
	OutcomeRefused Outcome = "refused"
	OutcomeError   Outcome = "error"
	OutcomeStopped Outcome = "stopped"
	// OutcomeBusy: another run holds the topology's Lease; the loop tries
	// again soon. Not a refusal: nothing is wrong with the topology.
	OutcomeBusy Outcome = "busy"
	// OutcomeDrift: observe-only, and the live world does not match the
	// file; nothing was changed.
	OutcomeDrift Outcome = "drift"
)

// busyRetry is how soon a busy cycle is tried again (or the interval, when
// that is shorter).
const busyRetry = 5 * time.Second

// LostRetry is how soon the loop looks again while a failed-over primary's
// site is away (and the Observer cannot probe it) or back and not rejoined:
// when it answers, the first cycle fences it, so the time it can take
// writes is this, not the interval.
const LostRetry = 3 * time.Second

// SiteProber is an Observer that can tell cheaply whether a site answers:
// while a failed-over primary's site is away, the loop asks every
// lostProbe and starts a cycle, which fences it, the moment it is back.
type SiteProber interface {
	SiteAnswers(ctx context.Context, d *topology.Desired, site string) error
}

// lostProbe is how often a SiteProber is asked about a site away;
// probeFallback how soon the loop looks again all the same (a probe that
// fails for another reason than the site being away).
const (
	lostProbe     = 500 * time.Millisecond
	probeFallback = 15 * time.Second
)

// Cycle is what one pass did.
type Cycle struct {
	// Topology is the topology's name, as its metrics and log lines say it.
	Topology string
	Outcome  Outcome
	Revision string
	Plan     *plan.Plan
	Applied  []apply.CompletedStep
	Err      error
	Duration time.Duration
	// LostAway: a failed-over primary has not returned (or not been
	// fenced) yet; the loop looks again within LostRetry.
	LostAway bool
	// AwaySite is that primary's site while it is unreachable, which a
	// SiteProber watches meanwhile.
	AwaySite string
	desired  *topology.Desired
}

// BusyError is an Applier's word that it did not begin for now (no
// switchover slot free in the topology's sites): the loop tries again
// within busyRetry, from a new look, as when another run holds the Lease.
type BusyError struct{ Why string }

func (e *BusyError) Error() string { return e.Why }

// Loop repeats cycles every Interval until ctx ends or Drain closes.
type Loop struct {
	// Name stands for the topology until its file first reads (the file's
	// path); after that the topology's own name does.
	Name          string
	Source        Source
	Observer      Observer
	Apply         Applier
	Interval      time.Duration
	AllowRollback bool
	// ObserveOnly observes, plans and reports, and never applies: to watch
	// a topology another deploy path applies.
	ObserveOnly bool
	Log         *slog.Logger
	Metrics     *Metrics
	// Wake starts the next cycle before the interval is up (a new commit).
	Wake <-chan struct{}
	// Seen, when set, is told each cycle's topology and look (an agent's
	// vote keeper follows them).
	Seen func(in *Input, snap *snapshot.Snapshot)
	// Beside, when set, runs alongside the loop and is stopped with it.
	Beside func(ctx context.Context)
	// Beat, when set, puts the loop's regular cycles on the beats
	// Beat + k×Interval that the other loops of its fleet share, so their
	// first looks come together and share one list per kind and
	// namespace of each site (live.Observer.ObserveListed).
	Beat time.Time

	mu   sync.Mutex
	last time.Time // when Run started or the last cycle ended, for /healthz
	// topology is the name the last read of the file gave.
	topology string
}

// Run cycles until ctx is done or drain is closed. A drain stops the loop
// at the next step boundary; the cycle's own apply sees drain too.
func (l *Loop) Run(ctx context.Context, drain <-chan struct{}) {
	l.mu.Lock()
	l.last = time.Now()
	l.mu.Unlock()
	if l.Beside != nil {
		bctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go l.Beside(bctx)
	}
	for {
		c := l.Once(ctx)
		l.logCycle(c)
		if c.Outcome == OutcomeStopped {
			l.Log.Info("stopped", "reason", "shutdown requested")
			return
		}
		wait := l.Interval
		if !l.Beat.IsZero() {
			wait = untilBeat(time.Now(), l.Beat, l.Interval)
		}
		if c.Outcome == OutcomeBusy {
			wait = min(wait, busyRetry)
		}
		prober, _ := l.Observer.(SiteProber)
		if c.AwaySite == "" {
			prober = nil // nothing to probe: a site back, or no failover
		}
		switch {
		case c.LostAway && prober != nil:
			wait = min(wait, probeFallback)
		case c.LostAway:
			wait = min(wait, LostRetry)
		}
		if stop := l.pause(ctx, drain, c, wait, prober); stop != "" {
			l.Log.Info("stopped", "reason", stop)
			return
		}
	}
}

// untilBeat is how long from now to the first beat (beat + k×interval)
// at least half an interval away: a loop on beats cycles about every
// interval, as one off them does.
func untilBeat(now, beat time.Time, interval time.Duration) time.Duration {
	if interval <= 0 {
		return interval
	}
	since := now.Sub(beat)
	next := interval - since%interval
	if since < 0 {
		next = -since % interval
	}
	if next < interval/2 {
		next += interval
	}
	return next
}

// pause waits wait before the next cycle, or less: a new commit, or the
// site of a failed-over primary answering again (asked every lostProbe
// when prober is set). It returns why the loop must stop, "" when not.
func (l *Loop) pause(ctx context.Context, drain <-chan struct{}, c Cycle, wait time.Duration, prober SiteProber) string {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var probe <-chan time.Time
	if prober != nil {
		t := time.NewTicker(lostProbe)
		defer t.Stop()
		probe = t.C
	}
	for {
		select {
		case <-drain:
			return "shutdown requested"
		case <-ctx.Done():
			return context.Cause(ctx).Error()
		case <-timer.C:
			return ""
		case <-l.Wake:
			return ""
		case <-probe:
			pctx, cancel := context.WithTimeout(ctx, lostProbe)
			err := prober.SiteAnswers(pctx, c.desired, c.AwaySite)
			cancel()
			if err == nil {
				l.Log.Info("site answers again", "topology", c.Topology, "site", c.AwaySite)
				return ""
			}
			l.Log.Debug("site still away", "topology", c.Topology, "site", c.AwaySite, "error", err.Error())
		}
	}
}

// Once reads the topology, observes, plans, and applies when the plan has
// steps and no refusal.
func (l *Loop) Once(ctx context.Context) Cycle {
	start := time.Now()
	l.mu.Lock()
	l.last = start
	l.mu.Unlock()
	c := l.once(ctx)
	c.Duration = time.Since(start)
	l.mu.Lock()
	l.last = time.Now()
	if c.Topology != "" {
		l.topology = c.Topology
	} else {
		c.Topology = cmp.Or(l.topology, l.Name)
	}
	l.mu.Unlock()
	if l.Metrics != nil {
		l.Metrics.observe(c, time.Now())
	}
	return c
}

func (l *Loop) once(ctx context.Context) Cycle {
	in, err := l.Source.Load(ctx)
	if err != nil {
		return Cycle{Outcome: OutcomeError, Err: err}
	}
	c := Cycle{Topology: in.Desired.Name, Revision: in.Revision}
	snap, err := l.Observer.Observe(ctx, in.Desired)
	if err != nil {
		c.Outcome, c.Err = OutcomeError, err
		return c
	}
	if l.Seen != nil {
		l.Seen(in, snap)
	}
	opt, err := in.PlanOptions(snap, l.AllowRollback)
	if err != nil {
		c.Outcome, c.Err = OutcomeError, err
		return c
	}
	if l.Metrics != nil {
		l.Metrics.ObserveSnapshot(in.Desired, snap)
	}
	pl := planner.Compute(in.Desired, snap, opt)
	c.Plan = &pl
	c.LostAway, c.desired = lostAway(snap), in.Desired
	if rec := snap.LastFailover(); c.LostAway && rec != nil && snap.SiteDown(rec.From) {
		lost, _ := snap.Cluster(rec.From)
		c.AwaySite = lost.Site
	}
	switch {
	case pl.Refused() && heldByAnother(snap, time.Now()):
		// Another run is at work (its switchover journal may be what the
		// plan refuses): wait for it rather than report the topology.
		c.Outcome = OutcomeBusy
		return c
	case pl.Refused():
		c.Outcome = OutcomeRefused
		return c
	case pl.InSync():
		c.Outcome = OutcomeInSync
		return c
	case l.ObserveOnly:
		c.Outcome = OutcomeDrift
		return c
	}
	res, err := l.Apply(ctx, in.Desired, pl, snap, opt)
	if res != nil {
		c.Applied = res.Completed
		c.Plan = &res.Plan
	}
	var held *apply.LockHeldError
	var busy *BusyError
	switch {
	case errors.Is(err, apply.ErrDrained):
		c.Outcome = OutcomeStopped
	case errors.As(err, &held), errors.As(err, &busy):
		c.Outcome, c.Err = OutcomeBusy, err
	case apply.IsRefused(err):
		var refused *apply.RefusedError
		errors.As(err, &refused)
		c.Plan = &refused.Plan
		c.Outcome = OutcomeRefused
	case err != nil:
		c.Outcome, c.Err = OutcomeError, err
	case res != nil && res.Remaining != nil:
		c.Outcome, c.Err = OutcomeError, fmt.Errorf("not converged after the plan and its follow-ups: %s", res.Remaining.Summary())
	default:
		c.Outcome = OutcomeApplied
	}
	return c
}

// lostAway reports whether the last failover's lost primary is away, or
// back and not yet fenced and rejoined.
func lostAway(snap *snapshot.Snapshot) bool {
	rec := snap.LastFailover()
	if rec == nil || rec.Phase != snapshot.FailoverDone {
		return false
	}
	if snap.SiteDown(rec.From) {
		return true
	}
	c, ok := snap.Cluster(rec.From)
	if !ok || !c.Exists || c.Object == nil {
		return false
	}
	if c.PG != nil && c.PG.InRecovery && c.PG.WalReceiver != nil && c.PG.WalReceiver.Status == "streaming" {
		return false // a standby again, however it got there
	}
	own := c.Object.Marks.Failover
	return own == nil || own.Epoch < rec.Epoch || own.Returned == nil || !own.Returned.Done
}

// heldByAnother reports whether a site shows the topology's Lease held
// and renewed within its duration: another run holds it (this loop's own
// run releases it before a cycle ends).
func heldByAnother(snap *snapshot.Snapshot, now time.Time) bool {
	for _, s := range snap.Sites {
		if s.Lease == nil || s.Lease.Holder == "" {
			continue
		}
		renewed, err := time.Parse(time.RFC3339, s.Lease.RenewedAt)
		if err == nil && now.Sub(renewed) <= time.Duration(s.Lease.Seconds)*time.Second {
			return true
		}
	}
	return false
}

func (l *Loop) logCycle(c Cycle) {
	attrs := []any{"topology", c.Topology, "result", string(c.Outcome), "revision", cmp.Or(plan.ShortRevision(c.Revision), "-"), "duration", c.Duration.Round(time.Millisecond).String()}
	if c.Plan != nil {
		attrs = append(attrs, "plan", c.Plan.Headline(), "steps", len(c.Applied))
	}
	switch c.Outcome {
	case OutcomeRefused:
		attrs = append(attrs, "refusal", c.Plan.Refusals[0].Reason)
		l.Log.Warn("cycle", attrs...)
	case OutcomeError:
		attrs = append(attrs, "error", c.Err.Error())
		l.Log.Error("cycle", attrs...)
	case OutcomeBusy:
		why := "another run holds the topology's Lease"
		if busy := (*BusyError)(nil); errors.As(c.Err, &busy) {
			why = busy.Why
		}
		l.Log.Info("cycle", append(attrs, "retry", why)...)
	default:
		l.Log.Info("cycle", attrs...)
	}
}

// Healthy reports whether the loop started or ended a cycle within maxAge;
// a loop stuck longer than that is unhealthy.
func (l *Loop) Healthy(now time.Time, maxAge time.Duration) (bool, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.last.IsZero() && now.Sub(l.last) <= maxAge, l.last
}
