package live

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// fakeSite answers from fixed objects; fail makes one kind of read fail.
type fakeSite struct {
	fail        string // "nodes", "cr", "service", "secrets", "lease", "list"
	noCR        bool
	noSecrets   bool
	noSvc       bool
	unsupported string
	checks      *atomic.Int32 // counted when set
}

var notFound = apierrors.NewNotFound(schema.GroupResource{Resource: "x"}, "x")

func (f *fakeSite) ReadCluster(_ context.Context, ns, name string) (*snapshot.Object, error) {
	switch {
	case f.fail == "cr":
		return nil, errors.New("etcdserver: request timed out")
	case f.noCR:
		return nil, nil
	}
	return &snapshot.Object{Spec: snapshot.Spec{Instances: 2}}, nil
}

// forbidden is what the API server answers an identity without the verb.
func forbidden(resource, name string) error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: resource}, name,
		errors.New(`User "system:serviceaccount:pgtopo:reader" cannot get resource "`+resource+`" in API group "" in the namespace "db"`))
}

func (f *fakeSite) ListClusters(context.Context, string, string) ([]string, error) {
	if f.fail == "list" {
		return nil, forbidden("postgresqls", "")
	}
	return nil, nil
}

func (f *fakeSite) GetService(context.Context, string, string) (*corev1.Service, error) {
	switch {
	case f.fail == "service":
		return nil, errors.New("connection refused")
	case f.noSvc:
		return nil, notFound
	}
	return &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{{NodePort: 31000}}}}, nil
}

func (f *fakeSite) ListNodes(context.Context) ([]corev1.Node, error) {
	if f.fail == "nodes" {
		return nil, errors.New("dial tcp 10.0.0.1:6443: i/o timeout")
	}
	return []corev1.Node{{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.1.0.5"}}}}}, nil
}

func (f *fakeSite) GetSecret(_ context.Context, _, name string) (*corev1.Secret, error) {
	switch {
	case f.fail == "secrets":
		return nil, forbidden("secrets", name)
	case f.noSecrets:
		return nil, notFound
	}
	return &corev1.Secret{Data: map[string][]byte{"username": []byte("postgres"), "password": []byte("s3cret-" + name)}}, nil
}

func (f *fakeSite) PostgresCA(context.Context, string, string, *topology.CASource) ([]byte, string, error) {
	return nil, "", nil
}

func (f *fakeSite) CheckFlavor(context.Context) string {
	if f.checks != nil {
		f.checks.Add(1)
	}
	return f.unsupported
}

func (f *fakeSite) GetLease(context.Context, string, string) (*coordinationv1.Lease, error) {
	if f.fail == "lease" {
		return nil, forbidden("leases", "pgtopo-orders")
	}
	holder := "ci-run-7"
	return &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &metav1.MicroTime{}}}, nil
}

type fakeProber struct {
	got atomic.Pointer[snapshot.Endpoint]
}

func (p *fakeProber) Probe(_ context.Context, ep snapshot.Endpoint, login Login) (*snapshot.PGState, error) {
	p.got.Store(&ep)
	if login.User != "postgres" || !strings.HasPrefix(login.Password, "s3cret-") {
		return nil, errors.New("wrong credentials passed")
	}
	return &snapshot.PGState{SystemID: "7710"}, nil
}

