// Package flavor is the registry of operator flavors: spec.flavor names
// one, and Lookup returns what the rest of pgtopo needs of it. It is the
// only package outside flavor/ that knows a flavor's implementation; live
// and apply see a flavor only through the interfaces they define.
package flavor

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/flavor/patroni"
	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Operator is one flavor of an operator in Kubernetes: how its cluster
// object looks both ways, and the names of what it makes.
type Operator struct {
	Name      string
	Resource  schema.GroupVersionResource
	Parse     func(*unstructured.Unstructured) snapshot.Object
	BuildSpec func(ns, name string, s snapshot.Spec) *unstructured.Unstructured
	// BuildMarks writes pgtopo's marks alone, under their own field manager.
	BuildMarks    func(ns, name string, m snapshot.Marks) *unstructured.Unstructured
	TopologyLabel string
	Names         Names
	// CRD names the resource's CustomResourceDefinition; CheckCRD says
	// why an installed one cannot take what pgtopo writes ("" when it can).
	CRD      string
	CheckCRD func(*unstructured.Unstructured) string
	// Catalogue is the operator's list of a primary's standbys in the
	// primary's own database, from which it keeps their slots.
	Catalogue Catalogue
}

// Catalogue is an operator's list of a primary's standbys in the
// primary's database: live reads it, apply writes it, each through its own
// interface; SQL runs through exec, a session on the primary.
type Catalogue interface {
	PresentSQL() string
	RowsSQL() string
	Register(ctx context.Context, exec func(context.Context, string, ...any) error, cluster, host string, port int, slot string) error
	Forget(ctx context.Context, exec func(context.Context, string, ...any) error, cluster string) error
	FillExternalIP(ctx context.Context, exec func(context.Context, string, ...any) error, cluster, host string) error
}

// Names are the operator's names of a cluster's companions.
type Names struct {
	credentials func(cluster string) string
	bootstrap   func(topology string) string
	service     func(cluster string) string
	slot        func(cluster string) string
	port        int
	// userKey and passwordKey are the credentials Secret's keys.
	userKey, passwordKey string
}

// CredentialsSecret names a cluster's admin credentials Secret.
func (n Names) CredentialsSecret(cluster string) string { return n.credentials(cluster) }

// BootstrapSecret names the Secret a standby bootstraps with.
func (n Names) BootstrapSecret(topology string) string { return n.bootstrap(topology) }

// MasterService names the Service in front of a cluster's leader.
func (n Names) MasterService(cluster string) string { return n.service(cluster) }

// SlotName names the physical slot a standby streams through on its primary.
func (n Names) SlotName(cluster string) string { return n.slot(cluster) }

// CredentialKeys are the keys of the admin login in a credentials Secret.
func (n Names) CredentialKeys() (user, password string) { return n.userKey, n.passwordKey }

// PostgresPort is the port of the cluster's Services.
func (n Names) PostgresPort() int { return n.port }

var registry = map[string]*Operator{
	alauda.Name: {
		Name: alauda.Name, Resource: alauda.Resource, Parse: alauda.Parse,
		BuildSpec: alauda.BuildSpec, BuildMarks: alauda.BuildMarks, TopologyLabel: alauda.LabelTopology,
		Names: Names{credentials: alauda.CredentialsSecret, bootstrap: alauda.BootstrapSecret, service: alauda.MasterService, slot: alauda.SlotName, port: alauda.PostgresPort,
			userKey: alauda.CredentialsUserKey, passwordKey: alauda.CredentialsPasswordKey},
		CRD: alauda.CRD, CheckCRD: alauda.CheckCRD, Catalogue: alauda.Catalogue{},
	},
}

// Lookup returns the flavor spec.flavor names ("" is the default, alauda).
func Lookup(name string) (*Operator, error) {
	if name == "" {
		name = alauda.Name
	}
	op, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("flavor %q is not known (known: %s)", name, strings.Join(slices.Sorted(maps.Keys(registry)), ", "))
	}
	return op, nil
}

