package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/render"
	"github.com/pgtopo/pgtopo/snapshot"
)

// newFenceCmd is pgtopo fence (fence true) or pgtopo unfence.
func newFenceCmd(e env, fence bool) *cobra.Command {
	var src sourceFlags
	var f applyFlags
	var force bool
	var reason string
	use, short := "fence CLUSTER (-f FILE | --repo URL|PATH ...)", "Break glass: make a cluster refuse new writes, recorded on its CR"
	long := `Make CLUSTER refuse new writes: new sessions start read-only
(default_transaction_read_only), open client sessions are ended, and the fence
is recorded on the cluster's CR (pgtopo.dev/fenced: who, when, why). For split
brain (two clusters writable: fence the one to give up), and before giving up a
primary by hand. It takes the topology's Lease like apply. Fencing a fenced
cluster changes nothing. Fencing the only writable cluster stops every write,
and is refused unless --force is given. Undo it with pgtopo unfence.

Exit status: 0 fenced (or already), 1 error or refusal.`
	if !fence {
		use, short = "unfence CLUSTER (-f FILE | --repo URL|PATH ...)", "Lift a fence: new sessions may write again, the fence mark is removed"
		long = `Lift a fence set by pgtopo fence (or left by an interrupted switchover):
reset default_transaction_read_only, reload, and remove the pgtopo.dev/fenced
mark. Unfencing a cluster that is not fenced changes nothing. Unfencing a
primary while another cluster takes writes (two writable primaries) is
refused unless --force is given.

Exit status: 0 unfenced (or was not fenced), 1 error or refusal.`
	}
	example := "  pgtopo fence orders-west -f orders.yaml --reason 'promoted by hand during the incident'"
	if !fence {
		example = "  pgtopo unfence orders-west -f orders.yaml"
	}
	cmd := &cobra.Command{
		Use: use, Short: short, Long: long, Example: example,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := checkFormat(f.output); err != nil {
				return err
			}
			ctx, drain, stop := withShutdown(context.Background(), func(msg string) { fmt.Fprintf(e.stderr, "pgtopo: %s\n", msg) })
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, f.timeout)
			defer cancel()
			in, obs, snap, closeConns, err := src.loadAndObserve(ctx, e)
			if err != nil {
				return err
			}
			defer closeConns()
			opt := planner.FenceOptions{Force: force, Mark: snapshot.Fence{By: fenceAuthor(), At: time.Now().UTC().Format(time.RFC3339), Reason: reason}}
			pl := func(s *snapshot.Snapshot) plan.Plan {
				if fence {
					return planner.PlanFence(in.Desired, s, args[0], opt)
				}
				return planner.PlanUnfence(in.Desired, s, args[0], opt)
			}
			p := pl(snap)
			if done, err := f.printPlan(e, p); done || err != nil {
				return err
			}
			r, err := newRunner(e, &src, f, in, obs, p, plan.Options{}, drain)
			if err != nil {
				return err
			}
			r.Replan = pl
			r.Changed = func(now plan.Plan, why []string) error {
				w := f.textOut(e)
				fmt.Fprintf(w, "\nThe live world changed while this run waited for the lock; the plan now is:\n\n")
				return render.Text(w, &now)
			}
			res, err := r.ExecuteFrom(ctx, p, snap)
			return f.finish(e, res, err)
		},
	}
	src.register(cmd, e)
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up after this long")
	cmd.Flags().DurationVar(&f.lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another run's lock")
	cmd.Flags().DurationVar(&f.stepTimeout, "step-timeout", time.Minute, "how long each step may wait")
	cmd.Flags().StringVarP(&f.output, "output", "o", "text", "result on stdout: text, or json or yaml (an ApplyResult document, as apply -o json)")
	completeOutput(cmd, formatText, formatJSON, formatYAML)
	cmd.ValidArgsFunction = clusterArg
	f.progressFormat = "text"
	if fence {
		cmd.Flags().BoolVar(&force, "force", false, "fence the only writable cluster, stopping every write")
		cmd.Flags().StringVar(&reason, "reason", "", "why, recorded with the fence")
	} else {
		cmd.Flags().BoolVar(&force, "force", false, "unfence a primary while another cluster takes writes (two writable primaries)")
	}
	return cmd
}

// fenceAuthor names who fenced: the user and host.
func fenceAuthor() string {
	host, _ := os.Hostname()
	user := os.Getenv("USER")
	if user == "" {
		user = "pgtopo"
	}
	return user + "@" + host
}
