package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/importer"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/topology"
)

type importFlags struct {
	src         sourceFlags
	contexts    []string
	sites       []string
	namespace   string
	tlsMode     string
	caConfigMap string
	caSecret    string
	outDir      string
	// from is a topology file whose sites (and TLS) import reads.
	from     string
	tlsGiven bool
}

func newImportCmd(e env) *cobra.Command {
	f := &importFlags{}
	cmd := &cobra.Command{
		Use:   "import (--context A --context B | --site NAME=CONTEXT... | -f FILE) [--namespace N] [--out-dir DIR]",
		Short: "Write topology files for hot-standby pairs that already run (built by hand from the runbook)",
		Example: `  pgtopo import --site east=prod-east --site west=prod-west --namespace db --ca-configmap postgres-ca --out-dir topologies/
  pgtopo import --context prod-east --context prod-west > orders.yaml
  pgtopo import -f topologies/orders.yaml --out-dir topologies/   # the sites and TLS of a file you have
  pgtopo import -f dc1-and-east.yaml --patroni-credentials patroni.env   # Patroni clusters the file names, paired with the Kubernetes sites' clusters`,
		Long: `Reads every cluster object in the sites (one namespace, or all), probes
each database, and pairs each standby with the primary of another site whose
system identifier it shares, its peer naming that primary. Each pair is
written as a topology file as it runs: names, namespaces, instances, volume
sizes, version, teamId, parameters, service type and the standbys'
bootstrap Secret (kept under its name). Each file is validated and planned
against the live sites before it is written: the first plan of an imported
pair records pgtopo's marks and changes nothing that restarts or rewrites a
database; where it would change more (parameters that differ between the
clusters, a peer pgtopo would repoint), the file's NOTE lines and stderr
say so.

--site NAME=CONTEXT names a site (--context CONTEXT names it after its
context); -f FILE takes the Kubernetes sites of a topology file you have,
and its spec.postgres.tls unless the TLS flags are given, and the Patroni
clusters it names: no API lists those, so the file names each (scope,
members, endpoint) and import reads it through its REST API with the
credentials of --patroni-credentials or the environment, as apply does; a
file with the Patroni clusters and the Kubernetes sites alone is enough.
The TLS flags are the files' spec.postgres.tls, and the probes'
own: import signs in with each cluster's credentials Secret and sends the
password only as they say (verify-full by default).

Nothing is changed in the sites. Without --out-dir the files go to stdout
as one YAML stream; with it, one file per topology (NAME.yaml), none
written if any exists already.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, flag := range []string{"tls-mode", "ca-configmap", "ca-secret"} {
				f.tlsGiven = f.tlsGiven || cmd.Flags().Changed(flag)
			}
			return f.run(cmd.Context(), e)
		},
	}
	cmd.Flags().StringArrayVar(&f.contexts, "context", nil, "a kube context to read, as a site named after it (repeat)")
	cmd.Flags().StringArrayVar(&f.sites, "site", nil, "a site to read, NAME=CONTEXT (repeat)")
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "", "read one namespace (default: every namespace)")
	cmd.Flags().StringVar(&f.tlsMode, "tls-mode", topology.TLSVerifyFull, "how probes check the servers, and the files' spec.postgres.tls.mode: verify-full, verify-ca, require or disable")
	cmd.Flags().StringVar(&f.caConfigMap, "ca-configmap", "", "the ConfigMap, in each cluster's namespace, whose ca.crt verifies the servers")
	cmd.Flags().StringVar(&f.caSecret, "ca-secret", "", "the Secret, in each cluster's namespace, whose ca.crt verifies the servers")
	cmd.Flags().StringVarP(&f.from, "file", "f", "", "take the Kubernetes sites (and TLS) of this topology file")
	cmd.Flags().StringVar(&f.outDir, "out-dir", "", "write NAME.yaml per topology here (default: one YAML stream on stdout)")
	cmd.Flags().StringVar(&f.src.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().DurationVar(&f.src.siteTimeout, "site-timeout", 10*time.Second, "how long to wait for each site")
	f.src.patroni = &patroniFlags{}
	f.src.patroni.register(cmd, e)
	return cmd
}

// imported is what import reads: the sites the flags name, in order, and
// a file's TLS and Patroni clusters when -f names one.
type imported struct {
	sites   []topology.Site
	fileTLS *topology.PostgresTLS
	// patroni are the file's Patroni clusters: no API lists them, so
	// import reads those the file names.
	patroni []topology.DesiredCluster
}

func (f *importFlags) siteList(e env) (imported, error) {
	var in imported
	if f.from != "" {
		v, err := schema.NewValidator()
		if err != nil {
			return in, err
		}
		data, err := readTopology(e, f.from)
		if err != nil {
			return in, err
		}
		top, fs, err := v.Load(f.from, data)
		if err != nil {
			return in, err
		}
		if top == nil {
			reportFindings(e, fs)
			return in, exitCode(ExitError)
		}
		d, err := top.Desired()
		if err != nil {
			return in, err
		}
		in.fileTLS = &d.TLS
		for _, s := range top.Spec.Sites {
			if s.Patroni() {
				in.sites = append(in.sites, s)
				continue
			}
			in.sites = append(in.sites, topology.Site{Name: s.Name, Context: s.Context})
		}
		for _, c := range d.Clusters {
			if c.IsPatroni() {
				in.patroni = append(in.patroni, topology.DesiredCluster{Name: c.Name, Site: c.Site, Namespace: c.Namespace,
					Role: topology.RolePrimary, Endpoint: c.Endpoint, Patroni: c.Patroni})
			}
		}
	}
	for _, c := range f.contexts {
		in.sites = append(in.sites, topology.Site{Name: c, Context: c})
	}
	for _, s := range f.sites {
		name, ctx, ok := strings.Cut(s, "=")
		if !ok || name == "" || ctx == "" {
			return in, usagef("--site %q: give NAME=CONTEXT", s)
		}
		in.sites = append(in.sites, topology.Site{Name: name, Context: ctx})
	}
	if len(in.sites) < 2 {
		return in, usagef("import pairs clusters across sites: give two or more (--context CONTEXT, --site NAME=CONTEXT, or -f FILE)")
	}
	for i, s := range in.sites {
		for _, t := range in.sites[:i] {
			if s.Name == t.Name || !s.Patroni() && s.Context == t.Context {
				return in, usagef("site %s (context %s) is given twice", s.Name, s.Context)
			}
		}
	}
	return in, nil
}

func (f *importFlags) tls() (*topology.PostgresTLS, error) {
	if !slices.Contains([]string{topology.TLSVerifyFull, topology.TLSVerifyCA, topology.TLSRequire, topology.TLSDisable}, f.tlsMode) {
		return nil, usagef("--tls-mode %q: use verify-full, verify-ca, require or disable", f.tlsMode)
	}
	t := &topology.PostgresTLS{Mode: f.tlsMode}
	switch {
	case f.caConfigMap != "" && f.caSecret != "":
		return nil, usagef("--ca-configmap and --ca-secret: give one")
	case f.caConfigMap != "":
		t.CA = &topology.CASource{ConfigMap: &topology.KeyRef{Name: f.caConfigMap}}
	case f.caSecret != "":
		t.CA = &topology.CASource{Secret: &topology.KeyRef{Name: f.caSecret}}
	}
	return t, nil
}

func (f *importFlags) run(ctx context.Context, e env) error {
	if ctx == nil {
		ctx = context.Background()
	}
	in, err := f.siteList(e)
	if err != nil {
		return err
	}
	sites, fileTLS := in.sites, in.fileTLS
	tls, err := f.tls()
	if err != nil {
		return err
	}
	if fileTLS != nil && !f.tlsGiven {
		tls = fileTLS
	}
	op, err := flavor.Lookup(topology.DefaultFlavor)
	if err != nil {
		return err
	}
	// Every cluster object of every site, as one provisional topology the
	// observer probes like any other.
	probe := &topology.Desired{Name: "pgtopo-import", Flavor: topology.DefaultFlavor, TLS: *tls}
	probe.Clusters = append(probe.Clusters, in.patroni...)
	for _, site := range sites {
		if site.Patroni() {
			continue
		}
		s, err := f.src.sites().Connect(site.Context)
		if err != nil {
			return fmt.Errorf("site %s (context %s): %w", site.Name, site.Context, err)
		}
		listCtx, cancel := context.WithTimeout(ctx, f.src.siteTimeout)
		objs, err := flavor.Site{Site: s, Op: op}.AllClusters(listCtx, f.namespace)
		cancel()
		if err != nil {
			return fmt.Errorf("site %s (context %s): list %s: %w", site.Name, site.Context, op.Resource.Resource, err)
		}
		for _, o := range objs {
			role := topology.RolePrimary
			if o.Object.Spec.Replication.IsReplica {
				role = topology.RoleStandby
			}
			probe.Clusters = append(probe.Clusters, topology.DesiredCluster{Name: o.Name, Site: site, Namespace: o.Namespace, Role: role})
		}
	}
	if len(probe.Clusters) == 0 {
		return fmt.Errorf("no %s objects in %s: nothing to import", op.Resource.Resource, f.where(sites))
	}
	obs, err := f.src.newObserver(probe, nil)
	if err != nil {
		return err
	}
	snap := obs.Observe(ctx, probe)
	for _, s := range snap.Sites {
		if !s.Reachable {
			return fmt.Errorf("site %s (context %s): %s", s.Name, s.Context, s.Error)
		}
	}
	var found []importer.Found
	for _, c := range snap.Clusters {
		site, _ := siteNamed(sites, c.Site)
		if c.Error != "" {
			return fmt.Errorf("%s/%s in site %s: %s", c.Namespace, c.Name, c.Site, c.Error)
		}
		fc := importer.Found{Site: site, State: c}
		for _, dc := range in.patroni {
			if dc.Name != c.Name || dc.Site.Name != c.Site {
				continue
			}
			if !c.Exists {
				return fmt.Errorf("cluster %s in Patroni site %s: none of its members' REST APIs answers (%s): import reads it where it runs", c.Name, c.Site, describeMembers(dc.Patroni))
			}
			fc.Patroni = dc.Patroni
		}
		found = append(found, fc)
	}
	res := importer.Pairs(found)
	for _, why := range res.Skipped {
		fmt.Fprintf(e.stderr, "skipped: %s\n", printable.String(why))
	}
	if len(res.Pairs) == 0 {
		return fmt.Errorf("no hot-standby pair found in %s (a primary and a standby of it in another site)", f.where(sites))
	}
	v, err := schema.NewValidator()
	if err != nil {
		return err
	}
	docs := make([][]byte, len(res.Pairs))
	for i, p := range res.Pairs {
		docs[i] = p.Document(importer.Options{TLS: tls})
		first, err := f.firstPlan(ctx, v, p.Name+".yaml", docs[i])
		if err != nil {
			return fmt.Errorf("topology %s as imported: %w", p.Name, err)
		}
		fmt.Fprintf(e.stderr, "%s: %s ← %s; first plan: %s\n", p.Name, p.Primary, describeStandbys(p.Standbys), first)
		for _, n := range p.Notes {
			fmt.Fprintf(e.stderr, "  note: %s\n", printable.String(n))
		}
	}
	return f.write(e, res.Pairs, docs)
}

func describeMembers(p *topology.PatroniCluster) string {
	var out []string
	for _, m := range p.Members {
		out = append(out, fmt.Sprintf("%s:%d", m.Host, m.Port))
	}
	return strings.Join(out, ", ")
}

func (f *importFlags) where(sites []topology.Site) string {
	var names []string
	for _, s := range sites {
		if s.Patroni() {
			names = append(names, "Patroni site "+s.Name)
			continue
		}
		names = append(names, s.Context)
	}
	ns := "every namespace"
	if f.namespace != "" {
		ns = "namespace " + f.namespace
	}
	return fmt.Sprintf("%s of contexts %s", ns, strings.Join(names, ", "))
}

func siteNamed(sites []topology.Site, name string) (topology.Site, bool) {
	for _, s := range sites {
		if s.Name == name {
			return s, true
		}
	}
	return topology.Site{}, false
}

func describeStandbys(ss []importer.Found) string {
	var out []string
	for _, s := range ss {
		how := "same system identifier"
		if s.State.PG == nil {
			how = "by its peer"
		}
		out = append(out, fmt.Sprintf("%s (%s)", s, how))
	}
	return strings.Join(out, ", ")
}

// firstPlan validates an imported file and plans it against the sites:
// what its first diff will say.
func (f *importFlags) firstPlan(ctx context.Context, v *schema.Validator, name string, doc []byte) (string, error) {
	top, fs, err := v.Load(name, doc)
	if err != nil {
		return "", err
	}
	if top == nil {
		return "", fmt.Errorf("does not validate: %s", fs[0])
	}
	d, err := top.Desired()
	if err != nil {
		return "", err
	}
	obs, err := f.src.newObserver(d, nil)
	if err != nil {
		return "", err
	}
	pl := planner.Compute(d, obs.Observe(ctx, d), plan.Options{})
	return describeFirstPlan(pl), nil
}

// describeFirstPlan says whether a plan only marks the clusters as pgtopo's,
// or also keeps WAL for a standby (a slot, a catalogue row: no restart).
func describeFirstPlan(pl plan.Plan) string {
	if len(pl.Refusals) > 0 {
		return "refused: " + pl.Refusals[0].Reason
	}
	var slots, other []string
	for _, s := range pl.Steps {
		switch s.Action {
		case plan.ActionRecord, plan.ActionLock:
		case plan.ActionEnsureSlot:
			slots = append(slots, fmt.Sprintf("%s %s", s.Action, s.Subject.Cluster))
		default:
			other = append(other, fmt.Sprintf("%s %s", s.Action, s.Subject.Cluster))
		}
	}
	switch {
	case len(pl.Steps) == 0:
		return "in sync"
	case len(other) == 0 && len(slots) == 0:
		return "only pgtopo's marks (record)"
	case len(other) == 0:
		return "pgtopo's marks and what keeps WAL for the standbys (" + strings.Join(slots, ", ") + "): nothing restarts"
	}
	return "changes " + strings.Join(other, ", ") + " (see the notes)"
}

// write puts the files in --out-dir, none if any exists already, or on
// stdout as one stream.
func (f *importFlags) write(e env, pairs []importer.Pair, docs [][]byte) error {
	if f.outDir == "" {
		for i, d := range docs {
			if i > 0 {
				fmt.Fprintln(e.stdout, "---")
			}
			_, _ = e.stdout.Write(d)
		}
		return nil
	}
	if err := os.MkdirAll(f.outDir, 0o755); err != nil {
		return fmt.Errorf("--out-dir %s: %w", f.outDir, err)
	}
	paths := make([]string, len(pairs))
	for i, p := range pairs {
		paths[i] = filepath.Join(f.outDir, p.Name+".yaml")
		if _, err := os.Stat(paths[i]); err == nil {
			return fmt.Errorf("%s exists already: import writes no file over another (move it, or give another --out-dir); nothing was written", paths[i])
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", paths[i], err)
		}
	}
	for i, d := range docs {
		if err := os.WriteFile(paths[i], d, 0o644); err != nil {
			return fmt.Errorf("%s: %w", paths[i], err)
		}
		fmt.Fprintf(e.stdout, "wrote %s\n", paths[i])
	}
	return nil
}
