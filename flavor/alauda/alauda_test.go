package alauda

import (
	"maps"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/flavor/owned"
	"github.com/pgtopo/pgtopo/snapshot"
)

// The CRD check: the upstream operator's schema (spec's fields declared,
// no clusterReplication) is refused with words; the extension's, or a
// spec that keeps unknown fields, passes.
func TestCheckCRD(t *testing.T) {
	crd := func(spec string) *unstructured.Unstructured {
		var obj map[string]any
		doc := `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: postgresqls.acid.zalan.do}
spec:
  versions:
    - name: v1
      served: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
` + spec
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		return &unstructured.Unstructured{Object: obj}
	}
	for _, tc := range []struct{ name, spec, want string }{
		{"upstream", `              type: object
              required: [numberOfInstances, teamId, postgresql, volume]
              properties:
                numberOfInstances: {type: integer}
                volume: {type: object}
`, "this cluster's operator does not support cross-cluster replication: the postgresqls.acid.zalan.do CRD's schema has no spec.clusterReplication"},
		{"with the extension", `              type: object
              properties:
                clusterReplication: {type: object}
`, ""},
		{"keeps unknown fields", `              type: object
              x-kubernetes-preserve-unknown-fields: true
              properties:
                numberOfInstances: {type: integer}
`, ""},
	} {
		got := CheckCRD(crd(tc.spec))
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	none := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"versions": []any{map[string]any{"name": "v1beta1", "served": true}}}}}
	if got := CheckCRD(none); got != "the postgresqls.acid.zalan.do CRD has no version v1" {
		t.Errorf("no v1: %q", got)
	}
}

// A primary's spec clears the peer and the bootstrap Secret explicitly:
// server-side apply takes over (and so clears) only the fields it sends,
// and a hand edit may have set them too.
func TestBuildSpecClearsWhatAPrimaryHasNot(t *testing.T) {
	u := BuildSpec("db", "orders-west", snapshot.Spec{Instances: 2, Replication: snapshot.Replication{Enabled: true, ServiceType: "NodePort"}})
	repl, _, _ := unstructured.NestedMap(u.Object, "spec", "clusterReplication")
	for _, k := range []string{"peerHost", "peerPort", "bootstrapSecret"} {
		if _, ok := repl[k]; !ok {
			t.Errorf("clusterReplication.%s is not sent: a hand edit's value would stay", k)
		}
	}
	if o := Parse(u); o.Spec.Replication.Peer() != "" || o.Spec.Replication.BootstrapSecret != "" {
		t.Fatalf("read back: %+v", o.Spec.Replication)
	}
}

// Parse tells the parameters pgtopo's field manager owns from the ones
// another manager set, by the object's managedFields.
func TestParseForeignParameters(t *testing.T) {
	doc := `
apiVersion: acid.zalan.do/v1
kind: postgresql
metadata:
  name: orders-east
  namespace: db
  managedFields:
    - manager: pgtopo
      operation: Apply
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:numberOfInstances: {}
          f:postgresql:
            f:parameters:
              f:max_slot_wal_keep_size: {}
    - manager: kubectl-edit
      operation: Update
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:postgresql:
            f:parameters:
              f:work_mem: {}
spec:
  numberOfInstances: 2
  postgresql:
    version: "15"
    parameters: {max_slot_wal_keep_size: 10GB, work_mem: 64MB, shared_buffers: 1GB}
`
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	got := Parse(&unstructured.Unstructured{Object: obj}).ForeignParameters
	// shared_buffers has no manager at all (a CR created without server-side
	// apply): not pgtopo's either.
	if strings.Join(got, ",") != "shared_buffers,work_mem" {
		t.Fatalf("foreign parameters %q, want shared_buffers and work_mem", got)
	}
	delete(obj["metadata"].(map[string]any), "managedFields")
	if got := Parse(&unstructured.Unstructured{Object: obj}).ForeignParameters; len(got) != 3 {
		t.Fatalf("without managedFields, foreign parameters %q, want all three", got)
	}
}

// Every owned field of the list is built into the CR and parsed back:
// changed alone, it comes back changed, and nothing else does.
func TestOwnedFieldsRoundTrip(t *testing.T) {
	base := snapshot.Spec{Topology: "orders", Instances: 2, TeamID: "ACID", Version: "15", Parameters: map[string]string{"a": "1"}, VolumeSize: "1Gi",
		Replication: snapshot.Replication{Enabled: true, IsReplica: true, PeerHost: "10.0.0.1", PeerPort: 5432, ServiceType: "NodePort", BootstrapSecret: "b"}}
	if got := Parse(BuildSpec("db", "orders-east", base)).Spec; !reflect.DeepEqual(got, base) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, base)
	}
	for _, f := range owned.Alauda.Stored() {
		changed := base
		changed.Parameters = maps.Clone(base.Parameters)
		switch v := f.Get(base).(type) {
		case string:
			f.Set(&changed, v+"x")
		case int64:
			f.Set(&changed, v+1)
		case bool:
			f.Set(&changed, !v)
		case map[string]any:
			v["b"] = "2"
			f.Set(&changed, v)
		default:
			t.Fatalf("%v: a %T; teach this test to change it", f.Path, v)
		}
		if reflect.DeepEqual(changed, base) {
			t.Fatalf("%v: setting a new value changed nothing", f.Path)
		}
		if got := Parse(BuildSpec("db", "orders-east", changed)).Spec; !reflect.DeepEqual(got, changed) {
			t.Errorf("%v: built and parsed back:\n got %+v\nwant %+v", f.Path, got, changed)
		}
	}
}
