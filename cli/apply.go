package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/diff"
	"github.com/pgtopo/pgtopo/kube"
)

func newApplyCmd(e env) *cobra.Command {
	var src sourceFlags
	var dryRun bool
	var timeout, lockTimeout, stepTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Make the live topology match the file: ordered, idempotent steps and a safe switchover",
		Long: `Print the plan, then execute it one step at a time: each step re-observes its
subject, re-checks its preconditions (a stale plan is refused), acts, and waits
for its postcondition, with progress on stderr. A second apply after success
plans nothing. Exit status: 0 converged, 1 error or refusal.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			d, err := loadDesired(e, src.file)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			obs := src.observer()
			plan := diff.Compute(d, obs.Observe(ctx, d), diff.Options{})
			if err := plan.WriteText(e.stdout); err != nil {
				return err
			}
			if dryRun || plan.Refused() {
				if plan.Refused() {
					return exitCode(ExitError)
				}
				return nil
			}
			if plan.InSync() {
				return nil
			}
			loader := kube.Loader{Kubeconfig: src.kubeconfig}
			r := &apply.Runner{
				Observer: obs,
				Writer: func(c string) (apply.SiteWriter, error) {
					s, err := loader.Connect(c)
					if err != nil {
						return nil, err
					}
					return s, nil
				},
				Progress:    e.stderr,
				Holder:      holderIdentity(),
				LockTimeout: lockTimeout,
				StepTimeout: stepTimeout,
			}
			res, err := r.Apply(ctx, d)
			fmt.Fprintln(e.stdout)
			if err != nil {
				var refused *apply.RefusedError
				if errors.As(err, &refused) {
					_ = refused.Plan.WriteText(e.stdout)
				}
				fmt.Fprintf(e.stdout, "Apply failed after %d step(s):\n", len(res.Completed))
				for _, s := range res.Completed {
					fmt.Fprintf(e.stdout, "  done: %s\n", s)
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
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another run's lock")
	cmd.Flags().DurationVar(&stepTimeout, "step-timeout", 5*time.Minute, "how long each step may wait for its postcondition")
	return cmd
}

// holderIdentity names this run in the Lease: host, pid and a nonce.
func holderIdentity() string {
	host, _ := os.Hostname()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}
