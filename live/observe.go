package live

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// SiteAPI is what observing needs from one site's Kubernetes API, with
// cluster objects already read through the topology's flavor.
type SiteAPI interface {
	// ReadCluster returns nil without error when the object does not exist.
	ReadCluster(ctx context.Context, ns, name string) (*snapshot.Object, error)
	// ListClusters names the cluster objects in ns labelled for
	// topology; listed in every namespace (ns empty), namespace/name.
	ListClusters(ctx context.Context, ns, topology string) ([]string, error)
	GetService(ctx context.Context, ns, name string) (*corev1.Service, error)
	ListNodes(ctx context.Context) ([]corev1.Node, error)
	GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error)
	GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error)
	GetConfigMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error)
	CABundles
	// CheckFlavor says why the site cannot take what pgtopo writes (its
	// operator's CRD lacks what the flavor needs), "" when it can.
	CheckFlavor(ctx context.Context) string
}

// Connector opens a site's API: a kubernetes site's from its kubeconfig
// context, a patroni site's from its clusters' members.
type Connector func(site topology.Site) (SiteAPI, error)

// Prober reads PostgreSQL facts from a server.
type Prober interface {
	Probe(ctx context.Context, ep snapshot.Endpoint, login Login) (*snapshot.PGState, error)
}

// Names are the operator's names of a cluster's companions (its flavor's).
type Names interface {
	CredentialKeys
	CredentialsSecret(cluster string) string
	BootstrapSecret(topology string) string
	MasterService(cluster string) string
	PostgresPort() int
	SlotName(cluster string) string
}

// Observer takes snapshots.
type Observer struct {
	Connect Connector
	Names   Names
	Prober  Prober
	// SiteTimeout bounds each site's observation (default 10s).
	SiteTimeout time.Duration
	// ObserverSecret, when set, names the Secret (in each cluster's
	// namespace) of a login that may only read, such as a role in
	// pg_monitor: the databases are probed with it, and no other Secret
	// is read, so an identity that may read that one Secret alone (a
	// pull-request job's) still observes them. A Patroni site's clusters
	// are probed with the credentials the run was given.
	ObserverSecret string
	// Run runs the sites' observations; nil runs them all at once. A
	// benchmark passes one that runs them in turn, to compare.
	Run func(sites []func())
	// DownFor, when set, remembers for that long a site that did not
	// answer: later snapshots report it down at once rather than waiting
	// out SiteTimeout again, which a partitioned site would cost on every
	// look of a run's waits.
	DownFor time.Duration
	// Shared, when set, is the reads this observer shares with the others
	// of its process; Flavor names the topology's flavor, which the
	// operator check depends on.
	Shared *Shared
	Flavor string

	keyOnce sync.Once
	key     []byte
	downMu  sync.Mutex
	down    map[string]downSite
	// flavorOK remembers sites whose operator was found able to take
	// what pgtopo writes, so waits polling every 100 ms do not read the
	// CRD each time (it is read again after flavorCheckEvery).
	flavorOK map[string]time.Time
	// cas remembers CA bundles read, so the waits that observe every
	// 100 ms do not read each cluster's CA object each time (read again
	// after flavorCheckEvery).
	cas map[string]cachedCA
	// nodes are each site's node addresses as the last full look read
	// them: a wait's polls (ObserveClusters) do not list the nodes.
	nodes map[string][]string
	// known are the reads of each cluster (site/namespace/name) a poll
	// need not repeat while its database answers: its Service and login.
	known map[string]knownReads
}

// knownReads are a cluster's Service and credentials as last read, kept
// only while its database answered with them.
type knownReads struct {
	svc               *corev1.Service
	credentials       snapshot.SecretState
	credentialsSecret *corev1.Secret
	bootstrap         snapshot.SecretState
}

type cachedCA struct {
	tls TLS
	at  time.Time
}

