package live

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/topology"
)

// SiteAPI is what observing needs from one site's Kubernetes API.
type SiteAPI interface {
	GetPostgresql(ctx context.Context, ns, name string) (*unstructured.Unstructured, error)
	ListPostgresqls(ctx context.Context, ns, selector string) ([]unstructured.Unstructured, error)
	GetService(ctx context.Context, ns, name string) (*corev1.Service, error)
	ListNodes(ctx context.Context) ([]corev1.Node, error)
	GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error)
	GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error)
}

// Connector opens a site's API from its kubeconfig context.
type Connector func(context string) (SiteAPI, error)

// Prober reads PostgreSQL facts from a server.
type Prober interface {
	Probe(ctx context.Context, ep Endpoint, user, password string) (*PGState, error)
}

// Observer takes snapshots.
type Observer struct {
	Connect Connector
	Prober  Prober
	// SiteTimeout bounds each site's observation (default 10s).
	SiteTimeout time.Duration
	// Sequential observes one site after another; for benchmarks.
	Sequential bool
}

// LeaseName is the lock of a topology.
func LeaseName(topology string) string { return "pgtopo-" + topology }

// Observe takes a snapshot of every site of the desired state, in parallel.
func (o *Observer) Observe(ctx context.Context, d *topology.Desired) *Snapshot {
	timeout := o.SiteTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	sites := d.Sites()
	snap := &Snapshot{Topology: d.Name, Sites: make([]SiteState, len(sites))}
	perSite := make([][]ClusterState, len(sites))
	orphans := make([][]OrphanCluster, len(sites))
	var wg sync.WaitGroup
	for i, site := range sites {
		run := func() {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			snap.Sites[i], perSite[i], orphans[i] = o.observeSite(sctx, d, site)
		}
		if o.Sequential {
			run()
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); run() }()
	}
	wg.Wait()
	byName := map[string]ClusterState{}
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

// observeSite reads a site in two rounds, so a distant site costs about
// three round trips whatever it holds: every Kubernetes read at once (nodes,
// the Lease, orphans, and each cluster's CR, Secrets and Service), then the
// database probes, which need the Service, the nodes and the credentials.
func (o *Observer) observeSite(ctx context.Context, d *topology.Desired, site topology.Site) (SiteState, []ClusterState, []OrphanCluster) {
	st := SiteState{Name: site.Name, Context: site.Context}
	var clusters []ClusterState
	for _, c := range d.Clusters {
		if c.Site.Name == site.Name {
			clusters = append(clusters, ClusterState{Name: c.Name, Site: site.Name, Namespace: c.Namespace})
		}
	}
	api, err := o.Connect(site.Context)
	if err != nil {
		st.Error = err.Error()
		return st, clusters, nil
	}
	var (
		wg       sync.WaitGroup
		nodes    []corev1.Node
		nodesErr error
		lease    *LeaseInfo
		orphans  []OrphanCluster
		reads    = make([]clusterReads, len(clusters))
	)
	wg.Go(func() { nodes, nodesErr = api.ListNodes(ctx) })
	wg.Go(func() { lease = o.lease(ctx, api, d, site) })
	wg.Go(func() { orphans = o.orphans(ctx, api, d, site) })
	for i, c := range clusters {
		reads[i].start(ctx, &wg, api, c.Namespace, c.Name, alauda.BootstrapSecret(d.Name))
	}
	wg.Wait()
	if nodesErr != nil {
		st.Error = fmt.Sprintf("site %s (context %s) unreachable: %v", site.Name, site.Context, nodesErr)
		return st, clusters, nil
	}
	st.Reachable, st.NodeIPs, st.Lease = true, nodeIPs(nodes), lease
	for i := range clusters {
		wg.Go(func() { o.observeCluster(ctx, d, &st, &clusters[i], &reads[i]) })
	}
	wg.Wait()
	return st, clusters, orphans
}

// lease reads the topology's lock in this site, if the site holds one.
func (o *Observer) lease(ctx context.Context, api SiteAPI, d *topology.Desired, site topology.Site) *LeaseInfo {
	for _, l := range d.LockSites() {
		if l.Site.Name != site.Name {
			continue
		}
		lease, err := api.GetLease(ctx, l.Namespace, LeaseName(d.Name))
		if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
			return nil
		}
		info := &LeaseInfo{Holder: *lease.Spec.HolderIdentity}
		if lease.Spec.RenewTime != nil {
			info.RenewedAt = lease.Spec.RenewTime.UTC().Format(time.RFC3339)
		}
		if lease.Spec.LeaseDurationSeconds != nil {
			info.Seconds = int(*lease.Spec.LeaseDurationSeconds)
		}
		return info
	}
	return nil
}

// clusterReads is what one cluster's Kubernetes objects read. The
// credentials Secret is kept for the probe only, never in the snapshot.
type clusterReads struct {
	cr                *unstructured.Unstructured
	crErr             error
	svc               *corev1.Service
	svcErr            error
	credentials       SecretState
	credentialsSecret *corev1.Secret
	bootstrap         SecretState
}

