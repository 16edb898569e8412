package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/render"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
)

type applyFlags struct {
	dryRun, allowRollback             bool
	timeout, lockTimeout, stepTimeout time.Duration
	maxWritePause                     time.Duration
	progressFormat                    string
	// acceptDataLoss is break-glass consent to a failover.
	acceptDataLoss string
	// allowRebuild names standbys that may be rebuilt.
	allowRebuild []string
	// allowPrimaryRestart consents to restarting the primary for settings.
	allowPrimaryRestart bool
	// output is text (the plan, then a closing line) or json (one
	// ApplyResult document at the end).
	output string
	// parallel is how many topologies run at once; switchoversPerSite
	// bounds their switchovers at once in one site, through slots.
	parallel, switchoversPerSite int
	slotNamespace                string
	slots                        *siteSlots
}

func newApplyCmd(e env) *cobra.Command {
	var src sourceFlags
	var f applyFlags
	cmd := &cobra.Command{
		Use: "apply (-f FILE | --repo URL|PATH [--ref REV] [--path FILE] | PLAN.json)",
		Example: `  pgtopo apply -f orders.yaml
  pgtopo diff -f orders.yaml --out plan.json && pgtopo apply plan.json
  pgtopo apply --repo https://git.example.com/db/topologies.git --ref main --path orders.yaml
  pgtopo apply -f orders-west.yaml --accept-data-loss orders-east   # failover, break-glass`,
		Short: "Make the live topology match the file: ordered, idempotent steps and a safe switchover",
		Long: `Print the plan, take the lock, then execute exactly that plan one step at a
time: each step re-checks its preconditions on a fresh look at the sites,
acts on the step's payload, and waits for its postcondition, with progress
on stderr (--progress-format json for JSON lines).

With -f or --repo, apply plans once, prints, takes the lock and looks again:
if the world changed while it waited, it prints the new plan and why, and
runs that. With PLAN.json (written by diff --out), it runs exactly that plan,
or refuses, changing nothing, when the live world no longer matches what the
plan relied on ("stale plan: ...").

With --repo, the commit read is recorded on every CR; applying a commit older
than the one recorded (or from another line of history) is refused unless
--allow-rollback is given.

A switchover refuses writes from the fence until the target is promoted;
if that lasts longer than the budget (spec.replication.maxWritePause, or
--max-write-pause), or a wait inside it makes no progress for a third of the
budget (3 to 15 s), it backs out while the target is not promoted: the old
primary is primary again, writes resume, exit 1 saying how long they were
refused. Once the target was told to become primary there is no backing out;
the journal stays and the error says what it waited for. Applying the file
that names the old primary while a switchover is unfinished and not promoted
backs it out too.

When the primary's site is lost, a file naming a standby as primary plans a
failover, refused without consent to lose the lost primary's writes that the
standby never received: spec.acceptDataLoss in the file (the reviewed path),
or --accept-data-loss CLUSTER for a run by hand. The plan says what may be
lost. When the lost primary answers again, it is fenced and demoted before
anything else (docs/disaster-recovery.md).

SIGTERM or SIGINT lets the step under way finish (a switchover included) and
stops before the next; a second signal stops at once, and the next run resumes
from the switchover journal. Exit status: 0 converged, 1 error, refusal or
stale plan.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := checkFormat(f.output); err != nil {
				return err
			}
			if f.progressFormat != "text" && f.progressFormat != "json" {
				return usagef("--progress-format %q: use text or json", f.progressFormat)
			}
			ctx, drain, stop := withShutdown(context.Background(), func(msg string) { fmt.Fprintf(e.stderr, "pgtopo: %s\n", msg) })
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, f.timeout)
			defer cancel()
			if len(args) == 1 {
				if len(src.files) > 0 || src.repo != "" {
					return usagef("apply %s: a saved plan carries its topology; give it alone, without -f or --repo", args[0])
				}
				return applySaved(ctx, e, &src, f, args[0], drain)
			}
			if f.parallel < 1 || f.switchoversPerSite < 1 {
				return usagef("--parallel %d --max-switchovers-per-site %d: both take a positive number", f.parallel, f.switchoversPerSite)
			}
			f.slots = newSiteSlots(f.switchoversPerSite)
			f.slots.leaseNamespace = f.slotNamespace
			return src.eachTopology(e, f.output, f.parallel, func(e env, src *sourceFlags) error {
				return applyLive(ctx, e, src, f, drain)
			})
		},
	}
	src.register(cmd, e)
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().BoolVar(&f.allowRollback, "allow-rollback", false, "apply a revision older than the one recorded as applied")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Minute, "give up after this long")
	cmd.Flags().DurationVar(&f.lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another run's lock")
	cmd.Flags().DurationVar(&f.stepTimeout, "step-timeout", 5*time.Minute, "how long each step may wait for its postcondition")
	cmd.Flags().StringVar(&f.progressFormat, "progress-format", "text", "progress on stderr: text or json (one event per line)")
	cmd.Flags().StringVar(&f.acceptDataLoss, "accept-data-loss", "", "break-glass consent to a failover: the lost primary CLUSTER whose unreplicated writes may be lost")
	cmd.Flags().StringVarP(&f.output, "output", "o", "text", "result on stdout: text, or json or yaml (one versioned ApplyResult document: the plan, the steps done with their seconds, how it ended)")
	completeOutput(cmd, formatText, formatJSON, formatYAML)
	cmd.Flags().StringSliceVar(&f.allowRebuild, "allow-rebuild", nil, "let pgtopo rebuild standby CLUSTER if it cannot catch up (deleted with its data, created again), whatever the file's rebuild policy; repeat or comma-separate")
	cmd.Flags().BoolVar(&f.allowPrimaryRestart, "allow-primary-restart", false, "let a settings change restart the primary (a write outage) whatever the file's spec.replication.primaryRestart")
	cmd.Flags().IntVar(&f.parallel, "parallel", 4, "with several topology files, how many run at once (each its own Lease and plan)")
	cmd.Flags().IntVar(&f.switchoversPerSite, "max-switchovers-per-site", 2, "with several topology files, how many switchovers may run at once in one site (kube context), shared with other processes through the site's slot Leases; each keeps its own write budget and back-out")
	cmd.Flags().StringVar(&f.slotNamespace, "slot-namespace", "", slotNamespaceUsage)
	cmd.Flags().DurationVar(&f.maxWritePause, "max-write-pause", 0, "how long a switchover may refuse writes before it backs out (default: the file's spec.replication.maxWritePause, 30s)")
	completeClusterFlags(cmd, "accept-data-loss", "allow-rebuild")
	return cmd
}

// applyLive plans from the file, prints, and executes, re-planning after
// the lock and for follow-ups.
func applyLive(ctx context.Context, e env, src *sourceFlags, f applyFlags, drain <-chan struct{}) error {
	in, obs, snap, closeConns, err := src.loadAndObserve(ctx, e)
	if err != nil {
		return err
	}
	defer closeConns()
	opt, err := in.PlanOptions(snap, f.allowRollback)
	if err != nil {
		return err
	}
	opt.AcceptDataLoss, opt.AllowRebuild, opt.AllowPrimaryRestart = f.acceptDataLoss, f.allowRebuild, f.allowPrimaryRestart
	pl := planner.Compute(in.Desired, snap, opt)
	if done, err := f.printPlan(e, pl); done || err != nil {
		return err
	}
	r, err := newRunner(e, src, f, in, obs, pl, opt, drain)
	if err != nil {
		return err
	}
	r.FollowUps = 2
	r.Changed = func(now plan.Plan, why []string) error {
		w := f.textOut(e)
		fmt.Fprintf(w, "\nThe live world changed while this run waited for the lock (%s). The plan now is:\n\n", strings.Join(why, "; "))
		return render.Text(w, &now)
	}
	if ps, ok := r.Switchovers.(planSlots); ok {
		waited, release, err := ps.TakeAhead(ctx, pl)
		if err != nil {
			return fmt.Errorf("topology %s: waiting for a switchover slot, before locking it: %w", pl.Topology, err)
		}
		defer release()
		if waited > 0 && r.Progress != nil {
			r.Progress(apply.Event{Time: time.Now(), Type: apply.EventLock, Message: fmt.Sprintf("switchover slot taken after %.1fs, before the Lease (other topologies' switchovers ran in its sites)", waited.Seconds())})
		}
	}
	res, err := r.ExecuteFrom(ctx, pl, snap)
	if err == nil && res.Remaining != nil {
		err = fmt.Errorf("not converged after the plan and %d follow-up plans (%s); run diff to see what remains", r.FollowUps, res.Remaining.Summary())
	}
	return f.finish(e, res, err)
}

// loadAndObserve reads the topology and takes a first look with an
// observer that keeps its sessions for the run; close ends them.
func (f *sourceFlags) loadAndObserve(ctx context.Context, e env) (*reconcile.Input, *live.Observer, *snapshot.Snapshot, func(), error) {
	in, err := f.load(ctx, e)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	obs, closeConns, err := f.keepingObserver(in.Desired)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return in, obs, obs.ObserveListed(ctx, in.Desired), closeConns, nil
}

// applySaved executes a plan written by diff --out, or refuses it stale.
func applySaved(ctx context.Context, e env, src *sourceFlags, f applyFlags, file string, drain <-chan struct{}) error {
	fh, err := os.Open(file)
	if err != nil {
		return err
	}
	saved, err := plan.LoadSaved(file, fh)
	fh.Close()
	if err != nil {
		return err
	}
	v, err := schema.NewValidator()
	if err != nil {
		return err
	}
	in, err := loadFrom(ctx, e, savedSource{v: v, saved: saved, file: file})
	if err != nil {
		return err
	}
	if in.Desired.Digest != saved.Plan.Digest {
		return fmt.Errorf("%s: the topology it carries has digest %s, the plan says %s: the file was edited by hand", file, in.Desired.Digest, saved.Plan.Digest)
	}
	obs, closeConns, err := src.keepingObserver(in.Desired)
	if err != nil {
		return err
	}
	defer closeConns()
	snap := obs.Observe(ctx, in.Desired)
	now := planner.Compute(in.Desired, snap, saved.Options)
	if !plan.Same(saved.Plan, now) {
		stale := &apply.StaleError{Why: plan.Staleness(saved.Plan, saved.Basis, now, plan.BasisOf(snap)), Now: now}
		fmt.Fprintf(e.stderr, "pgtopo: %s: %s\n", file, printable.String(stale.Error()))
		return exitCode(ExitError)
	}
	if done, err := f.printPlan(e, saved.Plan); done || err != nil {
		return err
	}
	r, err := newRunner(e, src, f, in, obs, saved.Plan, saved.Options, drain)
	if err != nil {
		return err
	}
	res, err := r.Execute(ctx, saved.Plan, saved.Basis)
	if err == nil && res.Remaining != nil {
		fmt.Fprintf(f.textOut(e), "\nThe saved plan is done; the live world still needs more (%s): run diff again.\n", res.Remaining.Summary())
	}
	return f.finish(e, res, err)
}

// savedSource reads the topology a saved plan carries.
type savedSource struct {
	v     *schema.Validator
	saved *plan.SavedPlan
	file  string
}

func (s savedSource) Load(context.Context) (*reconcile.Input, error) {
	in, err := reconcile.Validate(s.v, s.file+": "+s.saved.Source.Name, []byte(s.saved.Source.Content))
	if err != nil {
		return nil, err
	}
	in.Revision = s.saved.Plan.Revision
	return in, nil
}

func newRunner(e env, src *sourceFlags, f applyFlags, in *reconcile.Input, obs *live.Observer, pl plan.Plan, opt plan.Options, drain <-chan struct{}) (*apply.Runner, error) {
	r, err := src.runner(in.Desired, obs, pl, opt, drain)
	if err != nil {
		return nil, err
	}
	r.Progress = apply.TextProgress(e.stderr)
	if f.progressFormat == "json" {
		r.Progress = apply.JSONProgress(e.stderr)
	}
	r.LockTimeout, r.StepTimeout, r.MaxWritePause = f.lockTimeout, f.stepTimeout, f.maxWritePause
	// For make bench: the API requests of waits that observe everything
	// each poll, side by side with polls of what they wait for.
	r.FullPolls = e.getenv("PGTOPO_BENCH_FULL_POLLS") != ""
	if f.slots != nil {
		r.Switchovers = newPlanSlots(f.slots, pl, in.Desired, leasesOf(r.Sites, r.Holder))
	}
	return r, nil
}

// textOut is where words for people go: stdout, or stderr when stdout
// carries the JSON result.
func (f applyFlags) textOut(e env) io.Writer {
	if structured(f.output) {
		return e.stderr
	}
	return e.stdout
}

// printPlan shows the plan before anything runs, and reports whether the
// run ends there (refused, a dry run, nothing to do).
func (f applyFlags) printPlan(e env, pl plan.Plan) (bool, error) {
	if structured(f.output) {
		switch {
		case pl.Refused():
			return true, errors.Join(writeApplyResult(e, f.output, ApplyResult{Result: "refused", Plan: pl}), exitCode(ExitError))
		case f.dryRun:
			return true, writeApplyResult(e, f.output, ApplyResult{Result: "dry-run", Plan: pl})
		case pl.InSync():
			return true, writeApplyResult(e, f.output, ApplyResult{Result: "in-sync", Plan: pl})
		}
		return false, nil
	}
	if err := render.Text(e.stdout, &pl); err != nil {
		return true, err
	}
	if pl.Refused() {
		return true, exitCode(ExitError)
	}
	return f.dryRun || pl.InSync(), nil
}

// ApplyResult is apply -o json's document (apiVersion pgtopo.dev/v1alpha1,
// kind ApplyResult): how the run ended (applied, in-sync, dry-run,
// refused, stopped), the plan executed last, the steps done with their
// seconds, the error that stopped it, and what remains when known.
type ApplyResult struct {
	APIVersion string                `json:"apiVersion"`
	Kind       string                `json:"kind"`
	Result     string                `json:"result"`
	Headline   string                `json:"headline"`
	Plan       plan.Plan             `json:"plan"`
	Completed  []apply.CompletedStep `json:"completed"`
	Error      string                `json:"error,omitempty"`
	Remaining  string                `json:"remaining,omitempty"`
}

func writeApplyResult(e env, format string, r ApplyResult) error {
	r.APIVersion, r.Kind, r.Headline = plan.PlanAPIVersion, "ApplyResult", r.Plan.Headline()
	if r.Completed == nil {
		r.Completed = []apply.CompletedStep{}
	}
	return writeDocument(e.stdout, format, r)
}

// finish says how a run ended.
func (f applyFlags) finish(e env, res *apply.Result, err error) error {
	if structured(f.output) {
		doc := ApplyResult{Result: "applied", Plan: res.Plan, Completed: res.Completed}
		if res.Remaining != nil {
			doc.Remaining = res.Remaining.Summary()
		}
		if err != nil {
			doc.Result, doc.Error = "stopped", printable.String(err.Error())
			var refused *apply.RefusedError
			if errors.As(err, &refused) {
				doc.Result, doc.Plan = "refused", refused.Plan
			}
			fmt.Fprintf(e.stderr, "pgtopo: %s\n", printable.String(err.Error()))
			return errors.Join(writeApplyResult(e, f.output, doc), exitCode(ExitError))
		}
		return writeApplyResult(e, f.output, doc)
	}
	fmt.Fprintln(e.stdout)
	if err != nil {
		var refused *apply.RefusedError
		if errors.As(err, &refused) {
			_ = render.Text(e.stdout, &refused.Plan)
		}
		fmt.Fprintf(e.stdout, "Apply stopped after %d step(s):\n", len(res.Completed))
		for _, s := range res.Completed {
			fmt.Fprintf(e.stdout, "  done: %s %s (%.1fs)\n", s.Action, s.Subject, s.Seconds)
		}
		fmt.Fprintf(e.stderr, "pgtopo: %s\n", printable.String(err.Error()))
		return exitCode(ExitError)
	}
	fmt.Fprintf(e.stdout, "Apply complete: %d step(s) done. %s\n", len(res.Completed), res.Plan.Headline())
	return nil
}

// holderIdentity names this run in the Lease: host, pid and a nonce.
func holderIdentity() string {
	host, _ := os.Hostname()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// holderGone reports whether a Lease holder named by holderIdentity was a
// process of this host that runs no more (killed, crashed): then its Lease
// need not be waited out. Holders of other hosts are never judged gone.
func holderGone(holder string) bool {
	host, _ := os.Hostname()
	rest, ok := strings.CutPrefix(holder, host+"-")
	if !ok || host == "" {
		return false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