// tlsFor is ReadTLS for one cluster, its bundle read at most once a
// minute while reads succeed (once for every cluster of the namespace and
// topology that share it, when the observer shares reads).
func (o *Observer) tlsFor(ctx context.Context, api SiteAPI, site topology.Site, policy topology.PostgresTLS, cluster, ns string) (TLS, error) {
	if key := sharedKey(site, "CA bundle in "+ns+": "+caSourceKey(policy)); o.Shared != nil && key != "" {
		v, err := o.Shared.read(ctx, key, flavorCheckEvery, func() (any, error) { return ReadTLS(ctx, api, policy, cluster, ns) })
		t, _ := v.(TLS)
		return t, err
	}
	key := site.Name + "/" + ns + "/" + cluster
	o.downMu.Lock()
	c, ok := o.cas[key]
	o.downMu.Unlock()
	if ok && time.Since(c.at) < flavorCheckEvery {
		return c.tls, nil
	}
	t, err := ReadTLS(ctx, api, policy, cluster, ns)
	if err != nil {
		return t, err
	}
	o.downMu.Lock()
	defer o.downMu.Unlock()
	if o.cas == nil {
		o.cas = map[string]cachedCA{}
	}
	o.cas[key] = cachedCA{tls: t, at: time.Now()}
	return t, nil
}

// flavorCheckEvery is how long a site's operator check holds.
const flavorCheckEvery = time.Minute

// checkFlavor checks a site's operator, at most once a minute while it
// passes.
func (o *Observer) checkFlavor(ctx context.Context, api SiteAPI, site topology.Site) string {
	if key := sharedKey(site, "operator check of flavor "+o.Flavor); o.Shared != nil && key != "" {
		_, err := o.Shared.read(ctx, key, flavorCheckEvery, func() (any, error) {
			if why := api.CheckFlavor(ctx); why != "" {
				return nil, errors.New(why)
			}
			return nil, nil
		})
		if err != nil {
			return err.Error()
		}
		return ""
	}
	return o.checkFlavorOwn(ctx, api, site.Name)
}

func (o *Observer) checkFlavorOwn(ctx context.Context, api SiteAPI, site string) string {
	o.downMu.Lock()
	at, ok := o.flavorOK[site]
	o.downMu.Unlock()
	if ok && time.Since(at) < flavorCheckEvery {
		return ""
	}
	why := api.CheckFlavor(ctx)
	o.downMu.Lock()
	defer o.downMu.Unlock()
	if o.flavorOK == nil {
		o.flavorOK = map[string]time.Time{}
	}
	if why == "" {
		o.flavorOK[site] = time.Now()
	} else {
		delete(o.flavorOK, site)
	}
	return why
}

// downSite is a site that did not answer, and when.
type downSite struct {
	at  time.Time
	err string
}

// recentlyDown returns the error of a site that failed within DownFor.
func (o *Observer) recentlyDown(site string) (string, bool) {
	o.downMu.Lock()
	defer o.downMu.Unlock()
	d, ok := o.down[site]
	if !ok || o.DownFor <= 0 || time.Since(d.at) > o.DownFor {
		return "", false
	}
	return fmt.Sprintf("%s (not retried since %s)", d.err, d.at.UTC().Format("15:04:05")), true
}

func (o *Observer) remember(site string, st snapshot.SiteState) {
	if o.DownFor <= 0 {
		return
	}
	o.downMu.Lock()
	defer o.downMu.Unlock()
	if st.Reachable {
		delete(o.down, site)
		return
	}
	if o.down == nil {
		o.down = map[string]downSite{}
	}
	if _, ok := o.down[site]; !ok {
		o.down[site] = downSite{at: time.Now(), err: st.Error}
	}
}

// Observe takes a snapshot of every site of the desired state, in parallel.
func (o *Observer) Observe(ctx context.Context, d *topology.Desired) *snapshot.Snapshot {
	return o.observe(ctx, d, lookFull)
}

// ObserveListed is Observe for a first look, the one a plan starts from:
// where the site can list, objects are read from one list per kind and
// namespace that the first looks of this process's other topologies share
// for listEvery (with Shared set). Looks after a run's lock or writes use
// Observe, which reads each object afresh.
func (o *Observer) ObserveListed(ctx context.Context, d *topology.Desired) *snapshot.Snapshot {
	return o.observe(ctx, d, lookListed)
}

// lookKind is what a look reads.
type lookKind int

const (
	lookFull    lookKind = iota // every object, each read afresh
	lookFocused                 // the clusters a wait polls
	lookListed                  // every object, from shared lists where the site can list
)

