package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/gitsource"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

func newReconcileCmd(e env) *cobra.Command {
	var src sourceFlags
	var interval, cycleTimeout, lockTimeout, stepTimeout time.Duration
	var listen, logFormat, logLevel, site, slotNamespace string
	var allowRollback, observeOnly bool
	var parallel, switchoversPerSite int
	cmd := &cobra.Command{
		Use: "reconcile (--repo URL|PATH [--ref REV] [--path FILE|PATTERN] | -f FILE|DIR...) [--interval D]",
		Example: `  pgtopo reconcile --repo https://git.example.com/db/topologies.git --ref main --path orders.yaml --interval 1m
  pgtopo reconcile --repo https://git.example.com/db/topologies.git --path 'topologies/*.yaml'   # a fleet
  pgtopo reconcile -f orders.yaml --observe-only --listen :8080   # metrics only`,
		Short: "Loop: pull, plan, and apply whenever the revision or the live world drifted",
		Long: `Every --interval: fetch the repository (or re-read the file), observe every
site, plan, and apply when the plan has steps and no refusal. One log line
per cycle on stderr; apply's progress lines at --log-level debug.

/healthz answers 200 while cycles keep ending, 503 when the loop is stuck;
/metrics serves Prometheus metrics on --listen: the loop's (last applied
revision, last success time, steps applied, refusals, cycles by result) and,
per cluster and site, the replication facts of the last cycle (role, up,
timeline, replay lag in bytes and seconds, streaming, slot WAL held and its
wal_status, system identifier agreement, applied revision, writable
clusters). examples/monitoring has alerts and a dashboard over them.

--observe-only observes, plans and reports, and never changes anything (a
cycle whose plan has steps ends "drift"): to watch a topology that another
deploy path applies.

A fleet (--path with a pattern, a directory, several -f): each file is its
own topology with its own loop, Lease and metrics (label topology); the
files are listed again every --interval. Several replicas may run the same
fleet: each applies the topologies whose Lease it takes, the others' cycles
end busy, and a replica that dies has its Leases taken over once they
expire (15s after its last renewal). --parallel bounds this process's
applies at once; --max-switchovers-per-site the switchovers at once in one
site, shared with the other replicas through the site's slot Leases
(pgtopo.switchover-slot-N, in the namespace of the switchover's cluster).

SIGTERM or SIGINT: the step under way finishes (a switchover included), then
the loop exits 0; a second signal stops at once (a journaled switchover
resumes on the next run).`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			log, err := newLogger(e.stderr, logFormat, logLevel)
			if err != nil {
				return err
			}
			if interval <= 0 {
				return usagef("--interval %v: must be positive", interval)
			}
			if src.observerSecret != "" && !observeOnly {
				return usagef("--observer-secret needs --observe-only: an observer login cannot apply anything")
			}
			if parallel < 1 || switchoversPerSite < 1 {
				return usagef("--parallel %d --max-switchovers-per-site %d: both take a positive number", parallel, switchoversPerSite)
			}
			ctx, drain, stop := withShutdown(context.Background(), func(msg string) { log.Info("signal", "action", msg) })
			defer stop()
			list, err := src.fleet(ctx, e)
			if err != nil {
				return err
			}
			src.sites() // one set of site clients for every topology
			keep := &live.Conns{}
			defer keep.Close()
			obs := flavorObserver{src: &src, keep: keep}
			holder := holderIdentity()
			metrics := reconcile.NewMetrics()
			applying := make(chan struct{}, parallel)
			slots := newSiteSlots(switchoversPerSite)
			slots.leaseNamespace = slotNamespace
			apply := func(ctx context.Context, d *topology.Desired, pl plan.Plan, seen *snapshot.Snapshot, opt plan.Options) (*apply.Result, error) {
				ctx, cancel := context.WithTimeout(ctx, cycleTimeout)
				defer cancel()
				// The switchover's slots first, before the Lease and a
				// seat among the --parallel applies, so a resumed
				// switchover (past its fence, no slot needed) never waits
				// behind runs that wait for slots; and for slotPatience
				// at most: a new look may find the plan became a resume
				// (another replica fenced and died).
				leases, err := src.slotLeases(d, pl, holder)
				if err != nil {
					return nil, err
				}
				ps := newPlanSlots(slots, pl, d, leases)
				ps.busyUnderLease = true
				slotCtx, slotCancel := context.WithTimeout(ctx, slotPatience)
				waited, release, err := ps.TakeAhead(slotCtx, pl)
				slotCancel()
				if err != nil && ctx.Err() == nil {
					// Who holds them, when other processes do.
					held := strings.TrimSuffix(err.Error(), context.DeadlineExceeded.Error())
					if held = strings.TrimSuffix(held, ": "); held != "" {
						held = "; " + held
					}
					return nil, &reconcile.BusyError{Why: fmt.Sprintf("no switchover slot free in its sites within %s (--max-switchovers-per-site %d: other topologies' switchovers run there%s)", slotPatience, switchoversPerSite, held)}
				}
				if err != nil {
					return nil, fmt.Errorf("waiting for a switchover slot, before locking the topology: %w", err)
				}
				defer release()
				if waited > 0 {
					log.Info("switchover slot taken", "topology", d.Name, "waited", waited.Round(time.Millisecond).String())
				}
				select {
				case applying <- struct{}{}:
					defer func() { <-applying }()
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				o, err := src.newObserver(d, keep)
				if err != nil {
					return nil, err
				}
				r, err := src.runner(d, o, pl, opt, drain)
				if err != nil {
					return nil, err
				}
				r.Progress = apply.LogProgress(log.With("topology", d.Name))
				r.Holder = holder
				r.LockTimeout, r.StepTimeout = lockTimeout, stepTimeout
				r.FollowUps = 2
				r.Switchovers = ps
				r.Changed = func(now plan.Plan, why []string) error {
					log.Info("replanned", "topology", d.Name, "plan", now.Headline(), "why", strings.Join(why, "; "))
					return nil
				}
				return r.ExecuteFrom(ctx, pl, seen)
			}
			fleet := &reconcile.Fleet{
				List: list,
				NewLoop: func(m reconcile.Member) *reconcile.Loop {
					l := &reconcile.Loop{
						Name:          m.File,
						Source:        m.Source,
						Observer:      obs,
						Apply:         apply,
						Interval:      interval,
						AllowRollback: allowRollback,
						ObserveOnly:   observeOnly,
						Log:           log,
						Metrics:       metrics,
					}
					if site != "" {
						fencer := quorumFencer{src: &src, keep: keep, holder: holder, log: log}
						record, _ := m.Source.(reconcile.Recorder)
						k := &reconcile.Keeper{Site: site, Agent: holder, Store: leaseVotes{src: &src}, Log: log, Probe: &primaryProbe{src: &src, keep: keep},
							Fencer: fencer, FailOver: quorumFailover{quorumFencer: fencer, site: site, record: record}}
						l.Seen, l.Beside = k.Update, k.Run
					}
					return l
				},
				Interval: interval,
				Log:      log,
				Metrics:  metrics,
			}
			if listen != "" {
				srv, addr, err := serve(listen, fleet, metrics, interval+cycleTimeout+time.Minute, log)
				if err != nil {
					return err
				}
				log.Info("serving", "address", addr, "paths", "/healthz /metrics")
				defer func() {
					shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_ = srv.Shutdown(shutdownCtx)
				}()
			}
			log.Info("starting", "source", describeSource(&src), "interval", interval.String())
			fleet.Run(ctx, drain)
			log.Info("stopped", "reason", "shutdown requested")
			return nil
		},
	}
	src.register(cmd, e)
	src.registerObserver(cmd)
	cmd.Flags().DurationVar(&interval, "interval", time.Minute, "time between the end of one cycle and the start of the next")
	cmd.Flags().DurationVar(&cycleTimeout, "timeout", 30*time.Minute, "give up on one cycle's apply after this long")
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another run's lock")
	cmd.Flags().DurationVar(&stepTimeout, "step-timeout", 5*time.Minute, "how long each step may wait for its postcondition")
	cmd.Flags().StringVar(&listen, "listen", ":8080", "address for /healthz and /metrics (empty: do not serve)")
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "log format: text or json")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level: debug (apply progress too), info, warn, error")
	cmd.Flags().BoolVar(&allowRollback, "allow-rollback", false, "apply revisions older than the one recorded as applied")
	cmd.Flags().BoolVar(&observeOnly, "observe-only", false, "observe and serve metrics, never change anything")
	cmd.Flags().StringVar(&site, "site", "", "the site this reconcile runs in, as its topologies name it: for those whose failover is automatic, it keeps that site's vote (docs/automatic-failover.md)")
	cmd.Flags().IntVar(&parallel, "parallel", 4, "with several topologies, how many apply at once (each its own Lease and plan)")
	cmd.Flags().IntVar(&switchoversPerSite, "max-switchovers-per-site", 2, "with several topologies, how many switchovers run at once in one site, shared with other replicas through the site's slot Leases")
	cmd.Flags().StringVar(&slotNamespace, "slot-namespace", "", slotNamespaceUsage)
	return cmd
}