// start reads the CR, both Secrets and the Service, each on its own.
func (r *clusterReads) start(ctx context.Context, wg *sync.WaitGroup, api SiteAPI, ns, name, bootstrap string) {
	wg.Go(func() { r.cr, r.crErr = api.GetPostgresql(ctx, ns, name) })
	wg.Go(func() { r.credentials, r.credentialsSecret = secretState(ctx, api, ns, alauda.CredentialsSecret(name)) })
	wg.Go(func() { r.bootstrap, _ = secretState(ctx, api, ns, bootstrap) })
	wg.Go(func() { r.svc, r.svcErr = api.GetService(ctx, ns, name) })
}

// observeCluster fills a cluster's state from its reads and probes its
// database through the resolved endpoint.
func (o *Observer) observeCluster(ctx context.Context, d *topology.Desired, site *SiteState, c *ClusterState, r *clusterReads) {
	switch {
	case apierrors.IsNotFound(r.crErr):
	case r.crErr != nil:
		c.Error = fmt.Sprintf("read CR: %v", r.crErr)
		return
	default:
		parsed := alauda.Parse(r.cr)
		c.Exists, c.CR = true, &parsed
	}
	c.Credentials, c.BootstrapSecret = r.credentials, r.bootstrap
	if !c.Exists {
		return
	}
	if r.svcErr != nil {
		if !apierrors.IsNotFound(r.svcErr) {
			c.Error = fmt.Sprintf("read Service: %v", r.svcErr)
		}
		return
	}
	c.Service = serviceInfo(r.svc)
	desired, _ := d.Cluster(c.Name)
	c.Endpoint = resolveEndpoint(c.Service, site.NodeIPs, desired.Endpoint)
	if c.Endpoint == nil {
		c.PGError = "no endpoint yet (the Service has no address)"
		return
	}
	creds := r.credentialsSecret
	if creds == nil {
		c.PGError = fmt.Sprintf("credentials Secret %s not found", alauda.CredentialsSecret(c.Name))
		return
	}
	pg, err := o.Prober.Probe(ctx, *c.Endpoint, string(creds.Data["username"]), string(creds.Data["password"]))
	if err != nil {
		c.PGError = err.Error()
		return
	}
	c.PG = pg
}

func (o *Observer) orphans(ctx context.Context, api SiteAPI, d *topology.Desired, site topology.Site) []OrphanCluster {
	namespaces := map[string]bool{}
	for _, c := range d.Clusters {
		if c.Site.Name == site.Name {
			namespaces[c.Namespace] = true
		}
	}
	var out []OrphanCluster
	for ns := range namespaces {
		items, err := api.ListPostgresqls(ctx, ns, alauda.LabelTopology+"="+d.Name)
		if err != nil {
			continue
		}
		for _, it := range items {
			if dc, ok := d.Cluster(it.GetName()); !ok || dc.Site.Name != site.Name || dc.Namespace != ns {
				out = append(out, OrphanCluster{Name: it.GetName(), Site: site.Name, Namespace: ns})
			}
		}
	}
	return out
}

// secretState reads a Secret once: its fingerprint for the snapshot, and the
// object for the caller that needs its credentials (never stored).
func secretState(ctx context.Context, api SiteAPI, ns, name string) (SecretState, *corev1.Secret) {
	s, err := api.GetSecret(ctx, ns, name)
	if err != nil {
		return SecretState{Name: name}, nil
	}
	return SecretState{Name: name, Exists: true, Hash: alauda.HashSecretData(s.Data)}, s
}

func serviceInfo(svc *corev1.Service) *Service {
	s := &Service{Type: string(svc.Spec.Type), ClusterIP: svc.Spec.ClusterIP}
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

// resolveEndpoint applies DESIGN.md section 3: ClusterIP → clusterIP:5432;
// NodePort → a node's address and the nodePort; LoadBalancer → the ingress
// and 5432. An override in the topology wins.
func resolveEndpoint(s *Service, nodeIPs []string, override *topology.Endpoint) *Endpoint {
	if override != nil {
		return &Endpoint{Host: override.Host, Port: override.Port}
	}
	switch s.Type {
	case string(corev1.ServiceTypeNodePort):
		if len(nodeIPs) == 0 || s.NodePort == 0 {
			return nil
		}
		return &Endpoint{Host: nodeIPs[0], Port: s.NodePort}
	case string(corev1.ServiceTypeLoadBalancer):
		if s.Ingress == "" {
			return nil
		}
		return &Endpoint{Host: s.Ingress, Port: alauda.PostgresPort}
	default:
		if s.ClusterIP == "" || s.ClusterIP == "None" {
			return nil
		}
		return &Endpoint{Host: s.ClusterIP, Port: alauda.PostgresPort}
	}
}
