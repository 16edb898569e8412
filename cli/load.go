package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/gitsource"
	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/planner"
	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// defaultPath is the topology's path inside a repository when --path is
// not given.
const defaultPath = "topology.yaml"

// sourceFlags are the flags of every command that reads a topology and the
// live world.
type sourceFlags struct {
	// files are what -f named (files, directories, "-"); file is the one
	// topology this run works on, once chosen.
	files       []string
	file        string
	repo        string
	ref         string
	path        string
	kubeconfig  string
	siteTimeout time.Duration
	siteCache   *kube.Sites
	patroni     *patroniFlags // shared by copies of the flags
	// shared is the reads the observers of this process share (a fleet's
	// files, a loop's cycles): made at register, shared by copies.
	shared *live.Shared
	// observerSecret: see registerObserver.
	observerSecret string
}

func (f *sourceFlags) register(cmd *cobra.Command, e env) {
	f.patroni = &patroniFlags{}
	f.shared = &live.Shared{}
	f.patroni.register(cmd, e)
	cmd.Flags().StringArrayVarP(&f.files, "file", "f", nil, "topology file, a directory of *.yaml and *.yml, or - for standard input; repeat for several (or read it from git with --repo)")
	cmd.Flags().StringVar(&f.repo, "repo", "", "git repository holding the topology: a local path (opened in place) or a URL (fetched into memory)")
	cmd.Flags().StringVar(&f.ref, "ref", "HEAD", "with --repo: branch, tag or commit to read")
	cmd.Flags().StringVar(&f.path, "path", defaultPath, "with --repo: the topology's path inside the repository")
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().DurationVar(&f.siteTimeout, "site-timeout", 10*time.Second, "how long to wait for each site")
}

// registerObserver adds --observer-secret, to a command that only observes.
func (f *sourceFlags) registerObserver(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.observerSecret, "observer-secret", "", "probe the databases with the login in this Secret (in each cluster's namespace: a role in pg_monitor) and read no other Secret: for an identity that must not hold the superuser's password, such as a pull-request job's (examples/deploy/rbac-readonly.yaml)")
}

// source opens where the topology comes from: a file, or a repository at
// --ref. Credentials for a URL come from the environment (PGTOPO_GIT_*).
func (f *sourceFlags) source(ctx context.Context, e env) (reconcile.Source, *gitsource.Repository, error) {
	v, err := schema.NewValidator()
	if err != nil {
		return nil, nil, err
	}
	if f.file == "" && len(f.files) > 0 {
		files, err := f.topologyFiles()
		if err != nil {
			return nil, nil, err
		}
		if len(files) > 1 {
			return nil, nil, usagef("-f names %d topologies (%s): this command takes one", len(files), strings.Join(files, ", "))
		}
		f.file = files[0]
	}
	switch {
	case f.repo != "" && f.file != "":
		return nil, nil, usagef("-f and --repo: give one; with --repo, --path names the file inside the repository")
	case f.repo == "" && f.file == "":
		return nil, nil, usagef("which topology? give -f FILE, or --repo URL|PATH [--ref REV] [--path FILE]")
	case f.file == stdinFile:
		data, err := readTopology(e, stdinFile)
		if err != nil {
			return nil, nil, err
		}
		return bytesSource{name: stdinFile, data: data, v: v}, nil, nil
	case f.file != "":
		return &reconcile.FileSource{Path: f.file, Validator: v}, nil, nil
	}
	repo, err := f.openRepo(ctx, e)
	if err != nil {
		return nil, nil, err
	}
	return reconcile.NewGitSource(repo, f.ref, f.path, v), repo, nil
}

// topologyFiles are the topology files -f names, expanded (a directory is
// its *.yaml and *.yml, "-" standard input).
func (f *sourceFlags) topologyFiles() ([]string, error) {
	files, err := expandFiles(f.files)
	if err != nil {
		return nil, err
	}
	if len(files) > 1 && slices.Contains(files, stdinFile) {
		return nil, usagef("-f -: standard input is one topology; give it alone")
	}
	return files, nil
}

// bytesSource is a topology read once (standard input).
type bytesSource struct {
	name string
	data []byte
	v    *schema.Validator
}

func (s bytesSource) Load(context.Context) (*reconcile.Input, error) {
	return reconcile.Validate(s.v, s.name, s.data)
}