func describeSource(f *sourceFlags) string {
	if f.repo == "" {
		return strings.Join(f.files, ", ")
	}
	return fmt.Sprintf("%s@%s:%s", gitsource.Redact(f.repo), f.ref, f.path)
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: use text or json", format)
}

// slotPatience is how long a reconcile cycle waits for a switchover slot
// before it gives way and the loop looks again.
const slotPatience = 5 * time.Second

// flavorObserver observes each topology through its own flavor.
type flavorObserver struct {
	src  *sourceFlags
	keep *live.Conns
}

// SiteAnswers asks a Kubernetes site's API server whether it is ready; a
// Patroni site is not asked (the loop looks again at its usual pace).
func (f flavorObserver) SiteAnswers(ctx context.Context, d *topology.Desired, site string) error {
	for _, s := range d.Sites() {
		if s.Name != site {
			continue
		}
		if s.Patroni() {
			return fmt.Errorf("site %s: a Patroni site is not probed", site)
		}
		k, err := f.src.sites().Connect(s.Context)
		if err != nil {
			return err
		}
		return k.Answers(ctx)
	}
	return fmt.Errorf("site %s is not in topology %s", site, d.Name)
}

func (f flavorObserver) Observe(ctx context.Context, d *topology.Desired) (*snapshot.Snapshot, error) {
	o, err := f.src.newObserver(d, f.keep)
	if err != nil {
		return nil, err
	}
	return o.ObserveListed(ctx, d), nil
}

// healthReporter says whether a loop keeps cycling.
type healthReporter interface {
	Healthy(now time.Time, maxAge time.Duration) (bool, time.Time)
}

// serve starts the /healthz and /metrics server and returns the address it
// listens on (useful with port 0).
func serve(listen string, loop healthReporter, m *reconcile.Metrics, maxAge time.Duration, log *slog.Logger) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, "", fmt.Errorf("--listen %s: %w", listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		ok, last := loop.Healthy(time.Now(), maxAge)
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "stuck: no cycle started or ended since %s\n", last.Format(time.RFC3339))
			return
		}
		fmt.Fprintf(w, "ok: last cycle started or ended %s\n", last.Format(time.RFC3339))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serving /healthz and /metrics", "error", err.Error())
		}
	}()
	return srv, ln.Addr().String(), nil
}
