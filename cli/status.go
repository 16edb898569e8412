package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/health"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

func newStatusCmd(e env) *cobra.Command {
	var src sourceFlags
	var output string
	var watch time.Duration
	var count int
	cmd := &cobra.Command{
		Use:   "status (-f FILE | --repo URL|PATH [--ref REV] [--path FILE]) [-o json] [--watch D [--count N]]",
		Short: "Show every cluster of the topology across all sites, like patronictl list",
		Long: `Show every cluster of the topology across all sites: role, state, timeline,
lag, endpoint and the revision applied, then a verdict: "DR ready: ..." with
each standby's lag, streaming and slot state, or what is wrong and what to do.

-o json writes a versioned document (apiVersion pgtopo.dev/v1alpha1, kind
Status). --watch D looks again every D and redraws, with each standby's lag
trend since the last look; --count N stops after N looks (0: until
interrupted). With -o json, --watch writes one document per line.

Exit status (of the last look), for monitoring: 0 healthy (DR ready), 1 error
or a site unreachable, 3 split brain (more than one cluster takes writes; a
fenced or read-only one does not count), 5 no cluster takes writes (an outage), 6 one
cluster takes writes but the DR verdict is not ready. Several -f, or a
directory: each file is its own topology, and the exit status is the worst
of theirs.`,
		Example: `  pgtopo status -f orders.yaml
  pgtopo status -f orders.yaml -o json | jq .verdict
  pgtopo status -f orders.yaml --watch 2s`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if watch < 0 || count < 0 || (count > 0 && watch == 0) {
				return usagef("--watch %v --count %d: --watch takes a positive interval, --count a number of looks with it", watch, count)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if watch > 0 && len(src.files) > 0 {
				if files, err := src.topologyFiles(); err != nil || len(files) > 1 {
					return usagef("--watch follows one topology: give one -f")
				}
			}
			return src.eachTopology(e, output, 1, func(e env, src *sourceFlags) error {
				in, err := src.load(ctx, e)
				if err != nil {
					return err
				}
				obs, err := src.observer(in.Desired)
				if err != nil {
					return err
				}
				var prev *snapshot.Snapshot
				for n := 1; ; n++ {
					snap := obs.ObserveListed(ctx, in.Desired)
					at := time.Now().UTC().Format(time.RFC3339)
					if structured(output) {
						if err := writeStatusDoc(e, output, statusDoc(in.Desired, snap, at), watch > 0); err != nil {
							return err
						}
					} else {
						if watch > 0 {
							fmt.Fprintf(e.stdout, "%spgtopo status %s, every %s (look %d)\n\n", clearScreen(e), at, watch, n)
						}
						writeStatus(e, snap, prev)
						fmt.Fprintf(e.stdout, "\n%s\n", printable.String(health.DR(in.Desired, snap).Message))
					}
					code := statusExit(e, in.Desired, snap)
					if watch == 0 || (count > 0 && n >= count) {
						return code
					}
					prev = snap
					select {
					case <-ctx.Done():
						return code
					case <-time.After(watch):
					}
				}
			})
		},
	}
	src.register(cmd, e)
	src.registerObserver(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	completeOutput(cmd, formatText, formatJSON, formatYAML)
	cmd.Flags().DurationVar(&watch, "watch", 0, "look again every D and redraw (e.g. 2s)")
	cmd.Flags().IntVar(&count, "count", 0, "with --watch, stop after N looks (0: until interrupted)")
	return cmd
}

// statusExit is status' exit for a snapshot, the worst first: split
// brain, an unreachable site, no cluster taking writes, not DR ready.
func statusExit(e env, d *topology.Desired, snap *snapshot.Snapshot) error {
	writable := len(snap.TakingWrites())
	if writable > 1 {
		fmt.Fprintf(e.stderr, "pgtopo: split brain: %d clusters take writes; fence all but one (pgtopo fence CLUSTER)\n", writable)
		return exitCode(ExitSplitBrain)
	}
	for _, s := range snap.Sites {
		if !s.Reachable || len(s.ReadErrors) > 0 {
			return exitCode(ExitError)
		}
	}
	// What could not be read (a denied Secret) is not a cluster without
	// writes: it is not known.
	for _, c := range snap.Clusters {
		if c.Error != "" {
			fmt.Fprintf(e.stderr, "pgtopo: cannot observe %s: %s\n", c.Name, printable.String(c.Error))
			return exitCode(ExitError)
		}
	}
	if writable == 0 {
		return exitCode(ExitNoWriter)
	}
	if !health.DR(d, snap).Healthy {
		return exitCode(ExitNotReady)
	}
	return nil
}

// writeStatusDoc writes one Status document; watching, JSON documents are
// one a line and YAML documents start with "---".
func writeStatusDoc(e env, format string, st Status, watching bool) error {
	switch {
	case format == formatJSON && watching:
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(e.stdout, "%s\n", b)
		return err
	case format == formatYAML && watching:
		if _, err := fmt.Fprintln(e.stdout, "---"); err != nil {
			return err
		}
	}
	return writeDocument(e.stdout, format, st)
}

// clearScreen clears a terminal before a redraw; in a pipe or a file the
// looks follow one another.
func clearScreen(e env) string {
	if f, ok := e.stdout.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			return "\x1b[H\x1b[2J"
		}
	}
	return ""
}

