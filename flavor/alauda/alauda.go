// Package alauda expresses a cluster as the Zalando-based operator's
// postgresql CR with the clusterReplication extension (flavor "alauda"),
// and reads such CRs back.
package alauda

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Operator conventions.
const (
	APIVersion    = "acid.zalan.do/v1"
	Kind          = "postgresql"
	StatusRunning = "Running"
	PostgresPort  = 5432
)

// Labels and annotations pgtopo writes on the CRs it manages.
const (
	LabelTopology        = "pgtopo.dev/topology"
	AnnotationRevision   = "pgtopo.dev/revision"
	AnnotationDigest     = "pgtopo.dev/digest"
	AnnotationSwitchover = "pgtopo.dev/switchover"
	FieldManager         = "pgtopo"
)

// CredentialsSecret names a cluster's admin credentials Secret.
func CredentialsSecret(cluster string) string {
	return "postgres." + cluster + ".credentials.postgresql.acid.zalan.do"
}

// BootstrapSecret names the Secret pgtopo creates in a standby's namespace.
func BootstrapSecret(topology string) string { return topology + "-bootstrap" }

// CR is what pgtopo reads from a live postgresql CR.
type CR struct {
	Instances   int               `json:"instances"`
	TeamID      string            `json:"teamId,omitempty"`
	Version     string            `json:"version,omitempty"`
	Parameters  map[string]string `json:"parameters,omitempty"`
	VolumeSize  string            `json:"volumeSize,omitempty"`
	Replication Replication       `json:"replication"`
	Status      string            `json:"status,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Replication is spec.clusterReplication.
type Replication struct {
	Enabled         bool   `json:"enabled"`
	IsReplica       bool   `json:"isReplica"`
	PeerHost        string `json:"peerHost,omitempty"`
	PeerPort        int    `json:"peerPort,omitempty"`
	ServiceType     string `json:"replSvcType,omitempty"`
	BootstrapSecret string `json:"bootstrapSecret,omitempty"`
}

// Parse reads a CR.
func Parse(u *unstructured.Unstructured) CR {
	o := u.Object
	var c CR
	n, _, _ := unstructured.NestedInt64(o, "spec", "numberOfInstances")
	c.Instances = int(n)
	c.TeamID, _, _ = unstructured.NestedString(o, "spec", "teamId")
	c.Version, _, _ = unstructured.NestedString(o, "spec", "postgresql", "version")
	c.Parameters, _, _ = unstructured.NestedStringMap(o, "spec", "postgresql", "parameters")
	c.VolumeSize, _, _ = unstructured.NestedString(o, "spec", "volume", "size")
	r := &c.Replication
	r.Enabled, _, _ = unstructured.NestedBool(o, "spec", "clusterReplication", "enabled")
	r.IsReplica, _, _ = unstructured.NestedBool(o, "spec", "clusterReplication", "isReplica")
	r.PeerHost, _, _ = unstructured.NestedString(o, "spec", "clusterReplication", "peerHost")
	p, _, _ := unstructured.NestedInt64(o, "spec", "clusterReplication", "peerPort")
	r.PeerPort = int(p)
	r.ServiceType, _, _ = unstructured.NestedString(o, "spec", "clusterReplication", "replSvcType")
	r.BootstrapSecret, _, _ = unstructured.NestedString(o, "spec", "clusterReplication", "bootstrapSecret")
	c.Status, _, _ = unstructured.NestedString(o, "status", "PostgresClusterStatus")
	c.Labels = u.GetLabels()
	c.Annotations = pgtopoAnnotations(u.GetAnnotations())
	return c
}

// pgtopoAnnotations keeps only pgtopo's own annotations: the snapshot holds
// what pgtopo reasons about, and nothing a user may have put there.
func pgtopoAnnotations(in map[string]string) map[string]string {
	var out map[string]string
	for _, k := range []string{AnnotationRevision, AnnotationDigest, AnnotationSwitchover} {
		if v, ok := in[k]; ok {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// HashSecretData fingerprints a Secret's data without revealing it, so
// drift can be seen without the value ever leaving the API server response.
func HashSecretData(data map[string][]byte) string {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(data[k])
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