func (f *sourceFlags) openRepo(ctx context.Context, e env) (*gitsource.Repository, error) {
	auth, err := gitsource.AuthFromEnv(f.repo, e.getenv)
	if err != nil {
		return nil, err
	}
	return gitsource.Open(ctx, f.repo, auth)
}

// load reads and validates the topology once. Findings go to stderr (and
// as GitHub annotations in Actions); an invalid file returns exitCode(1).
func (f *sourceFlags) load(ctx context.Context, e env) (*reconcile.Input, error) {
	src, _, err := f.source(ctx, e)
	if err != nil {
		return nil, err
	}
	return loadFrom(ctx, e, src)
}

func loadFrom(ctx context.Context, e env, src reconcile.Source) (*reconcile.Input, error) {
	in, err := src.Load(ctx)
	var invalid *reconcile.InvalidError
	if errors.As(err, &invalid) {
		reportFindings(e, invalid.Findings)
		fmt.Fprintf(e.stderr, "pgtopo: %s\n", printable.String(err.Error()))
		return nil, exitCode(ExitError)
	}
	if err != nil {
		return nil, err
	}
	reportFindings(e, in.Findings)
	return in, nil
}

func reportFindings(e env, fs schema.Findings) {
	for _, f := range fs {
		fmt.Fprintln(e.stderr, f.String())
	}
	if e.getenv("GITHUB_ACTIONS") == "true" {
		writeAnnotations(e.stderr, fs)
	}
}

// sites returns the run's shared site clients, built on first use.
func (f *sourceFlags) sites() *kube.Sites {
	if f.siteCache == nil {
		f.siteCache = &kube.Sites{Loader: kube.Loader{Kubeconfig: f.kubeconfig}}
	}
	return f.siteCache
}

// observer builds the live observer of d's flavor from the kubeconfig
// flags; one that keeps database sessions between snapshots, for runs that
// observe again and again, also returns what ends them.
func (f *sourceFlags) observer(d *topology.Desired) (*live.Observer, error) {
	return f.newObserver(d, nil)
}

func (f *sourceFlags) keepingObserver(d *topology.Desired) (*live.Observer, func(), error) {
	keep := &live.Conns{}
	o, err := f.newObserver(d, keep)
	return o, keep.Close, err
}

func (f *sourceFlags) newObserver(d *topology.Desired, keep *live.Conns) (*live.Observer, error) {
	op, err := flavor.Lookup(d.Flavor)
	if err != nil {
		return nil, err
	}
	return &live.Observer{
		Connect:        func(site topology.Site) (live.SiteAPI, error) { return f.openSite(d, site, op) },
		Names:          op.Names,
		Prober:         live.PgxProber{Keep: keep, Catalogue: op.Catalogue},
		SiteTimeout:    f.siteTimeout,
		ObserverSecret: f.observerSecret,
		DownFor:        siteDownFor,
		Shared:         f.shared,
		Flavor:         op.Name,
	}, nil
}

// siteDownFor is how long one run takes a site that did not answer for
// down without asking again (reconcile observes each cycle afresh).
const siteDownFor = 20 * time.Second

// openSite opens one site of d, observed and changed the same way: a
// Patroni site through its members' REST APIs, any other through its
// kube context and the topology's flavor.
func (f *sourceFlags) openSite(d *topology.Desired, site topology.Site, op *flavor.Operator) (siteAPI, error) {
	if site.Patroni() {
		return f.patroniSite(d, site, op.Names)
	}
	s, err := f.sites().Connect(site.Context)
	if err != nil {
		return nil, err
	}
	return flavor.Site{Site: s, Op: op}, nil
}

// flavorSites opens the plan's sites for changes, by site name, through
// the topology's flavor and the run's shared clients: a Kubernetes site
// at the context the plan names, a Patroni site as the file says.
func (f *sourceFlags) flavorSites(d *topology.Desired, pl plan.Plan, op *flavor.Operator) func(string) (apply.SiteWriter, error) {
	sites := map[string]topology.Site{}
	for _, s := range pl.Sites {
		sites[s.Name] = topology.Site{Name: s.Name, Context: s.Context}
	}
	for _, s := range d.Sites() {
		if s.Patroni() {
			sites[s.Name] = s
		}
	}
	return func(name string) (apply.SiteWriter, error) {
		s, ok := sites[name]
		if !ok {
			return nil, fmt.Errorf("site %s is not in the plan", name)
		}
		api, err := f.openSite(d, s, op)
		if err != nil || s.Patroni() {
			return api, err
		}
		return forgetting{siteAPI: api, forget: func() { f.shared.Forget(s.Context) }}, nil
	}
}