// Site is one site's Kubernetes API seen through a flavor: it reads and
// writes cluster objects as snapshot values and passes everything else
// (Services, Nodes, Secrets, Leases) through.
type Site struct {
	*kube.Site
	Op *Operator
}

// PostgresCA reads the CA bundle src names in the cluster's namespace;
// with no source, nil: the system's roots. A missing object or key is an
// error (its absence is what the caller reports), as is a denied read.
func (s Site) PostgresCA(ctx context.Context, _, ns string, src *topology.CASource) ([]byte, string, error) {
	if src == nil {
		return nil, "", nil
	}
	kind, name, key := src.Object()
	from := fmt.Sprintf("%s %s/%s (key %s)", kind, ns, name, key)
	var data []byte
	var ok bool
	if src.ConfigMap != nil {
		cm, err := s.GetConfigMap(ctx, ns, name)
		if err != nil {
			return nil, from, fmt.Errorf("get %s: %w", from, err)
		}
		var v string
		v, ok = cm.Data[key]
		data = []byte(v)
	} else {
		sec, err := s.GetSecret(ctx, ns, name)
		if err != nil {
			return nil, from, fmt.Errorf("get %s: %w", from, err)
		}
		data, ok = sec.Data[key]
	}
	if !ok || len(data) == 0 {
		return nil, from, fmt.Errorf("%s: no key %s (the CA bundle; spec.postgres.tls.ca names the key)", from, key)
	}
	return data, from, nil
}

// RestartPending is the operator's: it restarts the members of a cluster
// whose settings wait for a restart once it has synced them (Zalando's
// operator does after a configuration sync, replicas first), and pgtopo
// waits for that. An operator that never does shows in that wait's end.
func (s Site) RestartPending(context.Context, string, string) error { return nil }

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// CheckFlavor says why the site's operator cannot take what pgtopo writes
// ("" when it can, or when the CRD cannot be read: RBAC without the grant
// leaves the API server's own answer to say it at the first write).
func (s Site) CheckFlavor(ctx context.Context) string {
	if s.Op.CheckCRD == nil {
		return ""
	}
	crd, err := s.GetObject(ctx, crdResource, "", s.Op.CRD)
	if apierrors.IsNotFound(err) {
		return fmt.Sprintf("the %s CRD is not installed: no operator of the %s flavor runs in this site", s.Op.CRD, s.Op.Name)
	}
	if err != nil {
		return ""
	}
	return s.Op.CheckCRD(crd)
}

// ReadCluster reads a cluster's object; nil without error when absent.
func (s Site) ReadCluster(ctx context.Context, ns, name string) (*snapshot.Object, error) {
	u, err := s.GetObject(ctx, s.Op.Resource, ns, name)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	o := s.Op.Parse(u)
	return &o, nil
}

// ListClusters names the cluster objects in ns labelled for topology;
// listed in every namespace (ns empty), each is namespace/name.
func (s Site) ListClusters(ctx context.Context, ns, topology string) ([]string, error) {
	items, err := s.ListObjects(ctx, s.Op.Resource, ns, s.Op.TopologyLabel+"="+topology)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if ns == "" {
			out = append(out, it.GetNamespace()+"/"+it.GetName())
			continue
		}
		out = append(out, it.GetName())
	}
	return out, nil
}

// ListClusterObjects reads every cluster object of ns in one list, by
// name: what a look's reads of single objects are served from.
func (s Site) ListClusterObjects(ctx context.Context, ns string) (map[string]snapshot.Object, error) {
	items, err := s.ListObjects(ctx, s.Op.Resource, ns, "")
	if err != nil {
		return nil, err
	}
	out := make(map[string]snapshot.Object, len(items))
	for i := range items {
		out[items[i].GetName()] = s.Op.Parse(&items[i])
	}
	return out, nil
}

// NamedObject is a cluster object with where it is.
type NamedObject struct {
	Namespace, Name string
	Object          snapshot.Object
}

