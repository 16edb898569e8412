// Package alauda is the flavor of the Zalando-based operator with the
// clusterReplication extension: a cluster is a postgresql CR
// (acid.zalan.do/v1), its admin credentials and Services follow the
// operator's names, and pgtopo's marks are annotations on the CR. It maps
// the flavor-neutral snapshot.Spec and snapshot.Marks to that CR and back;
// it does no I/O.
package alauda

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/flavor/owned"
	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/snapshot"
)

// Name is the flavor's name in spec.flavor.
const Name = "alauda"

// Operator conventions.
const (
	APIVersion    = "acid.zalan.do/v1"
	Kind          = "postgresql"
	StatusRunning = "Running"
	PostgresPort  = 5432
)

// Resource is the CR's resource.
var Resource = schema.GroupVersionResource{Group: "acid.zalan.do", Version: "v1", Resource: "postgresqls"}

// Labels and annotations pgtopo writes on the CRs it manages.
const (
	LabelTopology        = snapshot.TopologyLabel
	AnnotationRevision   = "pgtopo.dev/revision"
	AnnotationDigest     = "pgtopo.dev/digest"
	AnnotationSwitchover = "pgtopo.dev/switchover"
	AnnotationFence      = "pgtopo.dev/fenced"
	AnnotationFailover   = "pgtopo.dev/failover"
	AnnotationRebuild    = "pgtopo.dev/rebuild"
)

// CredentialsSecret names a cluster's admin credentials Secret.
func CredentialsSecret(cluster string) string {
	return "postgres." + cluster + ".credentials.postgresql.acid.zalan.do"
}

// The keys of a cluster's admin credentials Secret.
const (
	CredentialsUserKey     = "username"
	CredentialsPasswordKey = "password"
)

// BootstrapSecret names the Secret pgtopo creates in a standby's namespace.
func BootstrapSecret(topology string) string { return topology + "-bootstrap" }

// SlotName names the physical slot the operator keeps on a primary for a
// standby cluster (the runbook's xdc_hotstandby for cluster hotstandby).
func SlotName(cluster string) string { return "xdc_" + strings.ReplaceAll(cluster, "-", "_") }

// MasterService names the Service in front of a cluster's leader.
func MasterService(cluster string) string { return cluster }

// foreignParameters lists the keys of spec.postgresql.parameters that
// pgtopo's field manager does not own (server-side apply's managedFields):
// set by hand or by another tool. pgtopo cannot remove those by applying,
// and does not try.
func foreignParameters(u *unstructured.Unstructured, params map[string]string) []string {
	if len(params) == 0 {
		return nil
	}
	owned := map[string]bool{}
	for _, mf := range u.GetManagedFields() {
		if mf.Manager != kube.FieldManager || mf.FieldsV1 == nil {
			continue
		}
		var fields map[string]any
		if json.Unmarshal(mf.FieldsV1.Raw, &fields) != nil {
			continue
		}
		var at any = fields
		for _, k := range []string{"f:spec", "f:postgresql", "f:parameters"} {
			m, _ := at.(map[string]any)
			at = m[k]
		}
		keys, _ := at.(map[string]any)
		for k := range keys {
			if name, ok := strings.CutPrefix(k, "f:"); ok {
				owned[name] = true
			}
		}
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !owned[k] {
			out = append(out, k)
		}
	}
	return out
}

// Parse reads a CR into the flavor-neutral object.
func Parse(u *unstructured.Unstructured) snapshot.Object {
	o := u.Object
	var s snapshot.Spec
	for _, f := range owned.Alauda.Stored() {
		if v, found, _ := unstructured.NestedFieldNoCopy(o, append([]string{"spec"}, f.Path...)...); found {
			f.Set(&s, v)
		}
	}
	s.Topology = u.GetLabels()[LabelTopology]
	obj := snapshot.Object{Spec: s, ResourceVersion: u.GetResourceVersion(), ForeignParameters: foreignParameters(u, s.Parameters)}
	obj.Status, _, _ = unstructured.NestedString(o, "status", "PostgresClusterStatus")
	obj.Ready = obj.Status == StatusRunning
	ann := u.GetAnnotations()
	obj.Marks.Digest, obj.Marks.Revision = ann[AnnotationDigest], ann[AnnotationRevision]
	if raw := ann[AnnotationSwitchover]; raw != "" {
		var j snapshot.Journal
		if err := json.Unmarshal([]byte(raw), &j); err != nil {
			obj.MarksError = fmt.Sprintf("annotation %s: %v", AnnotationSwitchover, err)
		} else {
			obj.Marks.Journal = &j
		}
	}
	if raw := ann[AnnotationFence]; raw != "" {
		var f snapshot.Fence
		if err := json.Unmarshal([]byte(raw), &f); err != nil {
			obj.MarksError = fmt.Sprintf("annotation %s: %v", AnnotationFence, err)
		} else {
			obj.Marks.Fence = &f
		}
	}
	if raw := ann[AnnotationFailover]; raw != "" {
		var f snapshot.FailoverRecord
		if err := json.Unmarshal([]byte(raw), &f); err != nil || f.Epoch < 1 || f.From == "" || f.To == "" {
			obj.MarksError = fmt.Sprintf("annotation %s: not a failover record (%v)", AnnotationFailover, err)
		} else {
			obj.Marks.Failover = &f
		}
	}
	if raw := ann[AnnotationRebuild]; raw != "" {
		var r snapshot.RebuildRecord
		if err := json.Unmarshal([]byte(raw), &r); err != nil || r.Cluster == "" {
			obj.MarksError = fmt.Sprintf("annotation %s: not a rebuild record (%v)", AnnotationRebuild, err)
		} else {
			obj.Marks.Rebuild = &r
		}
	}
	// Patroni names its members' slots after the pods, <cluster>-<n>.
	for i := range max(s.Instances, 1) {
		obj.MemberSlots = append(obj.MemberSlots, strings.ReplaceAll(u.GetName(), "-", "_")+"_"+strconv.Itoa(i))
	}
	return obj
}