// ObserveClusters observes only the named clusters of d, for a wait that
// polls them: each one's object and database, its Service and login read
// again only when its database did not answer the last time, the node
// addresses of the last full look; no Lease, orphans or operator check.
// Its snapshot holds those clusters and their sites alone.
func (o *Observer) ObserveClusters(ctx context.Context, d *topology.Desired, names []string) *snapshot.Snapshot {
	only := *d
	only.Clusters, only.EmptySites = nil, nil
	for _, c := range d.Clusters {
		if slices.Contains(names, c.Name) {
			only.Clusters = append(only.Clusters, c)
		}
	}
	return o.observe(ctx, &only, lookFocused)
}

func (o *Observer) observe(ctx context.Context, d *topology.Desired, look lookKind) *snapshot.Snapshot {
	timeout := o.SiteTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	sites := d.Sites()
	snap := &snapshot.Snapshot{Topology: d.Name, Sites: make([]snapshot.SiteState, len(sites))}
	perSite := make([][]snapshot.ClusterState, len(sites))
	orphans := make([][]snapshot.OrphanCluster, len(sites))
	runs := make([]func(), len(sites))
	for i, site := range sites {
		runs[i] = func() {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			snap.Sites[i], perSite[i], orphans[i] = o.observeSite(sctx, d, site, look)
			o.remember(site.Name, snap.Sites[i])
		}
	}
	run := o.Run
	if run == nil {
		run = allAtOnce
	}
	run(runs)
	byName := map[string]snapshot.ClusterState{}
	for i := range sites {
		for _, c := range perSite[i] {
			byName[c.Name] = c
		}
		snap.Orphans = append(snap.Orphans, orphans[i]...)
	}
	for _, c := range d.Clusters {
		snap.Clusters = append(snap.Clusters, byName[c.Name])
	}
	sort.Slice(snap.Orphans, func(i, j int) bool { return snap.Orphans[i].Name < snap.Orphans[j].Name })
	return snap
}

func allAtOnce(fns []func()) {
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Go(fn)
	}
	wg.Wait()
}

// observeSite reads a site in two rounds, so a distant site costs about
// three round trips whatever it holds: every Kubernetes read at once (nodes,
// the Lease, orphans, and each cluster's CR, Secrets and Service), then the
// database probes, which need the Service, the nodes and the credentials.
func (o *Observer) observeSite(ctx context.Context, d *topology.Desired, site topology.Site, look lookKind) (snapshot.SiteState, []snapshot.ClusterState, []snapshot.OrphanCluster) {
	focused := look == lookFocused
	st := snapshot.SiteState{Name: site.Name, Kind: site.Kind, Context: site.Context}
	var clusters []snapshot.ClusterState
	for _, c := range d.Clusters {
		if c.Site.Name == site.Name {
			clusters = append(clusters, snapshot.ClusterState{Name: c.Name, Site: site.Name, Namespace: c.Namespace, SlotName: o.Names.SlotName(c.Name),
				Credentials:     snapshot.SecretState{Name: o.Names.CredentialsSecret(c.Name)},
				BootstrapSecret: snapshot.SecretState{Name: cmp.Or(d.BootstrapSecret, o.Names.BootstrapSecret(d.Name))}})
		}
	}
	if why, down := o.recentlyDown(site.Name); down {
		st.Error = why
		return st, clusters, nil
	}
	api, err := o.Connect(site)
	if err != nil {
		st.Error = err.Error()
		return st, clusters, nil
	}
	if lister, ok := api.(NamespaceLister); ok && look == lookListed && o.Shared != nil && sharedKey(site, "") != "" {
		api = listedSite{SiteAPI: api, lister: lister, shared: o.Shared, site: site}
	}
	var (
		wg       sync.WaitGroup
		nodes    []corev1.Node
		nodesErr error
		lease    *snapshot.LeaseInfo
		leaseErr error
		drills   []snapshot.DrillRecord
		drillErr error
		orphans  []snapshot.OrphanCluster
		orphErr  error
		reads    = make([]clusterReads, len(clusters))
	)
	knownIPs, haveIPs := o.knownNodes(site.Name)
	if !focused || !haveIPs {
		wg.Go(func() { nodes, nodesErr = o.listNodes(ctx, api, site) })
	}
	if !focused {
		wg.Go(func() { lease, leaseErr = o.lease(ctx, api, d, site) })
		wg.Go(func() { drills, drillErr = o.drills(ctx, api, d, site) })
		wg.Go(func() { st.Unsupported = o.checkFlavor(ctx, api, site) })
		wg.Go(func() { orphans, orphErr = o.orphans(ctx, api, d, site) })
	}
	for i, c := range clusters {
		if focused {
			reads[i].known = o.knownOf(site.Name, c.Namespace, c.Name)
		}
		reads[i].start(ctx, &wg, api, o.digestKey(), c, o.Names.MasterService(c.Name), site.Patroni(), func() (TLS, error) { return o.tlsFor(ctx, api, site, d.TLS, c.Name, c.Namespace) }, o.ObserverSecret)
	}
	wg.Wait()
	if nodesErr == nil && (nodes != nil || !haveIPs) {
		knownIPs = nodeIPs(nodes)
		o.rememberNodes(site.Name, knownIPs)
	}
	if nodesErr != nil {
		// The site is named by whoever shows the error (a plan's "site
		// west unreachable: ..."); the error names the context.
		st.Error = fmt.Sprintf("context %s: %v", site.Context, nodesErr)
		if site.Patroni() {
			st.Error = nodesErr.Error()
		}
		return st, clusters, nil
	}
	st.Reachable, st.NodeIPs, st.Lease, st.Drills = true, knownIPs, lease, drills
	for _, err := range []error{leaseErr, orphErr, drillErr} {
		if err != nil {
			st.ReadErrors = append(st.ReadErrors, fmt.Sprintf("context %s: %v", site.Context, err))
		}
	}
	for i := range clusters {
		wg.Go(func() {
			o.observeCluster(ctx, d, &st, &clusters[i], &reads[i])
			o.rememberReads(site.Name, &clusters[i], &reads[i])
		})
	}
	wg.Wait()
	return st, clusters, orphans
}