// The first looks of a process read a Kubernetes site's objects from
// shared lists.
var _ live.NamespaceLister = flavor.Site{}

// forgetting is a site opened for changes whose every write drops the
// lists the process keeps of it: a look after a write never sees the
// world from before it.
type forgetting struct {
	siteAPI
	forget func()
}

func (w forgetting) WriteSpec(ctx context.Context, ns, name string, s snapshot.Spec) error {
	defer w.forget()
	return w.siteAPI.WriteSpec(ctx, ns, name, s)
}

func (w forgetting) WriteMarks(ctx context.Context, ns, name string, m snapshot.Marks) error {
	defer w.forget()
	return w.siteAPI.WriteMarks(ctx, ns, name, m)
}

func (w forgetting) DeleteCluster(ctx context.Context, ns, name string) error {
	defer w.forget()
	return w.siteAPI.DeleteCluster(ctx, ns, name)
}

func (w forgetting) ApplySecret(ctx context.Context, s *corev1.Secret) error {
	defer w.forget()
	return w.siteAPI.ApplySecret(ctx, s)
}

func (w forgetting) DeleteSecret(ctx context.Context, ns, name string) error {
	defer w.forget()
	return w.siteAPI.DeleteSecret(ctx, ns, name)
}

func (w forgetting) CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	defer w.forget()
	return w.siteAPI.CreateLease(ctx, l)
}

func (w forgetting) UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	defer w.forget()
	return w.siteAPI.UpdateLease(ctx, l)
}

// slotLeases are the switchover slot Leases of d's sites in pl, taken as
// holder.
func (f *sourceFlags) slotLeases(d *topology.Desired, pl plan.Plan, holder string) (*slotLeases, error) {
	op, err := flavor.Lookup(d.Flavor)
	if err != nil {
		return nil, err
	}
	return leasesOf(f.flavorSites(d, pl, op), holder), nil
}

// runner assembles the Runner that applies pl to d's sites: its sites,
// admin sessions, the flavor's catalogue and credentials keys, the lock's
// holder and the replanning of d; the caller adds progress, timeouts and
// what a changed plan means.
func (f *sourceFlags) runner(d *topology.Desired, obs *live.Observer, pl plan.Plan, opt plan.Options, drain <-chan struct{}) (*apply.Runner, error) {
	op, err := flavor.Lookup(d.Flavor)
	if err != nil {
		return nil, err
	}
	sites := f.flavorSites(d, pl, op)
	return &apply.Runner{
		Observer:   boundObserver{obs: obs, d: d},
		Sites:      sites,
		Database:   adminDB{live.Admin{Sites: loginReaders(sites), TLS: d.TLS, Keys: op.Names}},
		Catalogue:  op.Catalogue,
		Keys:       op.Names,
		Holder:     holderIdentity(),
		HolderGone: holderGone,
		Replan:     func(s *snapshot.Snapshot) plan.Plan { return planner.Compute(d, s, opt) },
		Drain:      drain,
	}, nil
}

// loginReaders reads the logins of the sites apply opens: every site
// pgtopo opens for changes (a flavor's Kubernetes site, a Patroni site)
// also holds its clusters' credentials and CA bundles.
func loginReaders(sites func(string) (apply.SiteWriter, error)) func(string) (live.LoginReader, error) {
	return func(site string) (live.LoginReader, error) {
		s, err := sites(site)
		if err != nil {
			return nil, err
		}
		r, ok := s.(live.LoginReader)
		if !ok {
			return nil, fmt.Errorf("site %s: %T holds no credentials or CA bundles", site, s)
		}
		return r, nil
	}
}

// boundObserver observes one topology, for apply.
type boundObserver struct {
	obs *live.Observer
	d   *topology.Desired
}

func (b boundObserver) Observe(ctx context.Context) *snapshot.Snapshot {
	return b.obs.Observe(ctx, b.d)
}

// ObserveClusters looks at a few clusters alone, for apply's waits.
func (b boundObserver) ObserveClusters(ctx context.Context, names []string) *snapshot.Snapshot {
	return b.obs.ObserveClusters(ctx, b.d, names)
}

// adminDB opens admin sessions for apply.
type adminDB struct{ live.Admin }

func (a adminDB) Open(ctx context.Context, c *snapshot.ClusterState) (apply.Session, error) {
	s, err := a.Admin.Open(ctx, c)
	if err != nil {
		return nil, err
	}
	return s, nil
}
