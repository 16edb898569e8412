package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sschema "k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/drill"
	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

func newDrillCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "drill",
		Short: "Rehearse disaster recovery on a live topology and report what an application saw",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newDrillSwitchoverCmd(e), newDrillFailoverCmd(e))
	return cmd
}

type drillFlags struct {
	src            sourceFlags
	to             string
	from           string
	isolated       bool
	streamTimeout  time.Duration
	hold           time.Duration
	output         string
	progressFormat string
	lockTimeout    time.Duration
	stepTimeout    time.Duration
}

func newDrillSwitchoverCmd(e env) *cobra.Command {
	f := &drillFlags{}
	cmd := &cobra.Command{
		Use:   "switchover -f FILE [--to CLUSTER] [--hold D]",
		Short: "A switchover round trip: to a standby, hold, and back, with a heartbeat measuring the write gaps",
		Example: `  pgtopo drill switchover -f orders.yaml --hold 5m -o markdown > drill.md
  pgtopo drill switchover -f orders.yaml --to orders-west -o json`,
		Long: `Starts only from a topology in sync whose DR verdict is ready. Holds the
topology's Lease for the whole drill (a reconcile loop waits), switches over
to the standby (--to, or the readiest, in another site first) within the
same write budget and back-outs as any switchover, holds, and switches
back. Meanwhile it writes a heartbeat row every 100 ms through whichever
cluster takes writes, in a schema of its own (pgtopo_drill, created and
dropped by the drill; one left by a killed drill is dropped by the next).

The report: each move's duration and longest write gap, how far the target
was behind when it began, heartbeats acknowledged and missing afterwards,
and how long until every standby streamed again. -o markdown for a ticket,
-o json for machines. Exit 0 when the drill passed, 1 when it was refused,
backed out or failed (the report says which).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(f.output, "markdown"); err != nil {
				return err
			}
			if f.hold < 0 {
				return usagef("--hold %s: give a duration of 0 or more", f.hold)
			}
			return f.run(cmd.Context(), e)
		},
	}
	f.src.register(cmd, e)
	cmd.Flags().StringVar(&f.to, "to", "", "the standby to move to (default: the readiest, in another site first)")
	cmd.Flags().DurationVar(&f.hold, "hold", 30*time.Second, "how long the primary stays moved")
	cmd.Flags().StringVarP(&f.output, "output", "o", formatText, "report format: text, markdown, json or yaml")
	cmd.Flags().StringVar(&f.progressFormat, "progress-format", "text", "progress on stderr: text or json")
	cmd.Flags().DurationVar(&f.lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another run's lock")
	cmd.Flags().DurationVar(&f.stepTimeout, "step-timeout", 5*time.Minute, "how long each step may wait for its postcondition")
	return cmd
}

// drillRun is a drill's setup: the topology loaded, its Lease held, the
// world to act through.
type drillRun struct {
	in      *reconcile.Input
	v       *schema.Validator
	w       *drillWorld
	release func()
}

// prepare loads the topology, refuses one not in sync with its file, and
// holds its Lease for the whole drill: a reconcile loop would undo a
// switchover drill's first move during the hold, and two drills must not
// run at once.
func (f *drillFlags) prepare(ctx context.Context, e env, drain <-chan struct{}) (*drillRun, error) {
	in, err := f.src.load(ctx, e)
	if err != nil {
		return nil, err
	}
	v, err := schema.NewValidator()
	if err != nil {
		return nil, err
	}
	keep := &live.Conns{}
	w := &drillWorld{f: f, e: e, d: in.Desired, keep: keep, drain: drain, logins: map[string]live.Login{}}
	fail := func(err error) (*drillRun, error) {
		keep.Close()
		return nil, err
	}
	obs, err := f.src.newObserver(in.Desired, keep)
	if err != nil {
		return fail(err)
	}
	snap := obs.Observe(ctx, in.Desired)
	now := planner.Compute(in.Desired, snap, plan.Options{})
	if !now.InSync() {
		return fail(fmt.Errorf("drill refused: %s is not in sync with its file (%s); apply it first", in.Desired.Name, now.Headline()))
	}
	holder, err := f.src.runner(in.Desired, obs, now, plan.Options{}, drain)
	if err != nil {
		return fail(err)
	}
	holder.LockTimeout = f.lockTimeout
	var lock plan.Lock
	lock.Lease = in.Desired.LeaseName()
	for _, l := range in.Desired.LockSites() {
		lock.Sites = append(lock.Sites, plan.Subject{Site: l.Site.Name, Namespace: l.Namespace})
	}
	held, err := holder.HoldLock(ctx, &lock)
	if err != nil {
		return fail(fmt.Errorf("drill: %w", err))
	}
	w.held, w.holder = held, holder.Holder
	return &drillRun{in: in, v: v, w: w, release: func() {
		held.Release(context.Background())
		keep.Close()
	}}, nil
}

func (f *drillFlags) run(ctx context.Context, e env) error {
	return f.drive(ctx, e, func(ctx context.Context, r *drillRun, progress func(string)) (*drill.Report, error) {
		d := &drill.Switchover{
			World:   r.w,
			Desired: r.in.Desired,
			WithPrimary: func(primary string) (*topology.Desired, error) {
				return withPrimary(r.v, r.in, primary)
			},
			To:       f.to,
			Hold:     f.hold,
			Progress: progress,
		}
		return d.Run(ctx)
	})
}

// drive runs a drill: signals handled, the run prepared and released, its
// progress on stderr, its report kept and printed.
func (f *drillFlags) drive(ctx context.Context, e env, run func(context.Context, *drillRun, func(string)) (*drill.Report, error)) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, drain, stop := withShutdown(ctx, func(string) {})
	defer stop()
	r, err := f.prepare(ctx, e, drain)
	if err != nil {
		return err
	}
	defer r.release()
	rep, err := run(ctx, r, func(s string) { fmt.Fprintf(e.stderr, "drill: %s\n", s) })
	return f.report(ctx, e, r.w, rep, err)
}

// report keeps a drill's report in the sites and prints it.
func (f *drillFlags) report(ctx context.Context, e env, w *drillWorld, rep *drill.Report, err error) error {
	if rep == nil {
		return err
	}
	if rerr := w.record(context.WithoutCancel(ctx), rep); rerr != nil {
		fmt.Fprintf(e.stderr, "pgtopo: drill: not kept in the sites: %v\n", rerr)
	}
	switch f.output {
	case "markdown":
		fmt.Fprint(e.stdout, rep.Markdown())
	case formatText:
		fmt.Fprint(e.stdout, rep.Text())
	default:
		if werr := writeDocument(e.stdout, f.output, rep); werr != nil {
			return werr
		}
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "pgtopo: drill %s: %v\n", rep.Result, err)
		return exitCode(ExitError)
	}
	return nil
}

// withPrimary is the topology as the file says it with another primary:
// the same document, spec.primary changed, validated again.
func withPrimary(v *schema.Validator, in *reconcile.Input, primary string) (*topology.Desired, error) {
	top, _, err := v.Load(in.Source.Name, []byte(in.Source.Content))
	if err != nil {
		return nil, err
	}
	if top == nil {
		return nil, fmt.Errorf("%s: does not validate", in.Source.Name)
	}
	top.Spec.Primary = primary
	return top.Desired()
}

// drillWorld is what a drill acts through: the sites, apply's runner,
// and admin sessions whose logins are read once and kept in memory for
// the drill (its heartbeat reconnects every beat while writes are
// refused).
type drillWorld struct {
	f      *drillFlags
	e      env
	d      *topology.Desired // as the file says it: the sites and TLS of every login
	keep   *live.Conns
	drain  <-chan struct{}
	held   *apply.HeldLock
	holder string

	mu     sync.Mutex
	logins map[string]live.Login
}

func (w *drillWorld) Observe(ctx context.Context, d *topology.Desired) *snapshot.Snapshot {
	obs, err := w.f.src.newObserver(d, w.keep)
	if err != nil {
		return &snapshot.Snapshot{Topology: d.Name}
	}
	return obs.Observe(ctx, d)
}

func (w *drillWorld) Apply(ctx context.Context, d *topology.Desired) error {
	obs, err := w.f.src.newObserver(d, w.keep)
	if err != nil {
		return err
	}
	snap := obs.Observe(ctx, d)
	pl := planner.Compute(d, snap, plan.Options{})
	if pl.Refused() {
		return &apply.RefusedError{Plan: pl}
	}
	r, err := w.f.src.runner(d, obs, pl, plan.Options{}, w.drain)
	if err != nil {
		return err
	}
	r.Progress = apply.TextProgress(w.e.stderr)
	if w.f.progressFormat == "json" {
		r.Progress = apply.JSONProgress(w.e.stderr)
	}
	r.Holder, r.Held = w.holder, w.held
	r.LockTimeout, r.StepTimeout = w.f.lockTimeout, w.f.stepTimeout
	res, err := r.ExecuteFrom(ctx, pl, snap)
	if err == nil && res != nil && res.Remaining != nil {
		return fmt.Errorf("not converged: %s", res.Remaining.Summary())
	}
	return err
}

func (w *drillWorld) Open(ctx context.Context, c *snapshot.ClusterState) (drill.Session, error) {
	if c.Endpoint == nil {
		return nil, fmt.Errorf("%s: no endpoint", c.Name)
	}
	w.mu.Lock()
	login, ok := w.logins[c.Name]
	w.mu.Unlock()
	if !ok {
		op, err := flavor.Lookup(w.d.Flavor)
		if err != nil {
			return nil, err
		}
		sites := w.f.src.flavorSites(w.d, planSitesOf(w.d), op)
		admin := live.Admin{Sites: loginReaders(sites), TLS: w.d.TLS, Keys: op.Names}
		if login, err = admin.Login(ctx, c); err != nil {
			return nil, fmt.Errorf("%s: %w", c.Name, err)
		}
		w.mu.Lock()
		w.logins[c.Name] = login
		w.mu.Unlock()
	}
	s, err := live.OpenSession(ctx, *c.Endpoint, login)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	return s, nil
}

// planSitesOf names d's sites as a plan does, for opening them.
func planSitesOf(d *topology.Desired) plan.Plan {
	var pl plan.Plan
	for _, s := range d.Sites() {
		pl.Sites = append(pl.Sites, plan.Site{Name: s.Name, Context: s.Context})
	}
	return pl
}

var configMapGVR = k8sschema.GroupVersionResource{Version: "v1", Resource: "configmaps"}

// record keeps the drill in the ConfigMap beside the topology's Lease in
// each of its Kubernetes lock sites: the last snapshot.DrillsKept, newest
// first, which status shows and the metrics export.
func (w *drillWorld) record(ctx context.Context, rep *drill.Report) error {
	rec := rep.Record()
	name := w.d.DrillsConfigMap()
	for _, l := range w.d.LockSites() {
		s, err := w.f.src.sites().Connect(l.Site.Context)
		if err != nil {
			return fmt.Errorf("site %s: %w", l.Site.Name, err)
		}
		var kept []snapshot.DrillRecord
		cm, err := s.GetConfigMap(ctx, l.Namespace, name)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return fmt.Errorf("site %s: get ConfigMap %s/%s: %w", l.Site.Name, l.Namespace, name, err)
		default:
			if raw := cm.Data[topology.DrillsKey]; raw != "" {
				_ = json.Unmarshal([]byte(raw), &kept) // unreadable: started anew
			}
		}
		kept = append([]snapshot.DrillRecord{rec}, kept...)
		kept = kept[:min(len(kept), snapshot.DrillsKept)]
		data, err := json.Marshal(kept)
		if err != nil {
			return err
		}
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": name, "namespace": l.Namespace, "labels": map[string]any{snapshot.TopologyLabel: w.d.Name}},
			"data":     map[string]any{topology.DrillsKey: string(data)},
		}}
		if err := s.ApplyObject(ctx, configMapGVR, kube.FieldManager, u); err != nil {
			return fmt.Errorf("site %s: ConfigMap %s/%s: %w", l.Site.Name, l.Namespace, name, err)
		}
	}
	return nil
}
