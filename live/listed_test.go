package live

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// listingSite is countingSite that also lists, from the same objects: a
// namespace's cluster objects, Services, Secrets, ConfigMaps and Leases.
type listingSite struct {
	*countingSite
	// denied lists are forbidden; failing ones time out.
	denied, failing map[string]bool
	// objects are the cluster objects of every site; a site lists those
	// whose name ends with its own, and east the orphan too.
	objects map[string]snapshot.Object
	site    string
}

func (l *listingSite) mine() map[string]snapshot.Object {
	out := map[string]snapshot.Object{}
	for name, o := range l.objects {
		if strings.HasSuffix(name, "-"+l.site) || l.site == "east" && name == "old-orders-copy" {
			out[name] = o
		}
	}
	return out
}

func (l *listingSite) listed(kind string) error {
	l.count("list " + kind)
	switch {
	case l.denied[kind]:
		return forbidden(kind, "")
	case l.failing[kind]:
		return errors.New("etcdserver: request timed out")
	}
	return nil
}

func (l *listingSite) ListClusterObjects(_ context.Context, ns string) (map[string]snapshot.Object, error) {
	if err := l.listed("postgresqls"); err != nil {
		return nil, err
	}
	return l.mine(), nil
}

func (l *listingSite) ListServices(context.Context, string) ([]corev1.Service, error) {
	if err := l.listed("services"); err != nil {
		return nil, err
	}
	var out []corev1.Service
	for name := range l.mine() {
		out = append(out, corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{{NodePort: 31000}}}})
	}
	return out, nil
}

func (l *listingSite) ListSecrets(context.Context, string) ([]corev1.Secret, error) {
	if err := l.listed("secrets"); err != nil {
		return nil, err
	}
	var out []corev1.Secret
	for name := range l.mine() {
		for _, s := range []string{"postgres." + name + ".credentials.postgresql.acid.zalan.do", strings.TrimSuffix(strings.TrimSuffix(name, "-east"), "-west") + "-bootstrap"} {
			out = append(out, corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s}, Data: map[string][]byte{"username": []byte("postgres"), "password": []byte("s3cret-" + s)}})
		}
	}
	return out, nil
}

func (l *listingSite) ListConfigMaps(context.Context, string) ([]corev1.ConfigMap, error) {
	return nil, l.listed("configmaps")
}

func (l *listingSite) ListLeases(context.Context, string) ([]coordinationv1.Lease, error) {
	if err := l.listed("leases"); err != nil {
		return nil, err
	}
	holder := "ci-run-7"
	var out []coordinationv1.Lease
	for _, t := range []string{"orders", "billing"} {
		out = append(out, coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "pgtopo-" + t}, Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &metav1.MicroTime{}}})
	}
	return out, nil
}

// fleetOf is d and copies of it renamed: a fleet of topologies in the
// same sites and namespace.
func fleetOf(d *topology.Desired, names ...string) []*topology.Desired {
	out := []*topology.Desired{d}
	for _, n := range names {
		c := *d
		c.Name = n
		c.Clusters = nil
		for _, cl := range d.Clusters {
			cl.Name = strings.Replace(cl.Name, d.Name, n, 1)
			c.Clusters = append(c.Clusters, cl)
		}
		out = append(out, &c)
	}
	return out
}