// BuildSpec returns the CR with exactly the fields pgtopo owns set from s,
// for server-side apply: fields it leaves out stay with their managers.
func BuildSpec(ns, name string, s snapshot.Spec) *unstructured.Unstructured {
	// Every owned field is sent, empty or not (the peer and the bootstrap
	// Secret too): a field a hand edit (the runbook's patch) also set is
	// only taken over, and so cleared, when pgtopo sends it; left out, it
	// would stay forever. Only a field marked OmitEmpty is left out empty.
	spec := map[string]any{}
	for _, f := range owned.Alauda.Stored() {
		if v := f.Get(s); v != nil {
			_ = unstructured.SetNestedField(spec, v, f.Path...)
		}
	}
	meta := map[string]any{"name": name, "namespace": ns}
	if s.Topology != "" {
		meta["labels"] = map[string]any{LabelTopology: s.Topology}
	}
	return object(meta, spec)
}

// BuildMarks returns the CR with only pgtopo's annotations set from m, for
// server-side apply under a field manager of their own: a mark left out
// (the journal, once a switchover is done) is removed.
func BuildMarks(ns, name string, m snapshot.Marks) *unstructured.Unstructured {
	ann := map[string]any{}
	if m.Digest != "" {
		ann[AnnotationDigest] = m.Digest
	}
	if m.Revision != "" {
		ann[AnnotationRevision] = m.Revision
	}
	if m.Journal != nil {
		b, _ := json.Marshal(m.Journal)
		ann[AnnotationSwitchover] = string(b)
	}
	if m.Fence != nil {
		b, _ := json.Marshal(m.Fence)
		ann[AnnotationFence] = string(b)
	}
	if m.Failover != nil {
		b, _ := json.Marshal(m.Failover)
		ann[AnnotationFailover] = string(b)
	}
	if m.Rebuild != nil {
		b, _ := json.Marshal(m.Rebuild)
		ann[AnnotationRebuild] = string(b)
	}
	return object(map[string]any{"name": name, "namespace": ns, "annotations": ann}, nil)
}

func object(meta, spec map[string]any) *unstructured.Unstructured {
	o := map[string]any{"apiVersion": APIVersion, "kind": Kind, "metadata": meta}
	if spec != nil {
		o["spec"] = spec
	}
	return &unstructured.Unstructured{Object: o}
}

// CRD names the CustomResourceDefinition the flavor writes to.
const CRD = "postgresqls.acid.zalan.do"

// CheckCRD says why an installed CRD cannot take the objects pgtopo
// writes, "" when it can: a served version whose schema keeps
// spec.clusterReplication, declared or as an unknown field the schema
// preserves. The upstream operator's CRD declares spec's fields and no
// clusterReplication, so the API server would refuse every write.
func CheckCRD(crd *unstructured.Unstructured) string {
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	for _, v := range versions {
		m, _ := v.(map[string]any)
		if name, _ := m["name"].(string); name != "v1" {
			continue
		}
		if served, _ := m["served"].(bool); !served {
			return "the postgresqls.acid.zalan.do CRD does not serve version v1"
		}
		spec, found, _ := unstructured.NestedMap(m, "schema", "openAPIV3Schema", "properties", "spec")
		if !found {
			return "" // no structural schema for spec: anything is kept
		}
		if _, ok, _ := unstructured.NestedMap(spec, "properties", "clusterReplication"); ok {
			return ""
		}
		if keep, _, _ := unstructured.NestedBool(spec, "x-kubernetes-preserve-unknown-fields"); keep {
			return ""
		}
		return "this cluster's operator does not support cross-cluster replication: the postgresqls.acid.zalan.do CRD's schema has no spec.clusterReplication, so the API server would reject every object pgtopo writes. The alauda flavor needs an operator with the clusterReplication extension (isReplica, peerHost, peerPort, replSvcType, bootstrapSecret) installed with its CRD"
	}
	return "the postgresqls.acid.zalan.do CRD has no version v1"
}
