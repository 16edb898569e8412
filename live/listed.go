package live

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// NamespaceLister reads a namespace's objects of one kind in one request.
// A site that offers it lets the first looks of many topologies (a
// fleet's diff, a reconcile cycle) share one list per kind and namespace
// instead of a read per object: the API requests of a look then grow
// with the sites and namespaces, not with the topologies.
type NamespaceLister interface {
	// ListClusterObjects returns every cluster object of ns by name.
	ListClusterObjects(ctx context.Context, ns string) (map[string]snapshot.Object, error)
	ListServices(ctx context.Context, ns string) ([]corev1.Service, error)
	ListSecrets(ctx context.Context, ns string) ([]corev1.Secret, error)
	ListConfigMaps(ctx context.Context, ns string) ([]corev1.ConfigMap, error)
	ListLeases(ctx context.Context, ns string) ([]coordinationv1.Lease, error)
}

// listEvery is how long a namespace's list serves the looks that share
// it: the looks a fleet takes at once. A list is no older than a slow
// look's reads, and never serves a look after this process wrote to the
// site (Shared.Forget): apply's looks after its lock read afresh.
const listEvery = 2 * time.Second

// listKeyPrefix starts the shared keys of lists, which Forget drops.
const listKeyPrefix = "list "

// listedSite answers a look's reads of objects by name from the shared
// lists of their namespace. A list the identity may not read (RBAC grants
// get and not list) falls back to reading each object, once per listEvery
// for the kind; any other failed list is the read's error, never absence.
type listedSite struct {
	SiteAPI
	lister NamespaceLister
	shared *Shared
	site   topology.Site
}

// listDenied marks a list the API server forbade: its reads go one by one.
type listDenied struct{}

// list returns the namespace's list of kind, read once for the looks that
// share it; ok is false when the list is denied.
func (l listedSite) list(ctx context.Context, kind, ns string, read func() (any, error)) (any, bool, error) {
	v, err := l.shared.read(ctx, sharedKey(l.site, listKeyPrefix+kind+" in namespace "+ns), listEvery, func() (any, error) {
		v, err := read()
		if apierrors.IsForbidden(err) {
			return listDenied{}, nil
		}
		return v, err
	})
	if err != nil {
		return nil, false, fmt.Errorf("list %s in namespace %s: %w", kind, ns, err)
	}
	if _, denied := v.(listDenied); denied {
		return nil, false, nil
	}
	return v, true, nil
}

func notFoundIn(resource, name string) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: resource}, name)
}

func (l listedSite) ReadCluster(ctx context.Context, ns, name string) (*snapshot.Object, error) {
	v, ok, err := l.list(ctx, "cluster objects", ns, func() (any, error) { return l.lister.ListClusterObjects(ctx, ns) })
	if err != nil || !ok {
		if err == nil {
			return l.SiteAPI.ReadCluster(ctx, ns, name)
		}
		return nil, err
	}
	o, found := v.(map[string]snapshot.Object)[name]
	if !found {
		return nil, nil
	}
	return &o, nil
}

// ListClusters names the objects of ns labelled for topology, from the
// same list as ReadCluster; in every namespace (ns empty) it asks the
// site.
func (l listedSite) ListClusters(ctx context.Context, ns, topology string) ([]string, error) {
	if ns == "" {
		return l.SiteAPI.ListClusters(ctx, ns, topology)
	}
	v, ok, err := l.list(ctx, "cluster objects", ns, func() (any, error) { return l.lister.ListClusterObjects(ctx, ns) })
	if err != nil || !ok {
		if err == nil {
			return l.SiteAPI.ListClusters(ctx, ns, topology)
		}
		return nil, err
	}
	var out []string
	for name, o := range v.(map[string]snapshot.Object) {
		if o.Spec.Topology == topology {
			out = append(out, name)
		}
	}
	return out, nil
}

func (l listedSite) GetService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	v, ok, err := l.list(ctx, "services", ns, func() (any, error) { return l.lister.ListServices(ctx, ns) })
	if err != nil || !ok {
		if err == nil {
			return l.SiteAPI.GetService(ctx, ns, name)
		}
		return nil, err
	}
	return named(v.([]corev1.Service), "services", name, func(s *corev1.Service) string { return s.Name })
}

func (l listedSite) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	v, ok, err := l.list(ctx, "secrets", ns, func() (any, error) { return l.lister.ListSecrets(ctx, ns) })
	if err != nil || !ok {
		if err == nil {
			return l.SiteAPI.GetSecret(ctx, ns, name)
		}
		return nil, err
	}
	return named(v.([]corev1.Secret), "secrets", name, func(s *corev1.Secret) string { return s.Name })
}

func (l listedSite) GetConfigMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error) {
	v, ok, err := l.list(ctx, "configmaps", ns, func() (any, error) { return l.lister.ListConfigMaps(ctx, ns) })
	if err != nil || !ok {
		if err == nil {
			return l.SiteAPI.GetConfigMap(ctx, ns, name)
		}
		return nil, err
	}
	return named(v.([]corev1.ConfigMap), "configmaps", name, func(c *corev1.ConfigMap) string { return c.Name })
}

func (l listedSite) GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error) {
	v, ok, err := l.list(ctx, "leases", ns, func() (any, error) { return l.lister.ListLeases(ctx, ns) })
	if err != nil || !ok {
		if err == nil {
			return l.SiteAPI.GetLease(ctx, ns, name)
		}
		return nil, err
	}
	return named(v.([]coordinationv1.Lease), "leases", name, func(l *coordinationv1.Lease) string { return l.Name })
}

// named finds name in a list and returns a copy of it (the list is shared
// by looks), or the API's NotFound.
func named[T any](items []T, resource, name string, nameOf func(*T) string) (*T, error) {
	for i := range items {
		if nameOf(&items[i]) == name {
			out := items[i]
			return &out, nil
		}
	}
	return nil, notFoundIn(resource, name)
}
