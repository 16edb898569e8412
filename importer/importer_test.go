package importer

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var (
	east = topology.Site{Name: "east", Context: "prod-east"}
	west = topology.Site{Name: "west", Context: "prod-west"}
)

// cluster is a found cluster object; sysID "" means its database did not
// answer.
func cluster(site topology.Site, name, sysID string, replica bool, peer string, mod ...func(*snapshot.Spec)) Found {
	spec := snapshot.Spec{Instances: 1, TeamID: "ACID", Version: "15", VolumeSize: "50Gi",
		Parameters:  map[string]string{"max_slot_wal_keep_size": "10GB"},
		Replication: snapshot.Replication{Enabled: true, IsReplica: replica, ServiceType: "NodePort"}}
	if replica {
		host, port, _ := strings.Cut(peer, ":")
		spec.Replication.PeerHost = host
		spec.Replication.PeerPort, _ = strconv.Atoi(port)
		spec.Replication.BootstrapSecret = "standby-bootstrap-secret"
	} else {
		spec.Instances = 2
	}
	for _, m := range mod {
		m(&spec)
	}
	st := snapshot.ClusterState{Name: name, Site: site.Name, Namespace: "db", Exists: true, Object: &snapshot.Object{Spec: spec}}
	if sysID != "" {
		st.PG = &snapshot.PGState{SystemID: sysID, InRecovery: replica}
	} else {
		st.PGError = "connection refused"
	}
	return Found{Site: site, State: st}
}

var dc1 = topology.Site{Name: "dc1", Kind: topology.SitePatroni}

// patroniCluster is a Patroni cluster the file named, observed as the
// Patroni flavor reads it (its role alone).
func patroniCluster(name, sysID string, replica bool, peer string) Found {
	spec := snapshot.Spec{Flavor: snapshot.FlavorPatroni, Replication: snapshot.Replication{Enabled: true, IsReplica: replica}}
	if replica {
		host, port, _ := strings.Cut(peer, ":")
		spec.Replication.PeerHost = host
		spec.Replication.PeerPort, _ = strconv.Atoi(port)
	}
	st := snapshot.ClusterState{Name: name, Site: dc1.Name, Namespace: name, Exists: true, Object: &snapshot.Object{Spec: spec},
		PG: &snapshot.PGState{SystemID: sysID, InRecovery: replica, ServerVersion: 150004}}
	members := []topology.Endpoint{{Host: "10.0.9.1", Port: 8008}, {Host: "10.0.9.2", Port: 8008}}
	return at(Found{Site: dc1, State: st, Patroni: &topology.PatroniCluster{Scope: name, Members: members}}, "10.0.9.10", 5432)
}

func at(f Found, host string, port int) Found {
	f.State.Endpoint = &snapshot.Endpoint{Host: host, Port: port}
	return f
}

