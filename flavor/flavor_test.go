package flavor

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/snapshot"
)

// AllClusters, what import pairs, leaves out an isolated drill's clone: it
// shares production's system identifier and would pair as a third member.
func TestAllClustersLeavesOutDrillClones(t *testing.T) {
	op, err := Lookup("")
	if err != nil {
		t.Fatal(err)
	}
	cr := func(name string, labels map[string]string) runtime.Object {
		u := op.BuildSpec("db", name, snapshot.Spec{Instances: 1})
		u.SetLabels(labels)
		return u
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{op.Resource: "postgresqlList"},
		cr("orders-west", nil), cr("orders-west-drill", map[string]string{snapshot.DrillCloneLabel: "orders"}))
	s := Site{Site: &kube.Site{Dynamic: dyn}, Op: op}
	got, err := s.AllClusters(context.Background(), "db")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "orders-west" {
		t.Fatalf("AllClusters = %+v, want orders-west alone", got)
	}
}