func (o *Observer) knownNodes(site string) ([]string, bool) {
	o.downMu.Lock()
	defer o.downMu.Unlock()
	ips, ok := o.nodes[site]
	return ips, ok
}

func (o *Observer) rememberNodes(site string, ips []string) {
	o.downMu.Lock()
	defer o.downMu.Unlock()
	if o.nodes == nil {
		o.nodes = map[string][]string{}
	}
	o.nodes[site] = ips
}

func (o *Observer) knownOf(site, ns, name string) *knownReads {
	o.downMu.Lock()
	defer o.downMu.Unlock()
	k, ok := o.known[site+"/"+ns+"/"+name]
	if !ok {
		return nil
	}
	return &k
}

// rememberReads keeps a cluster's Service and login while its database
// answers with them, and forgets them as soon as it does not (a Service
// made anew, a password changed): the next poll reads them again.
func (o *Observer) rememberReads(site string, c *snapshot.ClusterState, r *clusterReads) {
	key := site + "/" + c.Namespace + "/" + c.Name
	o.downMu.Lock()
	defer o.downMu.Unlock()
	if c.PG == nil || r.svc == nil || r.credentialsSecret == nil || r.observer != "" {
		delete(o.known, key)
		return
	}
	if o.known == nil {
		o.known = map[string]knownReads{}
	}
	o.known[key] = knownReads{svc: r.svc, credentials: r.credentials, credentialsSecret: r.credentialsSecret, bootstrap: r.bootstrap}
}

// lease reads the topology's lock in this site, if the site holds one.
func (o *Observer) lease(ctx context.Context, api SiteAPI, d *topology.Desired, site topology.Site) (*snapshot.LeaseInfo, error) {
	for _, l := range d.LockSites() {
		if l.Site.Name != site.Name {
			continue
		}
		lease, err := api.GetLease(ctx, l.Namespace, d.LeaseName())
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("get Lease %s/%s: %w", l.Namespace, d.LeaseName(), err)
		}
		if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
			return nil, nil
		}
		info := &snapshot.LeaseInfo{Holder: *lease.Spec.HolderIdentity}
		if lease.Spec.RenewTime != nil {
			info.RenewedAt = lease.Spec.RenewTime.UTC().Format(time.RFC3339)
		}
		if lease.Spec.LeaseDurationSeconds != nil {
			info.Seconds = int(*lease.Spec.LeaseDurationSeconds)
		}
		return info, nil
	}
	return nil, nil
}

