package apply

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/diff"
	"github.com/pgtopo/pgtopo/topology"
)

// leaseSite is a fake site that keeps Leases only: a narrow test of the
// lock's bookkeeping. Locking against real apiservers is e2e's
// TestConcurrentApplies.
type leaseSite struct {
	mu     sync.Mutex
	leases map[string]*coordinationv1.Lease
	order  *[]string
	name   string
}

func (s *leaseSite) GetLease(_ context.Context, ns, name string) (*coordinationv1.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.leases[ns+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "leases"}, name)
	}
	return l.DeepCopy(), nil
}

func (s *leaseSite) CreateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*s.order = append(*s.order, s.name)
	s.leases[l.Namespace+"/"+l.Name] = l.DeepCopy()
	return l, nil
}

func (s *leaseSite) UpdateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leases[l.Namespace+"/"+l.Name] = l.DeepCopy()
	return l, nil
}

func (s *leaseSite) holder(ns string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.leases[ns+"/pgtopo-orders"]; ok && l.Spec.HolderIdentity != nil {
		return *l.Spec.HolderIdentity
	}
	return ""
}

func (s *leaseSite) ApplyPostgresql(context.Context, *unstructured.Unstructured) error { return nil }
func (s *leaseSite) GetSecret(context.Context, string, string) (*corev1.Secret, error) {
	return nil, nil
}
func (s *leaseSite) ApplySecret(context.Context, *corev1.Secret) error  { return nil }
func (s *leaseSite) DeleteSecret(context.Context, string, string) error { return nil }

func threeSites() *topology.Desired {
	site := func(n string) topology.Site { return topology.Site{Name: n, Context: "ctx-" + n} }
	return &topology.Desired{Name: "orders", Clusters: []topology.DesiredCluster{
		{Name: "orders-west", Site: site("west"), Namespace: "db"},
		{Name: "orders-east", Site: site("east"), Namespace: "db"},
		{Name: "orders-south", Site: site("south"), Namespace: "ledger"},
	}}
}

func TestLocksEverySiteInOrder(t *testing.T) {
	var order []string
	sites := map[string]*leaseSite{}
	for _, n := range []string{"east", "south", "west"} {
		sites["ctx-"+n] = &leaseSite{leases: map[string]*coordinationv1.Lease{}, order: &order, name: n}
	}
	r := &Runner{Holder: "me", LockTimeout: time.Second, Writer: func(c string) (SiteWriter, error) { return sites[c], nil }}
	d := threeSites()

	step := diff.Step{Action: diff.ActionLock, Locks: []diff.Subject{
		{Site: "east", Namespace: "db"}, {Site: "south", Namespace: "ledger"}, {Site: "west", Namespace: "db"}}}
	held, err := r.acquire(context.Background(), d, step, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(order, ","); got != "east,south,west" {
		t.Fatalf("Leases taken in order %s, want east,south,west", got)
	}
	for ctx, ns := range map[string]string{"ctx-east": "db", "ctx-south": "ledger", "ctx-west": "db"} {
		if h := sites[ctx].holder(ns); h != "me" {
			t.Fatalf("%s: holder %q, want me", ctx, h)
		}
	}
	held.release(context.Background())
	for ctx, ns := range map[string]string{"ctx-east": "db", "ctx-south": "ledger", "ctx-west": "db"} {
		if h := sites[ctx].holder(ns); h != "" {
			t.Fatalf("%s: holder %q after release", ctx, h)
		}
	}

	// Another live holder in the last site: the run gives up naming it and
	// hands back the Leases it took on the way.
	other, secs, now := "ci-runner-7", int32(30), metav1.NewMicroTime(time.Now())
	sites["ctx-west"].leases["db/pgtopo-orders"] = &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "pgtopo-orders", Namespace: "db"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &secs, RenewTime: &now},
	}
	_, err = r.acquire(context.Background(), d, step, time.Now())
	if err == nil || !strings.Contains(err.Error(), "lock db/pgtopo-orders in site west is held by ci-runner-7") {
		t.Fatalf("error = %v, want the holder named", err)
	}
	if h := sites["ctx-east"].holder("db"); h != "" {
		t.Fatalf("east still held by %q after a failed lock", h)
	}
	if h := sites["ctx-south"].holder("ledger"); h != "" {
		t.Fatalf("south still held by %q after a failed lock", h)
	}
}