func TestPairs(t *testing.T) {
	ordersEast := at(cluster(east, "orders-east", "7001", false, ""), "10.0.1.1", 31001)
	ordersWest := cluster(west, "orders-west", "7001", true, "10.0.1.1:31001")
	for _, tc := range []struct {
		name    string
		found   []Found
		pairs   []string // name: primary ← standbys
		skipped []string
		notes   []string
	}{
		{name: "a runbook pair", found: []Found{ordersEast, ordersWest}, pairs: []string{"orders: orders-east ← orders-west"}},
		{name: "a standby of another database by its peer",
			found:   []Found{ordersEast, cluster(west, "orders-west", "7999", true, "10.0.1.1:31001")},
			skipped: []string{"not orders-east's 7001: another database", "a primary no standby follows"}},
		{name: "its database away: paired by its peer, said so",
			found: []Found{ordersEast, cluster(west, "orders-west", "", true, "10.0.1.1:31001")},
			pairs: []string{"orders: orders-east ← orders-west"}, notes: []string{"paired by its peer alone"}},
		{name: "away and its peer no primary",
			found:   []Found{ordersEast, cluster(west, "orders-west", "", true, "10.9.9.9:31001")},
			skipped: []string{"did not answer (connection refused) and whose peer 10.9.9.9:31001 is no primary found"}},
		{name: "by system identifier, through another node on the same port: the primary's endpoint is the peer",
			found: []Found{ordersEast, cluster(west, "orders-west", "7001", true, "10.0.1.2:31001")},
			pairs: []string{"orders: orders-east ← orders-west"}},
		{name: "by system identifier, the peer elsewhere: repointed, said so",
			found: []Found{ordersEast, cluster(west, "orders-west", "7001", true, "10.0.1.9:5432")},
			pairs: []string{"orders: orders-east ← orders-west"}, notes: []string{"streams from 10.0.1.9:5432; pgtopo reaches orders-east at 10.0.1.1:31001 and will point it there"}},
		{name: "a standby in the primary's own site is no DR pair",
			found:   []Found{ordersEast, cluster(east, "orders-copy", "7001", true, "10.0.1.1:31001")},
			skipped: []string{"orders-copy in site east: a standby whose system identifier 7001 no primary found in another site shares", "a primary no standby follows"}},
		{name: "replication not enabled, managed already, a primary in recovery",
			found: []Found{
				cluster(east, "plain", "7100", false, "", func(s *snapshot.Spec) { s.Replication.Enabled = false }),
				cluster(east, "billing-east", "7200", false, "", func(s *snapshot.Spec) { s.Topology = "billing" }),
				func() Found { f := cluster(east, "odd", "7300", false, ""); f.State.PG.InRecovery = true; return f }(),
				func() Found {
					f := cluster(east, "adopted", "7400", false, "")
					f.State.Object.Marks.Revision = "c0ffee"
					return f
				}(),
			},
			skipped: []string{"clusterReplication is not enabled", "already managed by topology billing", "its database is in recovery", "already managed by pgtopo (its object carries a recorded c0ffee)"}},
		{name: "settings that differ are noted",
			found: []Found{ordersEast, cluster(west, "orders-west", "7001", true, "10.0.1.1:31001", func(s *snapshot.Spec) {
				s.Parameters = map[string]string{"work_mem": "64MB"}
				s.TeamID = "OPS"
			})},
			pairs: []string{"orders: orders-east ← orders-west"}, notes: []string{"teamId \"OPS\"", "parameters differ"}},
		{name: "a Patroni primary the file names, an operator standby of it",
			found: []Found{patroniCluster("orders-dc1", "7001", false, ""), cluster(west, "orders-west", "7001", true, "10.0.9.10:5432")},
			pairs: []string{"orders: orders-dc1 ← orders-west"}},
		{name: "a Patroni primary's settings are its own: not compared",
			found: []Found{patroniCluster("orders-dc1", "7001", false, ""), cluster(west, "orders-west", "7001", true, "10.0.9.10:5432", func(s *snapshot.Spec) {
				s.TeamID = "OPS"
			})},
			pairs: []string{"orders: orders-dc1 ← orders-west"}},
		{name: "a Patroni standby of an operator primary",
			found: []Found{ordersEast, patroniCluster("orders-dc1", "7001", true, "10.0.1.1:31001")},
			pairs: []string{"orders: orders-east ← orders-dc1"}},
		{name: "a Patroni standby of another database",
			found:   []Found{ordersEast, patroniCluster("orders-dc1", "7999", true, "10.0.1.1:31001")},
			skipped: []string{"Patroni cluster orders-dc1 in site dc1: a standby of db/orders-east in site east by its peer 10.0.1.1:31001, but its system identifier 7999"}},
		{name: "two pairs, names by common start; a name taken gets a number",
			found: []Found{ordersEast, ordersWest,
				at(cluster(east, "orders-a", "7002", false, ""), "10.0.1.1", 31002), cluster(west, "orders-b", "7002", true, "10.0.1.1:31002"),
				at(cluster(east, "pg1", "7003", false, ""), "10.0.1.1", 31003), cluster(west, "hotstandby", "7003", true, "10.0.1.1:31003")},
			pairs: []string{"orders: orders-east ← orders-west", "orders-2: orders-a ← orders-b", "pg1: pg1 ← hotstandby"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := Pairs(tc.found)
			var got, notes []string
			for _, p := range res.Pairs {
				var ss []string
				for _, s := range p.Standbys {
					ss = append(ss, s.State.Name)
				}
				got = append(got, p.Name+": "+p.Primary.State.Name+" ← "+strings.Join(ss, ", "))
				notes = append(notes, p.Notes...)
			}
			if strings.Join(got, "\n") != strings.Join(tc.pairs, "\n") {
				t.Fatalf("pairs:\n%s\nwant:\n%s\nskipped: %q", strings.Join(got, "\n"), strings.Join(tc.pairs, "\n"), res.Skipped)
			}
			contains(t, "skipped", res.Skipped, tc.skipped)
			contains(t, "notes", notes, tc.notes)
		})
	}
}