// drills reads the DR drills the site keeps for the topology, if it is
// one of its lock sites.
func (o *Observer) drills(ctx context.Context, api SiteAPI, d *topology.Desired, site topology.Site) ([]snapshot.DrillRecord, error) {
	for _, l := range d.LockSites() {
		if l.Site.Name != site.Name {
			continue
		}
		cm, err := api.GetConfigMap(ctx, l.Namespace, d.DrillsConfigMap())
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get ConfigMap %s/%s: %w", l.Namespace, d.DrillsConfigMap(), err)
		}
		var out []snapshot.DrillRecord
		if raw := cm.Data[topology.DrillsKey]; raw != "" {
			if err := json.Unmarshal([]byte(raw), &out); err != nil {
				return nil, fmt.Errorf("ConfigMap %s/%s: %s: %w", l.Namespace, d.DrillsConfigMap(), topology.DrillsKey, err)
			}
		}
		return out, nil
	}
	return nil, nil
}

// clusterReads is what one cluster's Kubernetes objects read. The
// credentials Secret is kept for the probe only, never in the snapshot.
type clusterReads struct {
	obj               *snapshot.Object
	objErr            error
	svc               *corev1.Service
	svcErr            error
	credentials       snapshot.SecretState
	credentialsSecret *corev1.Secret
	bootstrap         snapshot.SecretState
	// secretErrs are Secret reads that failed other than by absence.
	secretErrs [2]error
	// tls is how the probe checks the server; tlsErr a CA bundle that
	// could not be read.
	tls    TLS
	tlsErr error
	// known are reads a poll takes from the last look instead (nil: read
	// everything).
	known *knownReads
	// noService: the cluster is reached at the file's endpoint (Patroni).
	noService bool
	// observer names the Secret credentialsSecret was read from when the
	// probe signs in as an observer.
	observer string
}

// start reads the cluster's object, both Secrets and the Service, each on
// its own. A Patroni cluster has no Service: its endpoint is the file's.
func (r *clusterReads) start(ctx context.Context, wg *sync.WaitGroup, api SiteAPI, key []byte, c snapshot.ClusterState, service string, patroni bool, readTLS func() (TLS, error), observer string) {
	ns := c.Namespace
	wg.Go(func() { r.obj, r.objErr = api.ReadCluster(ctx, ns, c.Name) })
	wg.Go(func() { r.tls, r.tlsErr = readTLS() })
	if observer != "" && !patroni {
		r.credentials = snapshot.SecretState{Name: c.Credentials.Name, Unread: true}
		r.bootstrap = snapshot.SecretState{Name: c.BootstrapSecret.Name, Unread: true}
		r.observer = observer
		wg.Go(func() {
			r.credentialsSecret, r.secretErrs[0] = api.GetSecret(ctx, ns, observer)
			if r.secretErrs[0] != nil {
				r.secretErrs[0] = fmt.Errorf("get observer Secret %s/%s: %w", ns, observer, r.secretErrs[0])
			}
		})
		wg.Go(func() { r.svc, r.svcErr = api.GetService(ctx, ns, service) })
		return
	}
	if k := r.known; k != nil {
		r.credentials, r.credentialsSecret, r.bootstrap, r.svc = k.credentials, k.credentialsSecret, k.bootstrap, k.svc
		r.noService = patroni
		return
	}
	wg.Go(func() {
		r.credentials, r.credentialsSecret, r.secretErrs[0] = secretState(ctx, api, key, ns, c.Credentials.Name)
	})
	if patroni {
		r.noService = true
		return
	}
	wg.Go(func() { r.bootstrap, _, r.secretErrs[1] = secretState(ctx, api, key, ns, c.BootstrapSecret.Name) })
	wg.Go(func() { r.svc, r.svcErr = api.GetService(ctx, ns, service) })
}

