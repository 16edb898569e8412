package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/snapshot"
)

// TestPatroniBootstrapPitfall is the widely reported Patroni multi-DC
// pitfall, for real: dc2's cluster was made a standby of dc1 by hand, by
// base backup with no slot on dc1; while it was away, dc1 wrote and
// recycled the WAL it needs. pgtopo refuses to adopt it, with the reason,
// at once, and changes nothing (no slot, no standby created in east).
func TestPatroniBootstrapPitfall(t *testing.T) {
	t.Parallel()
	root, err := labtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	l := labtest.StartConfig(t, lab.Config{Sites: []string{"east"}, PatroniSites: []string{"dc1", "dc2"},
		PatroniStandbyOf: map[string]string{"dc2": "dc1"}})
	m := &mixed{harness: &harness{t: t, lab: l, bin: filepath.Join(root, "bin", "pgtopo"), dir: t.TempDir()}}
	if m.creds, err = lab.PatroniCredentials(l.Dir); err != nil {
		t.Fatal(err)
	}
	m.credsF = lab.Paths{Dir: l.Dir}.PatroniEnvFile()
	dc1, _ := l.Site("dc1")
	dc2, _ := l.Site("dc2")
	if m.dc1, err = l.PatroniCluster(dc1); err != nil {
		t.Fatal(err)
	}
	c2, err := l.PatroniCluster(dc2)
	if err != nil {
		t.Fatal(err)
	}

	// dc2 away (every process of its site stopped) while dc1 writes more
	// WAL than wal_keep_size (128MB) keeps, until a checkpoint has removed
	// the segment dc2 would ask for next.
	var needs string
	func() {
		conn, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://%s:%s@%s:5432/postgres?sslmode=require&connect_timeout=3",
			m.creds[lab.EnvPGUser], m.creds[lab.EnvPGPassword], c2.Members[0]))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		// pg_walfile_name does not run in recovery: name the segment
		// from the receive position (timeline 1, 16 MB segments).
		var at string
		if err := conn.QueryRow(context.Background(), "SELECT pg_last_wal_receive_lsn()::text").Scan(&at); err != nil {
			t.Fatal(err)
		}
		lsn, err := snapshot.ParseLSN(at)
		if err != nil {
			t.Fatal(err)
		}
		// The walsender may hold the current segment open and the next
		// two in flight: removing those is not enough to strand dc2.
		beyond := uint64(lsn) + 3<<24
		needs = fmt.Sprintf("%08X%08X%08X", 1, beyond>>32, (beyond&0xFFFFFFFF)>>24)
	}()
	resume := freeze(t, l.Dir, "dc2", "")
	defer resume()
	c, err := m.connect("orders-dc1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// dc1's own replica must stream first: until it does, the slot its
	// leader keeps for it holds every segment, and nothing is removed.
	labtest.Eventually(t, 60*time.Second, "dc1's replica streaming through its member slot", func() error {
		var active, all int
		if err := c.QueryRow(ctx, "SELECT count(*) FILTER (WHERE active), count(*) FROM pg_replication_slots").Scan(&active, &all); err != nil {
			return err
		}
		if all == 0 || active < all {
			return fmt.Errorf("%d of %d slots on dc1 active", active, all)
		}
		return nil
	})
	if _, err := c.Exec(ctx, "CREATE TABLE churn (n int)"); err != nil {
		t.Fatal(err)
	}
	oldest := ""
	churnWAL(t, c, func() bool {
		if err := c.QueryRow(ctx, "SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'").Scan(&oldest); err != nil {
			t.Fatal(err)
		}
		return oldest > needs
	})
	c.Close(ctx)
	if oldest <= needs {
		t.Fatalf("dc1 still keeps %s, which dc2 needs (%s): the drill did not remove it", oldest, needs)
	}
	t.Logf("dc2 stranded: dc1's oldest WAL segment is now %s, past %s (three beyond dc2's receive position)", oldest, needs)
	resume()
	// dc2 comes back asking for WAL dc1 no longer has.
	labtest.Eventually(t, 60*time.Second, "dc2 not streaming for 3 s", func() error {
		for range 6 {
			if st := receiverStatus(m, c2); st == "streaming" {
				return fmt.Errorf("dc2 streams")
			}
			time.Sleep(500 * time.Millisecond)
		}
		return nil
	})

	topo := pitfallTopology(t, m, c2)
	began := time.Now()
	r := m.run("diff", "-f", topo)
	took := time.Since(began)
	if r.code != 1 || !strings.Contains(r.stdout, "orders-dc2 is a standby that does not stream from orders-dc1") ||
		!strings.Contains(r.stdout, "multi-DC bootstrap pitfall") {
		t.Fatalf("exit %d, want 1 with the pitfall's reason:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if took > 30*time.Second {
		t.Fatalf("the refusal took %s", took)
	}
	r = m.run("apply", "-f", topo)
	if r.code != 1 || !strings.Contains(r.stderr+r.stdout, "pitfall") {
		t.Fatalf("apply: exit %d, want a refusal:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// Nothing changed: no slot for anyone on dc1, no standby in east.
	var slots int
	m.query("orders-dc1", "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'xdc_%'", &slots)
	if slots != 0 {
		t.Fatalf("%d xdc_ slots on dc1 after a refused plan", slots)
	}
	if _, err := m.lab.Kube["east"].CoreV1().Services("db").Get(ctx, "orders-east", metav1.GetOptions{}); err == nil {
		t.Fatal("east's cluster was created by a refused plan")
	}
	// Nor is there a section to bootstrap dc2 with while dc1 keeps no slot
	// for it: a base backup without one is how the pitfall begins.
	if rr := m.run("render", "patroni-bootstrap", "orders-dc2", "-f", topo); rr.code != 1 || !strings.Contains(rr.stderr, "keeps no slot xdc_orders_dc2") || rr.stdout != "" {
		t.Fatalf("render for dc2: exit %d, want 1 saying dc1 keeps no slot for it, and nothing on stdout:\n%s\n%s", rr.code, rr.stdout, rr.stderr)
	}
	t.Logf("refused in %s: %s", took.Round(time.Millisecond), firstLine(r.stdout, "pitfall"))
	m.noPatroniSecrets()
}

// receiverStatus is a Patroni cluster's WAL receiver status through its
// first member ("none" when it has no receiver).
func receiverStatus(m *mixed, c lab.PatroniCluster) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s:5432/postgres?sslmode=require&connect_timeout=3",
		m.creds[lab.EnvPGUser], m.creds[lab.EnvPGPassword], c.Members[0]))
	if err != nil {
		return "unreachable"
	}
	defer conn.Close(ctx)
	var st string
	if conn.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&st) != nil {
		return "unknown"
	}
	return st
}

// pitfallTopology is lab-mixed.yaml for this lab, with dc2's cluster as
// a standby.
func pitfallTopology(t *testing.T, m *mixed, c2 lab.PatroniCluster) string {
	path := m.topology("orders-dc1")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(c2.Endpoint, ":")
	s := strings.Replace(string(data), "    - name: east\n", "    - name: dc2\n      kind: patroni\n    - name: east\n", 1)
	s = strings.Replace(s, "    - name: orders-east\n", fmt.Sprintf(`    - name: orders-dc2
      site: dc2
      patroni:
        scope: orders-dc2
        members:
          - {host: %s, port: 8008}
          - {host: %s, port: 8008}
      endpoint: {host: %s, port: %s}
    - name: orders-east
`, c2.Members[0], c2.Members[1], host, port), 1)
	out := filepath.Join(m.dir, "pitfall.yaml")
	if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func firstLine(s, containing string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, containing) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
