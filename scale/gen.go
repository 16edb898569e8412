// Package scale generates large topologies and the in-sync snapshots that
// go with them, for the scale benchmarks (make bench) and their tests.
package scale

import (
	"fmt"
	"strings"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Topology is a valid topology file of n clusters spread over sites
// (cluster i in site i mod sites), with cluster primary as its primary.
func Topology(n, sites, primary int) []byte {
	var b strings.Builder
	b.WriteString("apiVersion: pgtopo.dev/v1alpha1\nkind: Topology\nmetadata:\n  name: fleet\nspec:\n")
	b.WriteString("  postgres:\n    version: \"15\"\n    parameters:\n      max_slot_wal_keep_size: 10GB\n")
	b.WriteString("  replication:\n    serviceType: NodePort\n    maxLagBytes: 16Mi\n  sites:\n")
	for s := 0; s < sites; s++ {
		fmt.Fprintf(&b, "    - {name: site-%d, context: ctx-%d}\n", s, s)
	}
	b.WriteString("  clusters:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    - {name: %s, site: site-%d, namespace: db, instances: 2, volume: {size: 10Gi}}\n", Name(i), i%sites)
	}
	fmt.Fprintf(&b, "  primary: %s\n", Name(primary))
	return []byte(b.String())
}

// Name is the name of generated cluster i.
func Name(i int) string { return fmt.Sprintf("pg-%05d", i) }

// InSync is the snapshot of a world that matches d with live primary
// primary: every object as pgtopo writes it, every standby streaming from
// the primary on one system and timeline, every mark recorded.
func InSync(d *topology.Desired, primary string) *snapshot.Snapshot {
	snap := &snapshot.Snapshot{Topology: d.Name}
	for i, s := range d.Sites() {
		snap.Sites = append(snap.Sites, snapshot.SiteState{Name: s.Name, Context: s.Context, Reachable: true,
			NodeIPs: []string{fmt.Sprintf("10.%d.%d.1", i/250, i%250)}})
	}
	endpoint := func(i int) *snapshot.Endpoint {
		return &snapshot.Endpoint{Host: fmt.Sprintf("10.%d.%d.1", (i%len(snap.Sites))/250, (i%len(snap.Sites))%250), Port: 30000 + i}
	}
	var pep *snapshot.Endpoint
	for i, c := range d.Clusters {
		if c.Name == primary {
			pep = endpoint(i)
		}
	}
	const sysid = "7000000000000000001"
	for i, c := range d.Clusters {
		ep := endpoint(i)
		isPrimary := c.Name == primary
		spec := snapshot.Spec{Topology: d.Name, Instances: 1, TeamID: c.TeamID, Version: c.Version, Parameters: c.Parameters,
			VolumeSize: c.VolumeSize, Replication: snapshot.Replication{Enabled: true, ServiceType: d.ServiceType}}
		pg := &snapshot.PGState{SystemID: sysid, Timeline: 1, ServerVersion: 150004, HasMultiClusterTable: true}
		if isPrimary {
			spec.Instances = c.DeclaredInstances
			pg.CurrentLSN = 0x5000000
		} else {
			spec.Replication.IsReplica, spec.Replication.BootstrapSecret = true, d.Name+"-bootstrap"
			spec = spec.WithPeer(*pep)
			pg.InRecovery, pg.ReceiveLSN, pg.ReplayLSN = true, 0x5000000, 0x5000000
			pg.WalReceiver = &snapshot.WalReceiver{Status: "streaming", SenderHost: pep.Host, SenderPort: pep.Port, Timeline: 1}
		}
		snap.Clusters = append(snap.Clusters, snapshot.ClusterState{
			Name: c.Name, Site: c.Site.Name, Namespace: c.Namespace, Exists: true,
			Object: &snapshot.Object{Spec: spec, Marks: snapshot.Marks{Digest: d.Digest}, Status: "Running", Ready: true,
				ResourceVersion: fmt.Sprint(1000 + i)},
			Service:         &snapshot.Service{Type: "NodePort", NodePort: ep.Port},
			Endpoint:        ep,
			Credentials:     snapshot.SecretState{Name: "postgres." + c.Name + ".credentials", Exists: true, KeyedDigest: "k1", ResourceVersion: "7"},
			BootstrapSecret: snapshot.SecretState{Name: d.Name + "-bootstrap", Exists: true, KeyedDigest: "k1", ResourceVersion: "8"},
			PG:              pg,
		})
	}
	return snap
}