// observeCluster fills a cluster's state from its reads and probes its
// database through the resolved endpoint.
func (o *Observer) observeCluster(ctx context.Context, d *topology.Desired, site *snapshot.SiteState, c *snapshot.ClusterState, r *clusterReads) {
	if r.objErr != nil {
		c.Error = fmt.Sprintf("read CR: %v", r.objErr)
		return
	}
	c.Exists, c.Object = r.obj != nil, r.obj
	c.Credentials, c.BootstrapSecret = r.credentials, r.bootstrap
	// A Secret that could not be read is not absent: planned as absent, it
	// would be created again, or the database taken for unreachable.
	var denied []string
	for _, err := range r.secretErrs {
		if err != nil {
			denied = append(denied, err.Error())
		}
	}
	if len(denied) > 0 {
		c.Error = fmt.Sprintf("context %s: %s", site.Context, strings.Join(denied, "; "))
		return
	}
	if !c.Exists {
		return
	}
	desired, _ := d.Cluster(c.Name)
	switch {
	case r.noService:
		c.Endpoint = resolveEndpoint(nil, nil, desired.Endpoint, 0)
	case r.svcErr != nil:
		if !apierrors.IsNotFound(r.svcErr) {
			c.Error = fmt.Sprintf("read Service: %v", r.svcErr)
		}
		return
	default:
		c.Service = serviceInfo(r.svc)
		c.Endpoint = resolveEndpoint(c.Service, site.NodeIPs, desired.Endpoint, o.Names.PostgresPort())
	}
	if c.Endpoint == nil {
		c.PGError = "no endpoint yet (the Service has no address)"
		return
	}
	creds := r.credentialsSecret
	if creds == nil {
		c.PGError = fmt.Sprintf("credentials Secret %s not found", c.Credentials.Name)
		return
	}
	user, password := LoginFrom(o.Names, creds)
	if r.observer != "" && (user == "" || password == "") {
		c.Error = fmt.Sprintf("observer Secret %s/%s has no username or password", c.Namespace, r.observer)
		return
	}
	if r.tlsErr != nil {
		// Without the CA the server cannot prove itself, and pgtopo
		// signs in to no server that has not: what its database is
		// cannot be told, which is no reason to plan anything.
		if apierrors.IsNotFound(r.tlsErr) {
			c.Error = fmt.Sprintf("not probed: %v (spec.postgres.tls.ca names it; create it, or change the source)", r.tlsErr)
		} else {
			c.Error = fmt.Sprintf("context %s: %v", site.Context, r.tlsErr)
		}
		return
	}
	pg, err := o.Prober.Probe(ctx, *c.Endpoint, Login{User: user, Password: password, TLS: r.tls})
	var unproven *TLSError
	if errors.As(err, &unproven) {
		// A server that does not prove itself may not be the cluster's:
		// what it says, or that it says nothing, is no fact to plan on.
		// The bundle is read afresh next time: it may have been renewed.
		c.Error = err.Error()
		o.downMu.Lock()
		delete(o.cas, site.Name+"/"+c.Namespace+"/"+c.Name)
		o.downMu.Unlock()
		return
	}
	if err != nil {
		var auth *AuthError
		if errors.As(err, &auth) && r.observer != "" {
			// Not the cluster's credentials that fail: the observer's.
			c.Error = fmt.Sprintf("observer Secret %s/%s: %v", c.Namespace, r.observer, err)
			return
		}
		c.PGError, c.AuthFailed = err.Error(), errors.As(err, &auth)
		return
	}
	c.PG = pg
}

func (o *Observer) orphans(ctx context.Context, api SiteAPI, d *topology.Desired, site topology.Site) ([]snapshot.OrphanCluster, error) {
	namespaces := map[string]bool{}
	for _, c := range d.Clusters {
		if c.Site.Name == site.Name {
			namespaces[c.Namespace] = true
		}
	}
	if len(namespaces) == 0 {
		// A site the file keeps but no cluster of it is in: its objects in
		// the namespaces the topology uses elsewhere, which its RBAC
		// grants (a list in every namespace would need a ClusterRole).
		for _, c := range d.Clusters {
			namespaces[c.Namespace] = true
		}
	}
	var out []snapshot.OrphanCluster
	for ns := range namespaces {
		names, err := api.ListClusters(ctx, ns, d.Name)
		if err != nil {
			return nil, fmt.Errorf("list the topology's cluster objects in namespace %q (to find those the file no longer lists): %w", ns, err)
		}
		for _, name := range names {
			at := ns
			if ns == "" {
				at, name, _ = strings.Cut(name, "/")
			}
			if dc, ok := d.Cluster(name); !ok || dc.Site.Name != site.Name || dc.Namespace != at {
				orphan := snapshot.OrphanCluster{Name: name, Site: site.Name, Namespace: at, SlotName: o.Names.SlotName(name)}
				obj, err := api.ReadCluster(ctx, at, name)
				if err != nil {
					return nil, fmt.Errorf("read cluster object %s/%s: %w", at, name, err)
				}
				orphan.Object = obj // nil: gone since the list; the deletion policy will not touch it
				out = append(out, orphan)
			}
		}
	}
	return out, nil
}

