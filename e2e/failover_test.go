package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
)

const drTopology = `apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata: {name: orders}
spec:
  postgres: {version: "15", parameters: {max_slot_wal_keep_size: 10GB, track_commit_timestamp: "on"}, tls: {ca: {configMap: {name: pglab-postgres-ca}}}}
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
	// The first session is given a loaded machine's patience: a connect
	// that times out once is no sign of the cluster refusing writes.
	var c *pgx.Conn
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; {
		if c, err = h.conn(site, cluster); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		h.t.Errorf("writer on %s: no session within 15s: %v", cluster, err)
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
	for _, want := range []string{"fence on return: orders-east refuses new writes", "divergence: orders-east wrote", "after the fork at"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("progress lacks %q:\n%s", want, r.stderr)
		}
	}
	if r.code != 0 {
		// Back promoted by its own Patroni, on a timeline of its own: the
		// rejoin stops after the fence; the rebuild, which deletes data, is
		// a step of its own in the next plan, under the rebuild consent.
		h.expect(r, 1, "rejoin")
		if !strings.Contains(r.stderr, "orders-east needs a rebuild") || strings.Contains(r.stderr, "deleted with its data") {
			t.Fatalf("the rejoin did not stop for a rebuild, or deleted the cluster itself:\n%s", r.stderr)
		}
		h.expect(h.pgtopo("diff", "-f", consented), 1, "orders-east needs a rebuild", "it stays fenced. A rebuild deletes its data, including", "--allow-rebuild orders-east")
		h.expect(h.pgtopo("diff", "-f", consented, "--allow-rebuild", "orders-east"), 4, "rebuild orders-east, the primary lost in failover epoch 1", "delete it with its volumes and data, including")
		r = h.pgtopo("apply", "-f", consented, "--allow-rebuild", "orders-east")
		h.expect(r, 0, "Apply complete", "rejoin")
		if !strings.Contains(r.stderr, "rebuild: orders-east deleted with its data") {
			t.Fatalf("the rebuild step did not rebuild:\n%s", r.stderr)
		}
	} else if !strings.Contains(r.stderr, "rejoined as a standby") {
		t.Fatalf("orders-east neither stopped for a rebuild nor rewound:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "orders-east streaming from orders-west") {
		t.Fatalf("progress lacks orders-east streaming from orders-west:\n%s", r.stderr)
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
	h.returnUnderTheLoop(west)
	h.noSecretsInOutput()
}

// takesWritesSQL: a new session may write (not in recovery, not fenced).
const takesWritesSQL = "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"

// returnUnderTheLoop loses east, the primary, again, fails over to west on
// the flag's consent, and brings east back under reconcile, its site's API
// a few seconds before its pods (as kubelets restart them), while a writer
// pinned to east's own endpoint commits whatever it can and a sampler asks
// every cluster every 100 ms whether it takes writes. The fence on return
// must hold from east's start: no write acknowledged on east after the
// failover, never two clusters taking writes, and what east wrote after
// the fork reported before it is demoted or rebuilt.
func (h *harness) returnUnderTheLoop(westFile string) {
	t := h.t
	dsn := map[string]string{}
	for _, site := range []string{"east", "west", "north"} {
		name := "orders-" + site
		host, port := h.lab.Endpoint(t, site, "db", name)
		dsn[name] = fmt.Sprintf("postgres://postgres:%s@%s:%d/postgres?sslmode=require&connect_timeout=2", h.lab.Password(t, site, "db", name), host, port)
	}
	w := h.startTimedWriter(t, "east", "orders-east")
	time.Sleep(time.Second)
	if err := lab.Fail(h.lab.Dir, "east"); err != nil {
		t.Fatal(err)
	}
	w.finish()
	h.expect(h.pgtopo("apply", "-f", westFile, "--accept-data-loss", "orders-east"), 0, "Apply complete")
	failedOver := time.Now()
	// The loop's file consents to rebuilds: the rebuild the returned
	// primary needs (back on a timeline of its own) is its own step.
	src, err := os.ReadFile(westFile)
	if err != nil {
		t.Fatal(err)
	}
	loopFile := filepath.Join(h.dir, "west-rebuild-allowed.yaml")
	if err := os.WriteFile(loopFile, []byte(strings.Replace(string(src), "maxLagBytes: 16Mi}", "maxLagBytes: 16Mi, rebuild: allow}", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	l := h.startLoop("-f", loopFile, "--interval", "1m")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ackedOnEast, samples atomic.Int64
	var twoWritable []string
	wg.Add(2)
	go func() { // the writer pinned to east
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err := pgx.Connect(ctx, dsn["orders-east"])
			cancel()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			for err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err = c.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", h.nextID.Add(1))
				cancel()
				if err == nil {
					ackedOnEast.Add(1)
				}
				time.Sleep(5 * time.Millisecond)
			}
			c.Close(context.Background())
		}
	}()
	go func() { // the sampler
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var writing []string
			for _, name := range []string{"orders-east", "orders-west", "orders-north"} {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				if c, err := pgx.Connect(ctx, dsn[name]); err == nil {
					var yes bool
					if c.QueryRow(ctx, takesWritesSQL).Scan(&yes) == nil && yes {
						writing = append(writing, name)
					}
					c.Close(context.Background())
				}
				cancel()
			}
			samples.Add(1)
			if len(writing) > 1 {
				twoWritable = append(twoWritable, time.Now().Format("15:04:05.000")+" "+strings.Join(writing, "+"))
			}
		}
	}()
	time.Sleep(2 * time.Second) // the loop's first cycle finds east away
	if err := lab.HealAfter(context.Background(), h.lab.Dir, "east", 8*time.Second); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, 4*time.Minute, "orders-east a standby of orders-west again", func() error {
		host, port := h.lab.Endpoint(t, "west", "db", "orders-west")
		got, err := h.sender("east", "orders-east")
		if err != nil || !strings.HasPrefix(got, fmt.Sprintf("streaming %s:%d", host, port)) {
			return fmt.Errorf("receiver %q (%v)", got, err)
		}
		return nil
	})
	close(stop)
	wg.Wait()

	log := strings.Join(l.raw, "\n")
	for _, line := range l.raw {
		if strings.Contains(line, "fence on return") || strings.Contains(line, "divergence:") || strings.Contains(line, "rebuild:") || strings.Contains(line, "rejoined") {
			t.Log(line)
		}
	}
	t.Logf("east back %s after the failover; %d samples", time.Since(failedOver).Round(time.Second), samples.Load())
	if n := ackedOnEast.Load(); n != 0 {
		t.Errorf("orders-east acknowledged %d writes after the failover to orders-west", n)
	}
	if len(twoWritable) > 0 {
		t.Errorf("two clusters took writes at %d of %d samples: %s", len(twoWritable), samples.Load(), strings.Join(twoWritable, ", "))
	}
	fenced := strings.Index(log, "fence on return: orders-east does not answer yet; fenced in its object")
	measured := strings.Index(log, "divergence: orders-east")
	demoted := strings.Index(log, "demote: orders-east")
	if i := strings.Index(log, "rebuild: orders-east deleted"); demoted < 0 || i >= 0 && i < demoted {
		demoted = i
	}
	answered := strings.Index(log, "site answers again")
	switch {
	case answered < 0 || fenced >= 0 && fenced < answered:
		t.Errorf("the loop did not see site east answer again (GET /readyz) before it fenced orders-east:\n%s", log)
	case fenced < 0:
		t.Errorf("the loop did not fence orders-east in its object before it answered:\n%s", log)
	case measured < fenced:
		t.Errorf("what orders-east wrote after the fork was not reported after its fence:\n%s", log)
	case demoted < measured:
		t.Errorf("orders-east was demoted or rebuilt before what it wrote after the fork was reported:\n%s", log)
	}
}

func closedAfter(d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	time.AfterFunc(d, func() { close(c) })
	return c
}