func contains(t *testing.T, what string, got, want []string) {
	t.Helper()
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("%s lack %q:\n%s", what, w, all)
		}
	}
	if len(want) == 0 && len(got) > 0 {
		t.Errorf("%s, want none:\n%s", what, all)
	}
}

// The document of a pair validates, says the pair as it runs, and is
// stable (golden).
func TestDocument(t *testing.T) {
	v, err := schema.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	for name, found := range map[string][]Found{
		"patroni-primary": {patroniCluster("orders-dc1", "7001", false, ""), cluster(west, "orders-west", "7001", true, "10.0.9.10:5432")},
		"patroni-standby": {at(cluster(east, "orders-east", "7001", false, ""), "10.0.1.1", 31001), patroniCluster("orders-dc1", "7001", true, "10.0.1.1:31001"),
			cluster(west, "orders-west", "7001", true, "10.0.1.1:31001")},
		"runbook-pair": {at(cluster(east, "orders-east", "7001", false, ""), "10.0.1.1", 31001), cluster(west, "orders-west", "7001", true, "10.0.1.1:31001")},
		"other-node": {at(cluster(east, "orders-east", "7001", false, ""), "10.0.1.1", 31001), cluster(west, "orders-west", "7001", true, "10.0.1.2:31001",
			func(s *snapshot.Spec) { s.Parameters = nil })},
	} {
		t.Run(name, func(t *testing.T) {
			res := Pairs(found)
			if len(res.Pairs) != 1 {
				t.Fatalf("pairs %+v skipped %q", res.Pairs, res.Skipped)
			}
			tls := &topology.PostgresTLS{Mode: topology.TLSVerifyFull, CA: &topology.CASource{ConfigMap: &topology.KeyRef{Name: "postgres-ca"}}}
			doc := res.Pairs[0].Document(Options{TLS: tls})
			top, fs, err := v.Load(name+".yaml", doc)
			if err != nil || top == nil {
				t.Fatalf("the document does not validate: %v %v\n%s", err, fs, doc)
			}
			d, err := top.Desired()
			if err != nil {
				t.Fatal(err)
			}
			if d.BootstrapSecret != "standby-bootstrap-secret" || d.Primary().Name != res.Pairs[0].Primary.State.Name || d.TLS.CA == nil || d.Clusters[0].Version != "15" {
				t.Fatalf("read back: %+v", d)
			}
			for _, c := range d.Clusters {
				if (c.Name == "orders-dc1") != c.IsPatroni() || c.IsPatroni() && (c.Endpoint == nil || len(c.Patroni.Members) != 2) {
					t.Fatalf("read back %s: %+v", c.Name, c)
				}
			}
			golden := filepath.Join("testdata", name+".yaml")
			if *update {
				if err := os.WriteFile(golden, doc, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test ./importer -update writes it)", err)
			}
			if string(want) != string(doc) {
				t.Fatalf("%s differs (go test ./importer -update rewrites it):\n%s", golden, doc)
			}
		})
	}
}