func writeStatus(e env, snap, prev *snapshot.Snapshot) {
	var primary *snapshot.ClusterState
	for i := range snap.Clusters {
		if snap.Clusters[i].Writable() {
			primary = &snap.Clusters[i]
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	trend := prev != nil
	header := "CLUSTER\tSITE\tNAMESPACE\tROLE\tSTATE\tTL\tLAG\tENDPOINT\tREVISION"
	if trend {
		header += "\tTREND"
	}
	fmt.Fprintln(tw, header)
	for _, c := range snap.Clusters {
		role, tl, lag, endpoint, rev := "-", "-", "-", "-", "-"
		state := clusterState(snap, &c)
		if !c.Exists && !snap.SiteDown(c.Name) {
			role = "absent"
		}
		if c.Exists && c.Object != nil {
			if m := c.Object.Marks; m.Revision != "" {
				rev = plan.ShortRevision(m.Revision)
			} else if m.Digest != "" {
				rev = "digest " + m.Digest
			}
		}
		if c.Endpoint != nil {
			endpoint = c.Endpoint.String()
		}
		if c.PG != nil {
			tl = fmt.Sprint(c.PG.Timeline)
			role = "primary"
			if c.PG.InRecovery {
				role = "standby"
				if primary != nil && primary.PG.SystemID == c.PG.SystemID {
					lag = fmt.Sprintf("%d B", snapshot.Lag(primary.PG, c.PG))
				}
			}
		}
		site := c.Site
		if st, ok := snap.Site(c.Site); ok && st.Kind == topology.SitePatroni {
			site += " (patroni)" // one table for both kinds of site
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", c.Name, site, c.Namespace, role, printable.String(state), tl, lag, printable.String(endpoint), printable.String(rev))
		if trend {
			line += "\t" + lagTrend(prev, snap, &c)
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	if f := snap.LastFailover(); f != nil {
		fmt.Fprintf(e.stdout, "\n%s\n", printable.String(failoverLine(snap, *f)))
	}
	if drills := snap.Drills(); len(drills) > 0 {
		last := drills[0]
		fmt.Fprintf(e.stdout, "\nlast drill: %s, finished %s", printable.String(last.Summary), last.Finished)
		if passed := snap.LastDrillPassed(last.Drill); passed != nil && passed.Started != last.Started {
			fmt.Fprintf(e.stdout, " (last passed: %s)", passed.Finished)
		}
		fmt.Fprintln(e.stdout)
	}
	for _, s := range snap.Sites {
		if !s.Reachable {
			fmt.Fprintf(e.stderr, "site %s unreachable: %s\n", s.Name, printable.String(s.Error))
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

// lagTrend is how a standby's lag moved since the last look.
func lagTrend(prev, now *snapshot.Snapshot, c *snapshot.ClusterState) string {
	was, okWas := lagOf(prev, c.Name)
	is, okIs := lagOf(now, c.Name)
	switch {
	case !okWas || !okIs:
		return "-"
	case is > was:
		return "+" + snapshot.HumanBytes(is-was)
	case is < was:
		return "-" + snapshot.HumanBytes(was-is)
	}
	return "="
}

func lagOf(snap *snapshot.Snapshot, name string) (int64, bool) {
	p := health.LivePrimary(snap)
	c, ok := snap.Cluster(name)
	if p == nil || !ok || c.PG == nil || !c.PG.InRecovery || c.PG.SystemID != p.PG.SystemID {
		return 0, false
	}
	return snapshot.Lag(p.PG, c.PG), true
}