// The first looks of a fleet read each kind once per site and namespace,
// shared by the topologies; the reads a look serves from a list are the
// ones it would make one by one (absent is absent, a denied list reads
// one by one, a failed list is an error); a write by this process makes
// the next look list again; a look that is not a first look reads each
// object afresh.
func TestListedLooksShareOneListPerKind(t *testing.T) {
	base := desired(t)
	fleet := fleetOf(base, "billing", "stock")
	objects := map[string]snapshot.Object{}
	for _, d := range fleet[:2] { // stock has no objects: absent
		for _, c := range d.Clusters {
			objects[c.Name] = snapshot.Object{Spec: snapshot.Spec{Instances: 2, Topology: d.Name}}
		}
	}
	objects["old-orders-copy"] = snapshot.Object{Spec: snapshot.Spec{Topology: "orders"}} // an orphan of orders

	type site = map[string]*listingSite
	newObserver := func(denied, failing map[string]bool) (*Observer, site) {
		sites := site{}
		o := &Observer{Prober: &fakeProber{}, Names: alaudaNames(t), Shared: &Shared{}, Connect: func(s topology.Site) (SiteAPI, error) {
			if sites[s.Name] == nil {
				sites[s.Name] = &listingSite{countingSite: &countingSite{fakeSite: &fakeSite{}, calls: map[string]int{}}, denied: denied, failing: failing, objects: objects, site: s.Name}
			}
			return sites[s.Name], nil
		}}
		return o, sites
	}
	look := func(o *Observer, listed bool) []*snapshot.Snapshot {
		var out []*snapshot.Snapshot
		for _, d := range fleet {
			if listed {
				out = append(out, o.ObserveListed(context.Background(), d))
			} else {
				out = append(out, o.Observe(context.Background(), d))
			}
		}
		return out
	}

	o, sites := newObserver(nil, nil)
	snaps := look(o, true)
	for name, s := range sites {
		got := s.take()
		want := map[string]int{"nodes": 1, "list postgresqls": 1, "list services": 1, "list secrets": 1, "list configmaps": 1, "list leases": 1}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("site %s: three topologies' first looks read %v, want %v", name, got, want)
		}
	}
	for _, snap := range snaps {
		for _, c := range snap.Clusters {
			wantExists := snap.Topology != "stock"
			if c.Exists != wantExists || c.Error != "" || c.Credentials.Exists != wantExists || c.BootstrapSecret.Exists != wantExists {
				t.Fatalf("%s/%s from the lists: exists %v (want %v), error %q, secrets %v %v", snap.Topology, c.Name, c.Exists, wantExists, c.Error, c.Credentials.Exists, c.BootstrapSecret.Exists)
			}
			if wantExists && c.PG == nil {
				t.Fatalf("%s/%s not probed: %s", snap.Topology, c.Name, c.PGError)
			}
		}
		if wantLease := snap.Topology != "stock"; (snap.Sites[0].Lease != nil) != wantLease {
			t.Fatalf("%s: lease %+v from the list", snap.Topology, snap.Sites[0].Lease)
		}
	}
	if orphans := snaps[0].Orphans; len(orphans) != 1 || orphans[0].Name != "old-orders-copy" || orphans[0].Object == nil {
		t.Fatalf("orders' orphans from the list: %+v", orphans)
	}

	// Within listEvery the lists serve again; a write to a site drops its
	// lists, and the next first look lists it again.
	look(o, true)
	for name, s := range sites {
		if got := s.take(); len(got) != 0 {
			t.Fatalf("site %s: first looks within %s read %v, want nothing", name, listEvery, got)
		}
	}
	o.Shared.Forget(base.Sites()[0].Context)
	look(o, true)
	if got := sites[base.Sites()[0].Name].take(); got["list secrets"] != 1 || got["secret"] != 0 {
		t.Fatalf("after a write, first looks read %v, want the lists again", got)
	}
	if got := sites[base.Sites()[1].Name].take(); len(got) != 0 {
		t.Fatalf("a write to one site made the other list again: %v", got)
	}
	// A look that is not a first one reads every object afresh.
	look(o, false)
	if got := sites[base.Sites()[0].Name].take(); got["list secrets"] != 0 || got["secret"] != 2*len(fleet) || got["cr"] == 0 {
		t.Fatalf("a look after a lock read %v, want each object", got)
	}

	// Denied lists: each object is read by itself, and the denial is
	// kept, not asked again by each look.
	o, sites = newObserver(map[string]bool{"secrets": true}, nil)
	snaps = look(o, true)
	got := sites[base.Sites()[0].Name].take()
	if got["list secrets"] != 1 || got["secret"] != 2*len(fleet) || got["list services"] != 1 {
		t.Fatalf("with the Secrets' list denied, first looks read %v", got)
	}
	if c := snaps[0].Clusters[0]; !c.Credentials.Exists || c.PG == nil {
		t.Fatalf("read one by one after a denied list: %+v", c)
	}

	// A list that fails is the error of every read it serves, never
	// absence.
	o, _ = newObserver(nil, map[string]bool{"secrets": true})
	snaps = look(o, true)
	if c := snaps[0].Clusters[0]; !strings.Contains(c.Error, "list secrets in namespace db: etcdserver: request timed out") || c.Credentials.Exists {
		t.Fatalf("a failed Secrets' list: error %q, credentials %+v", c.Error, c.Credentials)
	}
}