// secretState reads a Secret once: its keyed digest for the snapshot, and the
// object for the caller that needs its credentials (never stored).
func secretState(ctx context.Context, api SiteAPI, key []byte, ns, name string) (snapshot.SecretState, *corev1.Secret, error) {
	s, err := api.GetSecret(ctx, ns, name)
	if apierrors.IsNotFound(err) {
		return snapshot.SecretState{Name: name}, nil, nil
	}
	if err != nil {
		return snapshot.SecretState{Name: name}, nil, fmt.Errorf("get Secret %s/%s: %w", ns, name, err)
	}
	return snapshot.SecretState{Name: name, Exists: true, KeyedDigest: keyedDigest(key, s.Data), ResourceVersion: s.ResourceVersion}, s, nil
}

// digestKey keys the digests of Secrets' data: drawn at random once per
// observer and never shown, so a digest compares two Secrets within a run
// and says nothing to anyone who sees it.
func (o *Observer) digestKey() []byte {
	o.keyOnce.Do(func() {
		o.key = make([]byte, 32)
		if _, err := rand.Read(o.key); err != nil {
			panic("crypto/rand: " + err.Error()) // the system has no randomness: nothing is safe
		}
	})
	return o.key
}

// keyedDigest is an HMAC of a Secret's data under key.
func keyedDigest(key []byte, data map[string][]byte) string {
	h := hmac.New(sha256.New, key)
	for _, k := range slices.Sorted(maps.Keys(data)) {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(data[k])
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func serviceInfo(svc *corev1.Service) *snapshot.Service {
	s := &snapshot.Service{Type: string(svc.Spec.Type), ClusterIP: svc.Spec.ClusterIP}
	if s.Type == "" {
		s.Type = string(corev1.ServiceTypeClusterIP)
	}
	if len(svc.Spec.Ports) > 0 {
		s.NodePort = int(svc.Spec.Ports[0].NodePort)
	}
	if ing := svc.Status.LoadBalancer.Ingress; len(ing) > 0 {
		s.Ingress = ing[0].IP
		if s.Ingress == "" {
			s.Ingress = ing[0].Hostname
		}
	}
	return s
}

// nodeIPs lists each node's address a peer would use: the ExternalIP when
// there is one, else the InternalIP.
func nodeIPs(nodes []corev1.Node) []string {
	var out []string
	for _, n := range nodes {
		var internal, external string
		for _, a := range n.Status.Addresses {
			switch a.Type {
			case corev1.NodeInternalIP:
				internal = a.Address
			case corev1.NodeExternalIP:
				external = a.Address
			}
		}
		if external != "" {
			out = append(out, external)
		} else if internal != "" {
			out = append(out, internal)
		}
	}
	sort.Strings(out)
	return out
}

// resolveEndpoint follows the operator's Service types: ClusterIP → clusterIP:5432;
// NodePort → a node's address and the nodePort; LoadBalancer → the ingress
// and 5432. An override in the topology wins.
func resolveEndpoint(s *snapshot.Service, nodeIPs []string, override *topology.Endpoint, port int) *snapshot.Endpoint {
	if override != nil {
		return &snapshot.Endpoint{Host: override.Host, Port: override.Port}
	}
	if s == nil {
		return nil
	}
	switch s.Type {
	case string(corev1.ServiceTypeNodePort):
		if len(nodeIPs) == 0 || s.NodePort == 0 {
			return nil
		}
		return &snapshot.Endpoint{Host: nodeIPs[0], Port: s.NodePort}
	case string(corev1.ServiceTypeLoadBalancer):
		if s.Ingress == "" {
			return nil
		}
		return &snapshot.Endpoint{Host: s.Ingress, Port: port}
	default:
		if s.ClusterIP == "" || s.ClusterIP == "None" {
			return nil
		}
		return &snapshot.Endpoint{Host: s.ClusterIP, Port: port}
	}
}
