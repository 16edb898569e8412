// Package operator is the lab's stand-in for the PostgreSQL operator: per
// site it watches postgresql CRs and makes them real with Patroni and
// PostgreSQL processes, Services reachable through TCP proxies, pods,
// credentials and status, the way the runbook describes the real operator.
package operator

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GVR of the postgresql CRs.
var GVR = schema.GroupVersionResource{Group: "acid.zalan.do", Version: "v1", Resource: "postgresqls"}

// Status values the operator writes to status.PostgresClusterStatus.
const (
	StatusCreating = "Creating"
	StatusRunning  = "Running"
	StatusFailed   = "Failed"
)

// crSpec is what the operator reads from a CR.
type crSpec struct {
	Namespace, Name string
	Instances       int
	Version         string
	Parameters      map[string]string
	Replication     replication
}

type replication struct {
	Enabled         bool
	IsReplica       bool
	PeerHost        string
	PeerPort        int
	ServiceType     string
	BootstrapSecret string
}

func (s crSpec) key() string { return s.Namespace + "/" + s.Name }

// SlotName is the physical slot a primary keeps for a standby cluster.
func SlotName(cluster string) string { return "xdc_" + strings.ReplaceAll(cluster, "-", "_") }

// CredentialsSecret is the operator's name for a cluster's admin secret.
func CredentialsSecret(cluster string) string {
	return "postgres." + cluster + ".credentials.postgresql.acid.zalan.do"
}

func parseSpec(u *unstructured.Unstructured) (crSpec, error) {
	s := crSpec{Namespace: u.GetNamespace(), Name: u.GetName()}
	n, _, _ := unstructured.NestedInt64(u.Object, "spec", "numberOfInstances")
	s.Instances = int(n)
	s.Version, _, _ = unstructured.NestedString(u.Object, "spec", "postgresql", "version")
	if s.Version != "" && s.Version != "15" {
		return s, fmt.Errorf("postgresql version %q: the lab runs PostgreSQL 15 only", s.Version)
	}
	params, _, _ := unstructured.NestedStringMap(u.Object, "spec", "postgresql", "parameters")
	s.Parameters = params
	r := &s.Replication
	r.Enabled, _, _ = unstructured.NestedBool(u.Object, "spec", "clusterReplication", "enabled")
	r.IsReplica, _, _ = unstructured.NestedBool(u.Object, "spec", "clusterReplication", "isReplica")
	r.PeerHost, _, _ = unstructured.NestedString(u.Object, "spec", "clusterReplication", "peerHost")
	port, _, _ := unstructured.NestedInt64(u.Object, "spec", "clusterReplication", "peerPort")
	r.PeerPort = int(port)
	r.ServiceType, _, _ = unstructured.NestedString(u.Object, "spec", "clusterReplication", "replSvcType")
	if r.ServiceType == "" {
		r.ServiceType = "ClusterIP"
	}
	r.BootstrapSecret, _, _ = unstructured.NestedString(u.Object, "spec", "clusterReplication", "bootstrapSecret")
	if r.IsReplica && (r.PeerHost == "" || r.PeerPort == 0) {
		return s, fmt.Errorf("clusterReplication.isReplica needs peerHost and peerPort")
	}
	return s, nil
}
