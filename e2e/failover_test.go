package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
)

const drTopology = `apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata: {name: orders}
spec:
  postgres: {version: "15", parameters: {max_slot_wal_keep_size: 10GB, track_commit_timestamp: "on"}}
  replication: {serviceType: NodePort, maxLagBytes: 16Mi}
  sites:
    - {name: east, context: lab-east}
    - {name: west, context: lab-west}
    - {name: north, context: lab-north}
  clusters:
    - {name: orders-east, site: east, namespace: db, volume: {size: 1Gi}}
    - {name: orders-west, site: west, namespace: db, volume: {size: 1Gi}}
    - {name: orders-north, site: north, namespace: db, volume: {size: 1Gi}}
  primary: PRIMARY
`

// writeUntilError commits rows on one cluster until a commit fails or
// stop closes, and returns the acknowledged ids in commit order.
func (h *harness) writeUntilError(site, cluster string, stop <-chan struct{}) []int64 {
	c, err := h.conn(site, cluster)
	if err != nil {
		h.t.Error(err)
		return nil
	}
	defer c.Close(context.Background())
	var acked []int64
	for {
		select {
		case <-stop:
			return acked
		default:
		}
		id := h.nextID.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", id)
		cancel()
		if err != nil {
			return acked
		}
		acked = append(acked, id)
		time.Sleep(2 * time.Millisecond)
	}
}

// TestFailover drills the runbook's disaster recovery with pgtopo: the
// primary's site is lost; without consent the failover is refused and
// nothing changes; with the file's consent the standby is promoted and the
// third cluster follows it; the consent is then spent. When the lost site
// returns, its cluster is fenced before anything else, its divergence is
// reported, and it rejoins as a standby; a switchover back loses no row.
func TestFailover(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west", "north")
	file := func(name, body string) string {
		p := filepath.Join(h.dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	east := file("east.yaml", strings.Replace(drTopology, "PRIMARY", "orders-east", 1))
	west := file("west.yaml", strings.Replace(drTopology, "PRIMARY", "orders-west", 1))
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	h.createAcked("east", "orders-east")

	stop := make(chan struct{})
	result := make(chan []int64)
	go func() { result <- h.writeUntilError("east", "orders-east", stop) }()
	time.Sleep(1500 * time.Millisecond)
	failed := time.Now()
	if err := lab.Fail(h.lab.Dir, "east"); err != nil {
		t.Fatal(err)
	}
	close(stop)
	acked := <-result
	if len(acked) < 10 {
		t.Fatalf("the writer committed only %d rows on orders-east", len(acked))
	}

	// No consent: refused, in words, nothing changed.
	r := h.pgtopo("diff", "-f", west)
	h.expect(r, 1, "failover to orders-west needs consent to lose orders-east's writes",
		"orders-east (site east) is unreachable", "may be lost", "two primaries can exist until then")
	h.expect(h.pgtopo("apply", "-f", west), 1, "needs consent")
	if ok, _ := h.writable("west", "orders-west"); ok {
		t.Fatal("a refused failover promoted orders-west")
	}
	m := regexp.MustCompile(`spec.acceptDataLoss: (\{cluster: orders-east, systemIdentifier: "[0-9]+", timeline: [0-9]+\})`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("the refusal does not give the consent to add:\n%s", r.stdout)
	}
	consented := file("west-consent.yaml", strings.Replace(drTopology, "PRIMARY", "orders-west", 1)+"  acceptDataLoss: "+m[1]+"\n")
	wrong := file("west-wrong.yaml", strings.Replace(drTopology, "PRIMARY", "orders-west", 1)+
		"  acceptDataLoss: "+regexp.MustCompile(`timeline: [0-9]+`).ReplaceAllString(m[1], "timeline: 7")+"\n")
	h.expect(h.pgtopo("diff", "-f", wrong), 1, "does not consent to this failover", "timeline 7")
	h.expect(h.pgtopo("validate", consented), 0)

	start := time.Now()
	r = h.pgtopo("apply", "-f", consented)
	h.expect(r, 0, "Apply complete")
	recovery := time.Since(start)
	for _, want := range []string{"confirmed: orders-east unreachable through Kubernetes", "and through PostgreSQL", "failover recorded (epoch 1, consent: spec.acceptDataLoss in the file)", "failover orders-east → orders-west done"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("progress lacks %q:\n%s", want, r.stderr)
		}
	}
	t.Logf("failover: %s from apply start to converged (the site failed %s before)", recovery.Round(10*time.Millisecond), start.Sub(failed).Round(10*time.Millisecond))
	if ok, err := h.writable("west", "orders-west"); !ok {
		t.Fatalf("orders-west not writable after the failover: %v", err)
	}
	// Replay is in commit order: what west has is a prefix of what east
	// acknowledged; the rest is the loss the plan warned of.
	missing := h.missing("west", "orders-west", acked)
	if missing > 0 {
		if n := h.missing("west", "orders-west", acked[:len(acked)-int(missing)]); n != 0 {
			t.Fatalf("orders-west lacks %d rows that orders-east acknowledged before rows it has: not a prefix", n)
		}
	}
	t.Logf("%d rows acknowledged on orders-east, %d of them (the last) missing on orders-west", len(acked), missing)
	after := h.writeUntilError("west", "orders-west", closedAfter(500*time.Millisecond))
	labtest.Eventually(t, 30*time.Second, "orders-north has the rows written on orders-west", func() error {
		return h.hasRow("north", "orders-north", after[len(after)-1])
	})
	h.expect(h.pgtopo("diff", "-f", consented), 0, "No changes.", "spec.acceptDataLoss is spent", "still unreachable since failover epoch 1")

	// The lost site returns: fenced and rejoined before anything else.
	if err := lab.Heal(context.Background(), h.lab.Dir, "east"); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, 60*time.Second, "orders-east answers again", func() error {
		_, err := h.writable("east", "orders-east")
		return err
	})
	r = h.pgtopo("apply", "-f", consented)
	h.expect(r, 0, "Apply complete", "rejoin")
	for _, want := range []string{"fence on return: orders-east refuses new writes", "divergence: orders-east wrote", "after the fork at", "orders-east streaming from orders-west"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("progress lacks %q:\n%s", want, r.stderr)
		}
	}
	if !strings.Contains(r.stderr, "rebuild") && !strings.Contains(r.stderr, "rejoined as a standby") {
		t.Fatalf("orders-east neither rewound nor rebuilt:\n%s", r.stderr)
	}
	if ok, _ := h.writable("east", "orders-east"); ok {
		t.Fatal("orders-east is writable after its rejoin")
	}
	if got, err := h.sender("east", "orders-east"); err != nil || !strings.HasPrefix(got, "streaming") {
		t.Fatalf("orders-east does not stream: %q %v", got, err)
	}
	labtest.Eventually(t, 30*time.Second, "orders-east has the rows written on orders-west", func() error {
		return h.hasRow("east", "orders-east", after[len(after)-1])
	})
	h.expect(h.pgtopo("diff", "-f", consented), 0, "No changes.")

	// A switchover back to east loses nothing.
	w := h.startWriter()
	time.Sleep(time.Second)
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete", "switchover")
	time.Sleep(time.Second)
	w.finish()
	if n := h.missing("east", "orders-east", w.acked); n != 0 || len(w.acked) == 0 {
		t.Fatalf("switchover back: %d of %d acknowledged rows missing on orders-east", n, len(w.acked))
	}
	h.noSecretsInOutput()
}

func closedAfter(d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	time.AfterFunc(d, func() { close(c) })
	return c
}
