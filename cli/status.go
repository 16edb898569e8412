package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/diff"
	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/snapshot"
)

func newStatusCmd(e env) *cobra.Command {
	var src sourceFlags
	cmd := &cobra.Command{
		Use:   "status (-f FILE | --repo URL|PATH [--ref REV] [--path FILE])",
		Short: "Show every cluster of the topology across all sites, like patronictl list",
		Long: `Show every cluster of the topology across all sites: role, state, timeline,
lag, endpoint and the revision applied.

Exit status: 0 healthy, 1 error or a site unreachable, 3 split brain (more than
one cluster takes writes; a fenced one does not count).`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			in, err := src.load(context.Background(), e)
			if err != nil {
				return err
			}
			obs, err := src.observer(in.Desired)
			if err != nil {
				return err
			}
			snap := obs.Observe(context.Background(), in.Desired)
			writeStatus(e, snap)
			writable := 0
			for _, c := range snap.Clusters {
				if c.Writable() && !c.Fenced() {
					writable++
				}
			}
			if writable > 1 {
				fmt.Fprintf(e.stderr, "pgtopo: split brain: %d clusters take writes; fence all but one (pgtopo fence CLUSTER)\n", writable)
				return exitCode(ExitSplitBrain)
			}
			for _, s := range snap.Sites {
				if !s.Reachable {
					return exitCode(ExitError)
				}
			}
			return nil
		},
	}
	src.register(cmd)
	return cmd
}

func writeStatus(e env, snap *snapshot.Snapshot) {
	var primary *snapshot.ClusterState
	for i := range snap.Clusters {
		if snap.Clusters[i].Writable() {
			primary = &snap.Clusters[i]
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tSITE\tNAMESPACE\tROLE\tSTATE\tTL\tLAG\tENDPOINT\tREVISION")
	for _, c := range snap.Clusters {
		role, state, tl, lag, endpoint, rev := "-", "-", "-", "-", "-", "-"
		site, _ := snap.Site(c.Site)
		switch {
		case site != nil && !site.Reachable:
			state = "site unreachable"
		case !c.Exists:
			role, state = "absent", "no CR"
		default:
			state = c.Object.Status
			if m := c.Object.Marks; m.Revision != "" {
				rev = diff.ShortRevision(m.Revision)
			} else if m.Digest != "" {
				rev = "digest " + m.Digest
			}
		}
		if c.Endpoint != nil {
			endpoint = c.Endpoint.String()
		}
		if c.PG != nil {
			tl = fmt.Sprint(c.PG.Timeline)
			if c.PG.InRecovery {
				role = "standby"
				if c.PG.WalReceiver != nil {
					state = c.PG.WalReceiver.Status
				} else {
					state = "not streaming"
				}
				if primary != nil && primary.PG.SystemID == c.PG.SystemID {
					lag = fmt.Sprintf("%d B", snapshot.Lag(primary.PG, c.PG))
				}
			} else {
				role = "primary"
				if c.Fenced() {
					state = "fenced"
				}
			}
		} else if c.PGError != "" && c.Exists {
			state = "db unreachable"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Site, c.Namespace, role, printable.String(state), tl, lag, printable.String(endpoint), printable.String(rev))
	}
	tw.Flush()
	if f := snap.LastFailover(); f != nil {
		fmt.Fprintf(e.stdout, "\n%s\n", printable.String(failoverLine(snap, *f)))
	}
	for _, s := range snap.Sites {
		if !s.Reachable {
			fmt.Fprintf(e.stderr, "%s\n", printable.String(s.Error))
		}
	}
	for _, c := range snap.Clusters {
		if c.PGError != "" && c.Exists {
			fmt.Fprintf(e.stderr, "%s (%s/%s): %s\n", c.Name, c.Site, c.Namespace, printable.String(c.PGError))
		}
	}
}

// failoverLine says what the last failover was and where its lost primary
// stands.
func failoverLine(snap *snapshot.Snapshot, f snapshot.FailoverRecord) string {
	line := fmt.Sprintf("last failover: epoch %d, %s → %s at %s (%s), fork at %s on timeline %d", f.Epoch, f.From, f.To, f.At, f.Consent, f.ForkLSN, f.FromTimeline)
	if f.Phase != snapshot.FailoverDone {
		return line + "; unfinished: apply the file with primary " + f.To + " to finish it"
	}
	c, _ := snap.Cluster(f.From)
	switch {
	case snap.SiteDown(f.From):
		return line + "; " + f.From + " is away: it is fenced and demoted when it answers"
	case c != nil && c.Exists && c.Object.Marks.Failover != nil && c.Object.Marks.Failover.Epoch >= f.Epoch && c.Object.Marks.Failover.Returned != nil:
		r := c.Object.Marks.Failover.Returned
		state := "rejoining"
		if r.Done {
			state = "rejoined (" + r.Rejoin + ")"
		}
		return fmt.Sprintf("%s; %s returned at %s, %s past the fork, %s", line, f.From, r.At, snapshot.HumanBytes(r.Diverged), state)
	default:
		return line + "; " + f.From + " answers and is not fenced yet: pgtopo apply fences it first"
	}
}
