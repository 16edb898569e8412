package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/lab/labtest"
)

const threeSites = `apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata: {name: orders}
spec:
  postgres: {version: "15", parameters: {max_slot_wal_keep_size: 10GB}, tls: {ca: {configMap: {name: pglab-postgres-ca}}}}
  replication: {serviceType: NodePort, maxLagBytes: 16Mi}
  sites:
    - {name: east, context: lab-east}
    - {name: west, context: lab-west}
    - {name: south, context: lab-south}
  clusters:
    - {name: orders-east, site: east, namespace: db, instances: 2, volume: {size: 1Gi}}
    - {name: orders-west, site: west, namespace: db, instances: 2, volume: {size: 1Gi}}
    - {name: orders-south, site: south, namespace: db, instances: 1, volume: {size: 1Gi}}
  primary: PRIMARY
`

// sender says where a standby's WAL receiver streams from.
func (h *harness) sender(site, cluster string) (string, error) {
	c, err := h.conn(site, cluster)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var status, host string
	var port int
	if err := c.QueryRow(context.Background(), "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver").Scan(&status, &host, &port); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s:%d", status, host, port), nil
}

// hasRow reports whether the acked table on a cluster holds id.
func (h *harness) hasRow(site, cluster string, id int64) error {
	c, err := h.conn(site, cluster)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM acked WHERE id = $1", id).Scan(&n); err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("row %d not there yet", id)
	}
	return nil
}

// TestThreeSitesRepoint: with three sites, a switchover east → west also
// repoints the third cluster, south, to stream from the new primary, and
// rows written on the new primary reach both standbys.
func TestThreeSitesRepoint(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west", "south")
	file := func(primary string) string {
		p := filepath.Join(h.dir, "three-"+primary+".yaml")
		if err := os.WriteFile(p, []byte(strings.Replace(threeSites, "PRIMARY", primary, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	east, west := file("orders-east"), file("orders-west")
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	h.createAcked("east", "orders-east")

	eastHost, eastPort := h.lab.Endpoint(t, "east", "db", "orders-east")
	if s, err := h.sender("south", "orders-south"); err != nil || s != fmt.Sprintf("streaming %s:%d", eastHost, eastPort) {
		t.Fatalf("orders-south before the switchover: %q (%v), want streaming from orders-east at %s:%d", s, err, eastHost, eastPort)
	}

	h.expect(h.pgtopo("diff", "-f", west), 4, "repoint", "orders-south")
	w := h.startWriter()
	time.Sleep(time.Second)
	r := h.pgtopo("apply", "-f", west)
	w.finish()
	h.expect(r, 0, "Apply complete", "switchover orders-east → orders-west")
	if !strings.Contains(r.stderr, "repoint orders-south") {
		t.Fatalf("no repoint step ran:\n%s", r.stderr)
	}
	if w.bothSeen.Load() != 0 {
		t.Fatalf("two clusters were writable at once in %d samples", w.bothSeen.Load())
	}
	if missing := h.missing("west", "orders-west", w.acked); missing != 0 || len(w.acked) == 0 {
		t.Fatalf("%d of %d acknowledged rows missing on orders-west", missing, len(w.acked))
	}

	westHost, westPort := h.lab.Endpoint(t, "west", "db", "orders-west")
	want := fmt.Sprintf("streaming %s:%d", westHost, westPort)
	for site, cluster := range map[string]string{"south": "orders-south", "east": "orders-east"} {
		labtest.Eventually(t, 60*time.Second, cluster+" streaming from orders-west", func() error {
			s, err := h.sender(site, cluster)
			if err != nil {
				return err
			}
			if s != want {
				return fmt.Errorf("wal receiver: %s, want %s", s, want)
			}
			return nil
		})
	}
	// WAL written on the new primary reaches both standbys.
	c, err := h.conn("west", "orders-west")
	if err != nil {
		t.Fatal(err)
	}
	const marker = int64(1) << 40
	if _, err := c.Exec(context.Background(), "INSERT INTO acked VALUES ($1)", marker); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	for site, cluster := range map[string]string{"south": "orders-south", "east": "orders-east"} {
		labtest.Eventually(t, 30*time.Second, "the marker row on "+cluster, func() error { return h.hasRow(site, cluster, marker) })
		if missing := h.missing(site, cluster, w.acked); missing != 0 {
			t.Fatalf("%d acknowledged rows missing on %s", missing, cluster)
		}
	}
	h.expect(h.pgtopo("diff", "-f", west), 0, "No changes.")

	// Two runs 30 ms apart whose files name different primaries: the first
	// to take the lock switches over; the other finds the primary moved
	// after its lock and refuses, rather than make a second outage from a
	// plan made before the first.
	east, south := file("orders-east"), file("orders-south")
	runs := make(chan run, 2)
	go func() { runs <- h.pgtopo("apply", "-f", east) }()
	time.Sleep(30 * time.Millisecond)
	go func() { runs <- h.pgtopo("apply", "-f", south) }()
	a, b := <-runs, <-runs
	if a.code != 0 {
		a, b = b, a
	}
	if a.code != 0 || b.code != 1 {
		t.Fatalf("exits %d and %d, want one 0 and one 1:\n%s\n%s\n%s\n%s", a.code, b.code, a.stdout, a.stderr, b.stdout, b.stderr)
	}
	// Planned before its lock, it may also find the other run's
	// switchover under way (the journal on both clusters) and refuse then.
	if !strings.Contains(b.stderr+b.stdout, "another run changed the primary from orders-west to") &&
		!strings.Contains(b.stdout, "has an unfinished switchover orders-west →") &&
		!regexp.MustCompile(`a switchover orders-west → orders-(east|south) is unfinished`).MatchString(b.stdout) {
		t.Fatalf("the refused run does not say another run moved the primary:\n%s\n%s", b.stdout, b.stderr)
	}
	if strings.Contains(b.stderr, "step 2/") {
		t.Fatalf("the refused run ran a step past its lock:\n%s", b.stderr)
	}
	for _, line := range strings.Split(b.stdout+b.stderr, "\n") {
		if strings.Contains(line, "another run") || strings.Contains(line, "unfinished") {
			t.Logf("concurrent runs: the refused one said: %s", line)
		}
	}

	t.Run("settings that need a restart, in the order replay needs", func(t *testing.T) {
		h.expect(h.pgtopo("apply", "-f", east), 0) // whichever run won, east is the primary again
		h.settingsThatNeedARestart(t, threeSites)
	})
}