func desired(t *testing.T) *topology.Desired {
	t.Helper()
	data, err := os.ReadFile("../examples/topologies/two-sites-nodeport.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := topology.ParseDocument("two-sites-nodeport.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	top, err := doc.Decode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := top.Desired()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestObserveSiteCombinesReads covers how one site's concurrent reads become
// its state: which failure is reported where, and what is left out.
func TestObserveSiteCombinesReads(t *testing.T) {
	d := desired(t)
	for _, tc := range []struct {
		name                       string
		site                       fakeSite
		reachable, exists, probed  bool
		siteErr, clusterErr, pgErr string
		lease                      bool
		readErrs                   []string
		noSecrets                  bool
	}{
		{name: "everything read", reachable: true, exists: true, probed: true, lease: true},
		{name: "nodes fail: unreachable, nothing else kept", site: fakeSite{fail: "nodes"}, siteErr: "context prod-east: dial tcp 10.0.0.1:6443: i/o timeout"},
		{name: "CR read fails", site: fakeSite{fail: "cr"}, reachable: true, clusterErr: "read CR: etcdserver: request timed out", lease: true},
		{name: "no CR: secrets only", site: fakeSite{noCR: true}, reachable: true, lease: true},
		{name: "Service read fails", site: fakeSite{fail: "service"}, reachable: true, exists: true, clusterErr: "read Service: connection refused", lease: true},
		{name: "no Service yet", site: fakeSite{noSvc: true}, reachable: true, exists: true, lease: true},
		// Denied is not absent: a Secret, the Lease or the list of orphans
		// that could not be read is an error naming it, never "not there".
		{name: "Secrets denied", site: fakeSite{fail: "secrets"}, reachable: true, exists: true, lease: true, noSecrets: true,
			clusterErr: `context prod-east: get Secret db/postgres.orders-east.credentials.postgresql.acid.zalan.do: secrets "postgres.orders-east.credentials.postgresql.acid.zalan.do" is forbidden: User "system:serviceaccount:pgtopo:reader" cannot get resource "secrets" in API group "" in the namespace "db"` +
				"; " + `get Secret db/orders-bootstrap: secrets "orders-bootstrap" is forbidden: User "system:serviceaccount:pgtopo:reader" cannot get resource "secrets" in API group "" in the namespace "db"`},
		{name: "no Secrets: absent", site: fakeSite{noSecrets: true}, reachable: true, exists: true, lease: true, noSecrets: true,
			pgErr: "credentials Secret postgres.orders-east.credentials.postgresql.acid.zalan.do not found"},
		{name: "Lease denied", site: fakeSite{fail: "lease"}, reachable: true, exists: true, probed: true,
			readErrs: []string{`context prod-east: get Lease db/pgtopo-orders: leases "pgtopo-orders" is forbidden: User "system:serviceaccount:pgtopo:reader" cannot get resource "leases" in API group "" in the namespace "db"`}},
		{name: "orphans' list denied", site: fakeSite{fail: "list"}, reachable: true, exists: true, probed: true, lease: true,
			readErrs: []string{`context prod-east: list the topology's cluster objects in namespace "db" (to find those the file no longer lists): postgresqls is forbidden: User "system:serviceaccount:pgtopo:reader" cannot get resource "postgresqls" in API group "" in the namespace "db"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prober := &fakeProber{}
			o := &Observer{Prober: prober, Names: alaudaNames(t), Connect: func(topology.Site) (SiteAPI, error) { return &tc.site, nil }}
			east := d.Sites()[0]
			st, clusters, _ := o.observeSite(context.Background(), d, east, lookFull)
			if st.Reachable != tc.reachable || st.Error != tc.siteErr || (st.Lease != nil) != tc.lease {
				t.Fatalf("site: reachable %v error %q lease %v; want %v %q %v", st.Reachable, st.Error, st.Lease != nil, tc.reachable, tc.siteErr, tc.lease)
			}
			if !slices.Equal(st.ReadErrors, tc.readErrs) {
				t.Fatalf("site read errors:\n  %q\nwant\n  %q", st.ReadErrors, tc.readErrs)
			}
			if len(clusters) != 1 || clusters[0].Name != "orders-east" {
				t.Fatalf("clusters %+v", clusters)
			}
			c := clusters[0]
			if c.Exists != tc.exists || c.Error != tc.clusterErr || c.PGError != tc.pgErr || (c.PG != nil) != tc.probed {
				t.Fatalf("cluster: exists %v error %q pgError %q probed %v; want %v %q %q %v", c.Exists, c.Error, c.PGError, c.PG != nil, tc.exists, tc.clusterErr, tc.pgErr, tc.probed)
			}
			if tc.probed {
				if ep := prober.got.Load(); ep == nil || *ep != (snapshot.Endpoint{Host: "10.1.0.5", Port: 31000}) {
					t.Fatalf("probed %v, want the node address and nodePort", ep)
				}
			}
			readSecrets := tc.reachable && tc.clusterErr != "read CR: etcdserver: request timed out" && !tc.noSecrets
			if c.Credentials.Exists != readSecrets || c.BootstrapSecret.Exists != readSecrets {
				t.Fatalf("secrets in state: %+v %+v, want exists=%v", c.Credentials, c.BootstrapSecret, readSecrets)
			}
			if c.BootstrapSecret.Exists && c.BootstrapSecret.Name != alauda.BootstrapSecret("orders") {
				t.Fatalf("bootstrap secret %q", c.BootstrapSecret.Name)
			}
		})
	}
}

// barrierSite holds every read until want reads are in flight at once (or
// a second passed), and remembers the most it saw together.
type barrierSite struct {
	fakeSite
	want    int32
	now     atomic.Int32
	most    atomic.Int32
	release chan struct{}
	once    sync.Once
}

func (b *barrierSite) enter() {
	n := b.now.Add(1)
	for m := b.most.Load(); n > m && !b.most.CompareAndSwap(m, n); m = b.most.Load() {
	}
	if n >= b.want {
		b.once.Do(func() { close(b.release) })
	}
	select {
	case <-b.release:
	case <-time.After(time.Second):
	}
	b.now.Add(-1)
}

func (b *barrierSite) ReadCluster(ctx context.Context, ns, name string) (*snapshot.Object, error) {
	b.enter()
	return b.fakeSite.ReadCluster(ctx, ns, name)
}

func (b *barrierSite) ListClusters(ctx context.Context, ns, topology string) ([]string, error) {
	b.enter()
	return b.fakeSite.ListClusters(ctx, ns, topology)
}

func (b *barrierSite) GetService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	b.enter()
	return b.fakeSite.GetService(ctx, ns, name)
}

func (b *barrierSite) ListNodes(ctx context.Context) ([]corev1.Node, error) {
	b.enter()
	return b.fakeSite.ListNodes(ctx)
}

func (b *barrierSite) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	b.enter()
	return b.fakeSite.GetSecret(ctx, ns, name)
}

func (b *barrierSite) GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error) {
	b.enter()
	return b.fakeSite.GetLease(ctx, ns, name)
}

// TestObserveSiteReadsAtOnce: a distant site costs one round trip of
// Kubernetes reads, not one per object, so all seven of a one-cluster
// site's reads (nodes, Lease, orphans, CR, two Secrets, Service) are in
// flight together.
func TestObserveSiteReadsAtOnce(t *testing.T) {
	d := desired(t)
	site := &barrierSite{want: 7, release: make(chan struct{})}
	o := &Observer{Prober: &fakeProber{}, Names: alaudaNames(t), Connect: func(topology.Site) (SiteAPI, error) { return site, nil }}
	st, clusters, _ := o.observeSite(context.Background(), d, d.Sites()[0], lookFull)
	if !st.Reachable || clusters[0].PG == nil {
		t.Fatalf("site %+v cluster %+v", st, clusters[0])
	}
	if got := site.most.Load(); got != 7 {
		t.Fatalf("at most %d reads in flight together, want all 7", got)
	}
}

func alaudaNames(t *testing.T) Names {
	t.Helper()
	op, err := flavor.Lookup("alauda")
	if err != nil {
		t.Fatal(err)
	}
	return op.Names
}

// A Secret's digest is keyed per observer: equal data compare equal within
// one observer, and nothing about the digest lets one test a password
// guess offline (it is not the unkeyed hash, and another run's differs).
func TestSecretDigestsAreKeyed(t *testing.T) {
	data := map[string][]byte{"username": []byte("postgres"), "password": []byte("s3cret-1")}
	a, b := &Observer{}, &Observer{}
	da, db := keyedDigest(a.digestKey(), data), keyedDigest(b.digestKey(), data)
	if da != keyedDigest(a.digestKey(), map[string][]byte{"password": []byte("s3cret-1"), "username": []byte("postgres")}) {
		t.Fatal("the same data digests differently in one observer")
	}
	if da == db {
		t.Fatal("two observers share a digest key")
	}
	if da == keyedDigest(a.digestKey(), map[string][]byte{"username": []byte("postgres"), "password": []byte("s3cret-2")}) {
		t.Fatal("different passwords digest alike")
	}
	unkeyed := sha256.New()
	for _, k := range []string{"password", "username"} {
		unkeyed.Write([]byte(k))
		unkeyed.Write([]byte{0})
		unkeyed.Write(data[k])
		unkeyed.Write([]byte{0})
	}
	if strings.HasPrefix(hex.EncodeToString(unkeyed.Sum(nil)), da[:16]) {
		t.Fatal("the digest is the unkeyed hash")
	}
}

// A site that did not answer is taken for down, without asking again, for
// DownFor; without DownFor every snapshot asks.
func TestObserveRemembersDownSites(t *testing.T) {
	for _, tc := range []struct {
		downFor time.Duration
		asks    int
	}{{0, 3}, {time.Minute, 1}} {
		asks := 0
		o := &Observer{Prober: &fakeProber{}, Names: alaudaNames(t), DownFor: tc.downFor, Connect: func(topology.Site) (SiteAPI, error) {
			asks++
			return nil, errors.New("dial tcp: connection refused")
		}}
		d := desired(t)
		d.Clusters = d.Clusters[:1]
		var last *snapshot.Snapshot
		for range 3 {
			last = o.Observe(context.Background(), d)
		}
		if asks != tc.asks {
			t.Errorf("DownFor %s: asked %d times, want %d", tc.downFor, asks, tc.asks)
		}
		if s := last.Sites[0]; s.Reachable || !strings.Contains(s.Error, "connection refused") {
			t.Errorf("DownFor %s: site %+v", tc.downFor, s)
		}
	}
}

// The operator's CRD is read once a minute while it passes, and at every
// look while it does not: the refusal goes as soon as the CRD is fixed.
func TestObserveChecksTheFlavorSparingly(t *testing.T) {
	d := desired(t)
	site := &fakeSite{checks: new(atomic.Int32)}
	o := &Observer{Prober: &fakeProber{}, Names: alaudaNames(t), Connect: func(topology.Site) (SiteAPI, error) { return site, nil }}
	for range 3 {
		if st, _, _ := o.observeSite(context.Background(), d, d.Sites()[0], lookFull); st.Unsupported != "" {
			t.Fatal(st.Unsupported)
		}
	}
	if n := site.checks.Load(); n != 1 {
		t.Fatalf("%d CRD reads in 3 looks, want 1", n)
	}
	bad := &fakeSite{unsupported: "no clusterReplication", checks: new(atomic.Int32)}
	o = &Observer{Prober: &fakeProber{}, Names: alaudaNames(t), Connect: func(topology.Site) (SiteAPI, error) { return bad, nil }}
	for range 2 {
		if st, _, _ := o.observeSite(context.Background(), d, d.Sites()[0], lookFull); st.Unsupported != "no clusterReplication" {
			t.Fatalf("unsupported %q", st.Unsupported)
		}
	}
	if n := bad.checks.Load(); n != 2 {
		t.Fatalf("%d CRD reads in 2 looks at an unsupported site, want 2", n)
	}
}

// countingSite counts each kind of API read.
type countingSite struct {
	*fakeSite
	mu    sync.Mutex
	calls map[string]int
}

func (c *countingSite) count(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[kind]++
}

func (c *countingSite) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = map[string]int{}
	return out
}

func (c *countingSite) ReadCluster(ctx context.Context, ns, name string) (*snapshot.Object, error) {
	c.count("cr")
	return c.fakeSite.ReadCluster(ctx, ns, name)
}
func (c *countingSite) ListClusters(ctx context.Context, ns, t string) ([]string, error) {
	c.count("list")
	return c.fakeSite.ListClusters(ctx, ns, t)
}
func (c *countingSite) GetService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	c.count("service")
	return c.fakeSite.GetService(ctx, ns, name)
}
func (c *countingSite) ListNodes(ctx context.Context) ([]corev1.Node, error) {
	c.count("nodes")
	return c.fakeSite.ListNodes(ctx)
}
func (c *countingSite) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	c.count("secret")
	return c.fakeSite.GetSecret(ctx, ns, name)
}
func (c *countingSite) GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error) {
	c.count("lease")
	return c.fakeSite.GetLease(ctx, ns, name)
}

// failingProber fails while fail is set.
type failingProber struct {
	fakeProber
	fail atomic.Bool
}

func (p *failingProber) Probe(ctx context.Context, ep snapshot.Endpoint, login Login) (*snapshot.PGState, error) {
	if p.fail.Load() {
		return nil, errors.New("connection refused")
	}
	return p.fakeProber.Probe(ctx, ep, login)
}

// A wait's poll reads the one cluster it waits for: its object, and its
// Service and login only while its database does not answer; never the
// nodes, the Lease, the orphans or another cluster.
func TestObserveClustersReadsWhatItWaitsFor(t *testing.T) {
	d := desired(t)
	sites := map[string]*countingSite{}
	prober := &failingProber{}
	o := &Observer{Prober: prober, Names: alaudaNames(t), Connect: func(s topology.Site) (SiteAPI, error) {
		if sites[s.Name] == nil {
			sites[s.Name] = &countingSite{fakeSite: &fakeSite{}, calls: map[string]int{}}
		}
		return sites[s.Name], nil
	}}
	full := o.Observe(context.Background(), d)
	standby := d.Clusters[1]
	for name, s := range sites {
		got := s.take()
		if got["nodes"] != 1 || got["lease"] != 1 || got["cr"] == 0 {
			t.Fatalf("site %s: a full look read %v", name, got)
		}
	}
	poll := func() (*snapshot.Snapshot, map[string]map[string]int) {
		snap := o.ObserveClusters(context.Background(), d, []string{standby.Name})
		out := map[string]map[string]int{}
		for name, s := range sites {
			out[name] = s.take()
		}
		return snap, out
	}
	snap, reads := poll()
	if len(snap.Clusters) != 1 || snap.Clusters[0].Name != standby.Name || snap.Clusters[0].PG == nil || len(snap.Sites) != 1 {
		t.Fatalf("a poll's snapshot: %+v", snap)
	}
	if got := snap.Sites[0].NodeIPs; len(got) != 1 || got[0] != full.Sites[1].NodeIPs[0] {
		t.Fatalf("a poll's node addresses %v, want the full look's %v", got, full.Sites[1].NodeIPs)
	}
	want := map[string]map[string]int{standby.Site.Name: {"cr": 1}, d.Clusters[0].Site.Name: {}}
	if fmt.Sprint(reads) != fmt.Sprint(want) {
		t.Fatalf("a poll read %v, want %v", reads, want)
	}
	// Its database away: the next poll reads its Service and login again,
	// and keeps reading them until it answers.
	prober.fail.Store(true)
	poll()
	for range 2 {
		if _, reads = poll(); fmt.Sprint(reads[standby.Site.Name]) != fmt.Sprint(map[string]int{"cr": 1, "secret": 2, "service": 1}) {
			t.Fatalf("a poll after the database did not answer read %v", reads)
		}
	}
	prober.fail.Store(false)
	poll()
	if _, reads = poll(); fmt.Sprint(reads[standby.Site.Name]) != fmt.Sprint(map[string]int{"cr": 1}) {
		t.Fatalf("a poll once it answers again read %v", reads)
	}
}

func (f *fakeSite) GetConfigMap(context.Context, string, string) (*corev1.ConfigMap, error) {
	return nil, notFound
}
