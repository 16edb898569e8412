package cli

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/pgtopo/pgtopo/drill"
	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/snapshot"
)

func newDrillFailoverCmd(e env) *cobra.Command {
	f := &drillFlags{}
	cmd := &cobra.Command{
		Use:   "failover --isolated -f FILE [--from CLUSTER]",
		Short: "A failover rehearsal that leaves production alone: a clone of the DR standby, promoted, checked and deleted",
		Example: `  pgtopo drill failover --isolated -f orders.yaml -o markdown > drill.md
  pgtopo drill failover --isolated -f orders.yaml --from orders-west -o json`,
		Long: `Starts only from a topology in sync whose DR verdict is ready, and holds its
Lease for the whole drill. In the site of the DR standby (--from, or the
readiest, in another site first), pgtopo creates a temporary cluster,
<standby>-drill, as a standby of that standby (cascading), with a ClusterIP
Service: reachable only inside its site, so run the drill where that site's
Services answer (a CronJob in the DR site). Meanwhile a heartbeat row is
written every 100 ms on the primary, in a schema of its own (pgtopo_drill,
dropped afterwards).

Once the clone streams and has replayed a recent heartbeat, pgtopo cuts it
loose (the operator promotes it) and measures the RTO, from the cut to the
clone taking a write, and the RPO, the heartbeats acknowledged before the
cut that the clone lacks. It then runs the file's spec.drills.checks on the
clone (SQL that must return true) and deletes the clone. Production is
compared before and after: what pgtopo owns and marks on each object, who
streams from the primary and its slots; any difference fails the drill (a
resource version moved by the operator's status alone is only reported).
A clone left by a killed drill is removed by the next one; an object of the
clone's name that is not a drill's is never touched.

A standby in a Patroni site cannot be cloned (pgtopo has no operator there):
the drill says so and what to do instead. Exit 0 when the drill passed, 1
when it was refused or failed (the report says which).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(f.output, "markdown"); err != nil {
				return err
			}
			if !f.isolated {
				return usagef("drill failover needs --isolated: a failover drill on production itself would lose its primary; rehearse the round trip with pgtopo drill switchover, or the failover on a clone with --isolated")
			}
			return f.runIsolated(cmd.Context(), e)
		},
	}
	f.src.register(cmd, e)
	cmd.Flags().BoolVar(&f.isolated, "isolated", false, "rehearse on a clone of the DR standby, leaving production alone (required)")
	cmd.Flags().StringVar(&f.from, "from", "", "the standby to clone (default: the readiest, in another site first)")
	cmd.Flags().DurationVar(&f.streamTimeout, "stream-timeout", 10*time.Minute, "how long the clone may take to be created and stream (a base backup of the database)")
	cmd.Flags().StringVarP(&f.output, "output", "o", formatText, "report format: text, markdown, json or yaml")
	cmd.Flags().DurationVar(&f.lockTimeout, "lock-timeout", 30*time.Second, "how long to wait for another run's lock")
	return cmd
}

func (f *drillFlags) runIsolated(ctx context.Context, e env) error {
	return f.drive(ctx, e, func(ctx context.Context, r *drillRun, progress func(string)) (*drill.Report, error) {
		d := &drill.Isolated{World: r.w, Desired: r.in.Desired, From: f.from, StreamTimeout: f.streamTimeout, Progress: progress}
		return d.Run(ctx)
	})
}

// flavorSite opens a Kubernetes site of the topology by its name, through
// the topology's flavor.
func (w *drillWorld) flavorSite(name string) (flavor.Site, error) {
	op, err := flavor.Lookup(w.d.Flavor)
	if err != nil {
		return flavor.Site{}, err
	}
	for _, s := range w.d.Sites() {
		if s.Name != name {
			continue
		}
		if s.Patroni() {
			return flavor.Site{}, fmt.Errorf("site %s is a Patroni site", name)
		}
		ks, err := w.f.src.sites().Connect(s.Context)
		if err != nil {
			return flavor.Site{}, fmt.Errorf("site %s: %w", name, err)
		}
		return flavor.Site{Site: ks, Op: op}, nil
	}
	return flavor.Site{}, fmt.Errorf("site %s is not one of topology %s", name, w.d.Name)
}

// LeftClones lists, in every namespace the topology uses in each of its
// Kubernetes sites, the objects labelled as its drill's clones.
func (w *drillWorld) LeftClones(ctx context.Context) ([]drill.Clone, error) {
	namespaces := map[string]map[string]bool{}
	for _, c := range w.d.Clusters {
		if c.Site.Patroni() {
			continue
		}
		if namespaces[c.Site.Name] == nil {
			namespaces[c.Site.Name] = map[string]bool{}
		}
		namespaces[c.Site.Name][c.Namespace] = true
	}
	var out []drill.Clone
	for _, site := range slices.Sorted(maps.Keys(namespaces)) {
		fs, err := w.flavorSite(site)
		if err != nil {
			return nil, err
		}
		for _, ns := range slices.Sorted(maps.Keys(namespaces[site])) {
			items, err := fs.ListObjects(ctx, fs.Op.Resource, ns, drill.CloneLabel+"="+w.d.Name)
			if err != nil {
				return nil, fmt.Errorf("site %s: list %s in %s: %w", site, fs.Op.Resource.Resource, ns, err)
			}
			for _, it := range items {
				out = append(out, drill.Clone{Site: site, Namespace: ns, Name: it.GetName()})
			}
		}
	}
	return out, nil
}

// CreateClone writes the clone's object: one instance, the standby's
// version, size and parameters, a standby of the standby's in-site Service
// with its bootstrap Secret, behind a ClusterIP Service. An object of that
// name that is not a clone of this topology's drill is left alone.
func (w *drillWorld) CreateClone(ctx context.Context, c drill.Clone, of *snapshot.ClusterState) error {
	fs, err := w.flavorSite(c.Site)
	if err != nil {
		return err
	}
	if err := w.ours(ctx, fs, c); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if of.Object == nil {
		return fmt.Errorf("%s has no object to copy", of.Name)
	}
	src := of.Object.Spec
	if src.Replication.BootstrapSecret == "" {
		src.Replication.BootstrapSecret = w.d.BootstrapSecret
		if src.Replication.BootstrapSecret == "" {
			src.Replication.BootstrapSecret = fs.Op.Names.BootstrapSecret(w.d.Name)
		}
	}
	spec := snapshot.Spec{Instances: 1, TeamID: src.TeamID, Version: src.Version, Parameters: src.Parameters, VolumeSize: src.VolumeSize,
		Replication: snapshot.Replication{Enabled: true, IsReplica: true, ServiceType: "ClusterIP", BootstrapSecret: src.Replication.BootstrapSecret}}
	spec = spec.WithPeer(snapshot.Endpoint{Host: of.Service.ClusterIP, Port: fs.Op.Names.PostgresPort()})
	return w.writeClone(ctx, fs, c, spec)
}

// writeClone writes the clone's spec, labelled as this topology's drill's
// clone and with no topology label.
func (w *drillWorld) writeClone(ctx context.Context, fs flavor.Site, c drill.Clone, spec snapshot.Spec) error {
	spec.Topology = ""
	u := fs.Op.BuildSpec(c.Namespace, c.Name, spec)
	u.SetLabels(map[string]string{drill.CloneLabel: w.d.Name})
	return fs.ApplyObject(ctx, fs.Op.Resource, kube.FieldManager, u)
}

// ours checks that the object of c's name is this topology's drill's
// clone: a NotFound error when there is none, a *drill.ForeignObjectError
// when it is someone else's.
func (w *drillWorld) ours(ctx context.Context, fs flavor.Site, c drill.Clone) error {
	u, err := fs.GetObject(ctx, fs.Op.Resource, c.Namespace, c.Name)
	switch {
	case apierrors.IsNotFound(err):
		return err
	case err != nil:
		return fmt.Errorf("get %s: %w", c, err)
	case u.GetLabels()[drill.CloneLabel] != w.d.Name:
		return &drill.ForeignObjectError{Clone: c.String(), Topology: w.d.Name}
	}
	return nil
}

// PromoteClone clears the clone's standby settings: its operator promotes
// it.
func (w *drillWorld) PromoteClone(ctx context.Context, c drill.Clone) error {
	fs, err := w.flavorSite(c.Site)
	if err != nil {
		return err
	}
	o, err := fs.ReadCluster(ctx, c.Namespace, c.Name)
	if err != nil {
		return err
	}
	if o == nil {
		return fmt.Errorf("%s is gone", c)
	}
	spec := o.Spec
	spec.Replication.IsReplica = false
	spec.Replication.PeerHost, spec.Replication.PeerPort = "", 0
	return w.writeClone(ctx, fs, c, spec)
}

// DeleteClone deletes the clone's object and waits, at most two minutes,
// until it and its Service are gone (the operator's teardown).
func (w *drillWorld) DeleteClone(ctx context.Context, c drill.Clone) error {
	fs, err := w.flavorSite(c.Site)
	if err != nil {
		return err
	}
	// Only an object labelled as this topology's clone is deleted, whoever
	// asks.
	switch err := w.ours(ctx, fs, c); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	default:
		if err := fs.DeleteCluster(ctx, c.Namespace, c.Name); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", c, err)
		}
	}
	w.mu.Lock()
	delete(w.logins, "clone "+c.String())
	w.mu.Unlock()
	svc := fs.Op.Names.MasterService(c.Name)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		o, oerr := fs.ReadCluster(ctx, c.Namespace, c.Name)
		_, serr := fs.GetService(ctx, c.Namespace, svc)
		switch {
		case oerr != nil:
			return fmt.Errorf("read %s: %w", c, oerr)
		case serr != nil && !apierrors.IsNotFound(serr):
			return fmt.Errorf("read Service %s/%s: %w", c.Namespace, svc, serr)
		case o == nil && apierrors.IsNotFound(serr):
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited 2m0s for %s and its Service %s to be gone (object present: %t)", c, svc, o != nil)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// OpenClone opens an admin session to the clone at its Service's cluster
// address, with the clone's credentials (a copy of production's) read
// once per clone and kept in memory for the drill.
func (w *drillWorld) OpenClone(ctx context.Context, c drill.Clone) (drill.Session, error) {
	fs, err := w.flavorSite(c.Site)
	if err != nil {
		return nil, err
	}
	svc, err := fs.GetService(ctx, c.Namespace, fs.Op.Names.MasterService(c.Name))
	if err != nil {
		return nil, fmt.Errorf("%s: Service: %w", c, err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == "None" {
		return nil, fmt.Errorf("%s: its Service has no cluster address yet", c)
	}
	ep := snapshot.Endpoint{Host: svc.Spec.ClusterIP, Port: fs.Op.Names.PostgresPort()}
	key := "clone " + c.String()
	w.mu.Lock()
	login, ok := w.logins[key]
	w.mu.Unlock()
	if !ok {
		admin := live.Admin{Sites: func(string) (live.LoginReader, error) { return fs, nil }, TLS: w.d.TLS, Keys: fs.Op.Names}
		state := &snapshot.ClusterState{Name: c.Name, Site: c.Site, Namespace: c.Namespace,
			Credentials: snapshot.SecretState{Name: fs.Op.Names.CredentialsSecret(c.Name)}}
		if login, err = admin.Login(ctx, state); err != nil {
			return nil, fmt.Errorf("%s: %w", c, err)
		}
		w.mu.Lock()
		w.logins[key] = login
		w.mu.Unlock()
	}
	s, err := live.OpenSession(ctx, ep, login)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	return s, nil
}

var _ drill.CloneWorld = (*drillWorld)(nil)