// AllClusters reads every cluster object in ns (every namespace when ns is
// empty), labelled or not, but for isolated drills' clones: what pgtopo
// import pairs.
func (s Site) AllClusters(ctx context.Context, ns string) ([]NamedObject, error) {
	items, err := s.ListObjects(ctx, s.Op.Resource, ns, "")
	if err != nil {
		return nil, err
	}
	out := make([]NamedObject, 0, len(items))
	for i := range items {
		if _, clone := items[i].GetLabels()[snapshot.DrillCloneLabel]; clone {
			continue // a drill's, gone when it ends
		}
		out = append(out, NamedObject{Namespace: items[i].GetNamespace(), Name: items[i].GetName(), Object: s.Op.Parse(&items[i])})
	}
	return out, nil
}

// WriteSpec writes the fields pgtopo owns of a cluster's object.
func (s Site) WriteSpec(ctx context.Context, ns, name string, spec snapshot.Spec) error {
	return s.ApplyObject(ctx, s.Op.Resource, kube.FieldManager, s.Op.BuildSpec(ns, name, spec))
}

// WriteMarks writes pgtopo's marks on a cluster's object.
func (s Site) WriteMarks(ctx context.Context, ns, name string, m snapshot.Marks) error {
	return s.ApplyObject(ctx, s.Op.Resource, kube.MarksFieldManager, s.Op.BuildMarks(ns, name, m))
}

// DeleteCluster removes a cluster's object; the operator removes its
// members and data.
func (s Site) DeleteCluster(ctx context.Context, ns, name string) error {
	return s.DeleteObject(ctx, s.Op.Resource, ns, name)
}

// PatroniCredentials are one Patroni cluster's credentials.
type PatroniCredentials = patroni.Credentials

// PatroniSite opens a patroni site of d: its clusters' REST clients with
// their credentials (creds says where each comes from, or what is missing).
// names are the topology's operator flavor's, so that a Patroni cluster's
// credentials answer to the same Secret name everywhere.
func PatroniSite(d *topology.Desired, site topology.Site, client *http.Client, creds func(cluster string) (PatroniCredentials, error), names Names) (*patroni.Site, error) {
	s := &patroni.Site{Name: site.Name, Clusters: map[string]patroni.Cluster{}, CredentialsSecret: names.CredentialsSecret}
	s.UserKey, s.PasswordKey = names.CredentialKeys()
	for _, c := range d.Clusters {
		if c.Site.Name != site.Name || c.Patroni == nil {
			continue
		}
		cr, err := creds(c.Name)
		if err != nil {
			return nil, fmt.Errorf("patroni site %s: %w", site.Name, err)
		}
		members := make([]snapshot.Endpoint, len(c.Patroni.Members))
		for i, m := range c.Patroni.Members {
			members[i] = snapshot.Endpoint{Host: m.Host, Port: m.Port}
		}
		s.Clusters[c.Name] = patroni.Cluster{Name: c.Name, Creds: cr,
			Client: &patroni.Client{HTTP: client, Members: members, TLS: c.Patroni.TLS, User: cr.RESTUser, Password: cr.RESTPassword}}
	}
	return s, nil
}

// EnsurePermanentSlot is the Patroni flavor's: an operator keeps its
// standbys' slots itself, from its catalogue.
func (s Site) EnsurePermanentSlot(_ context.Context, ns, name, slot string) error {
	return fmt.Errorf("%s/%s: the %s operator keeps its standbys' slots itself (from sys_operator.multi_cluster_info), not as permanent slots pgtopo writes", ns, name, s.Op.Name)
}

// DropPermanentSlot is the Patroni flavor's, as EnsurePermanentSlot.
func (s Site) DropPermanentSlot(_ context.Context, ns, name, slot string) error {
	return fmt.Errorf("%s/%s: the %s operator keeps no permanent slots pgtopo writes (slot %s)", ns, name, s.Op.Name, slot)
}
