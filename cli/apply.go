package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/diff"
	"github.com/pgtopo/pgtopo/kube"
)

func newApplyCmd(e env) *cobra.Command {
	var src sourceFlags
	var dryRun, allowRollback bool
	var timeout, lockTimeout, stepTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "apply (-f FILE | --repo URL|PATH [--ref REV] [--path FILE])",
		Short: "Make the live topology match the file: ordered, idempotent steps and a safe switchover",
		Long: `Print the plan, then execute it one step at a time: each step re-observes its
subject, re-checks its preconditions (a stale plan is refused), acts, and waits
for its postcondition, with progress on stderr. A second apply after success
plans nothing.

With --repo, the commit read is recorded on every CR; applying a commit older
than the one recorded (or from another line of history) is refused unless
--allow-rollback is given.

SIGTERM or SIGINT lets the step under way finish (a switchover included) and
stops before the next; a second signal stops at once, and the next run resumes
from the switchover journal. Exit status: 0 converged, 1 error or refusal.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, drain, stop := withShutdown(context.Background(), func(msg string) { fmt.Fprintf(e.stderr, "pgtopo: %s\n", msg) })
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			in, err := src.load(ctx, e)
			if err != nil {
				return err
			}
			obs, closeConns := src.keepingObserver()
			defer closeConns()
			snap := obs.Observe(ctx, in.Desired)
			opt, err := in.PlanOptions(snap, allowRollback)
			if err != nil {
				return err
			}
			plan := diff.Compute(in.Desired, snap, opt)
			if err := plan.WriteText(e.stdout); err != nil {
				return err
			}
			if plan.Refused() {
				return exitCode(ExitError)
			}
			if dryRun || plan.InSync() {
				return nil
			}
			r := &apply.Runner{
				Observer:    obs,
				Writer:      siteWriter(src.sites()),
				Progress:    e.stderr,
				Holder:      holderIdentity(),
				LockTimeout: lockTimeout,
				StepTimeout: stepTimeout,
				Options:     opt,
				Drain:       drain,
			}
			res, err := r.Apply(ctx, in.Desired)
			fmt.Fprintln(e.stdout)
			if err != nil {
				var refused *apply.RefusedError
				if errors.As(err, &refused) {
					_ = refused.Plan.WriteText(e.stdout)
				}
				fmt.Fprintf(e.stdout, "Apply stopped after %d step(s):\n", len(res.Completed))
				for _, s := range res.Completed {
					fmt.Fprintf(e.stdout, "  done: %s %s\n", s.Action, s.Subject)
				}
				fmt.Fprintf(e.stderr, "pgtopo: %v\n", err)
				return exitCode(ExitError)
			}
			fmt.Fprintf(e.stdout, "Apply complete: %d step(s) done. %s\n", len(res.Completed), res.Plan.Headline())
			return nil
		},
	}
	src.register(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().BoolVar(&allowRollback, "allow-rollback", false, "apply a revision older than the one recorded as applied")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another run's lock")
	cmd.Flags().DurationVar(&stepTimeout, "step-timeout", 5*time.Minute, "how long each step may wait for its postcondition")
	return cmd
}

// siteWriter opens sites for changes, sharing the observer's clients.
func siteWriter(sites *kube.Sites) func(string) (apply.SiteWriter, error) {
	return func(c string) (apply.SiteWriter, error) {
		s, err := sites.Connect(c)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}

// holderIdentity names this run in the Lease: host, pid and a nonce.
func holderIdentity() string {
	host, _ := os.Hostname()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}
