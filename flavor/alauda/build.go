package alauda

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/pgtopo/pgtopo/topology"
)

// Shape is the role-dependent part of a CR pgtopo applies.
type Shape struct {
	IsReplica bool
	Instances int
	PeerHost  string
	PeerPort  int
	// Annotations are pgtopo's own (digest, revision, journal); every apply
	// sends all of them because server-side apply drops owned fields that a
	// request leaves out.
	Annotations map[string]string
}

// Build returns the whole object pgtopo owns for a cluster: every field it
// manages, nothing else, so server-side apply leaves other fields alone.
func Build(d *topology.Desired, c topology.DesiredCluster, s Shape) *unstructured.Unstructured {
	params := map[string]any{}
	for k, v := range c.Parameters {
		params[k] = v
	}
	pg := map[string]any{"version": c.Version}
	if len(params) > 0 {
		pg["parameters"] = params
	}
	repl := map[string]any{"enabled": true, "replSvcType": d.ServiceType, "isReplica": s.IsReplica}
	if s.IsReplica {
		repl["peerHost"] = s.PeerHost
		repl["peerPort"] = int64(s.PeerPort)
		repl["bootstrapSecret"] = BootstrapSecret(d.Name)
	}
	spec := map[string]any{
		"teamId":             c.TeamID,
		"numberOfInstances":  int64(s.Instances),
		"postgresql":         pg,
		"clusterReplication": repl,
	}
	if c.VolumeSize != "" {
		spec["volume"] = map[string]any{"size": c.VolumeSize}
	}
	meta := map[string]any{
		"name":      c.Name,
		"namespace": c.Namespace,
		"labels":    map[string]any{LabelTopology: d.Name},
	}
	if len(s.Annotations) > 0 {
		ann := map[string]any{}
		for k, v := range s.Annotations {
			ann[k] = v
		}
		meta["annotations"] = ann
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": APIVersion, "kind": Kind, "metadata": meta, "spec": spec,
	}}
}
