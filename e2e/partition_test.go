package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/flavor/alauda"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/snapshot"
)

// applyKilledAfter runs apply and SIGKILLs it at its first event of phase
// after (matching message text, when given); it returns the events seen.
func (h *harness) applyKilledAfter(after apply.EventType, text string, args ...string) []apply.Event {
	h.t.Helper()
	cmd := exec.Command(h.bin, append([]string{"apply", "--progress-format", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+lab.Paths{Dir: h.lab.Dir}.Kubeconfig())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	var seen []apply.Event
	var lines []string
	sc := bufio.NewScanner(stderr)
	killed := false
	for sc.Scan() {
		lines = append(lines, sc.Text())
		ev, ok := parseEvent(sc.Text())
		if !ok {
			continue
		}
		seen = append(seen, ev)
		if ev.Type == after && strings.Contains(ev.Message, text) {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			killed = true
			break
		}
	}
	_ = cmd.Wait()
	if !killed {
		h.t.Fatalf("apply ended before a %q event:\n%s", after, strings.Join(lines, "\n"))
	}
	return seen
}

// failoverPhase reads the failover record's phase on a CR ("" when none).
func (h *harness) failoverPhase(site, cluster string) string {
	u, err := h.lab.Dyn[site].Resource(postgresqlGVR).Namespace("db").Get(context.Background(), cluster, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	if f := alauda.Parse(u).Marks.Failover; f != nil {
		return f.Phase
	}
	return ""
}

// eventAt is the time of the first event of phase whose message holds text.
func eventAt(t *testing.T, stderr string, phase apply.EventType, text string) time.Time {
	t.Helper()
	for _, line := range strings.Split(stderr, "\n") {
		if ev, ok := parseEvent(line); ok && ev.Type == phase && strings.Contains(ev.Message, text) {
			return ev.Time
		}
	}
	t.Fatalf("no %s event with %q:\n%s", phase, text, stderr)
	return time.Time{}
}

// insideConn reaches a cluster's leader at its pod address, as a client
// inside its site does (past the site's Service proxies).
func (h *harness) insideConn(site, cluster string) (*pgx.Conn, error) {
	pod, err := h.lab.Kube[site].CoreV1().Pods("db").Get(context.Background(), cluster+"-0", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pw := h.lab.Password(h.t, site, "db", cluster)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s:5432/postgres?sslmode=require&connect_timeout=3", pw, pod.Status.PodIP))
}

// TestPartitionAndKilledFailovers: the primary's site is cut off, not lost;
// a writer inside it goes on committing. A failover on the flag's consent
// is killed right after it recorded the consent and re-run without it: it
// resumes from the record. Two primaries exist until the partition heals
// (on different timelines); then the old one is fenced first, its rows are
// reported as divergent and are not on the new primary, and it rejoins by
// pg_rewind. Then the new primary's site is lost and a failover back is
// killed after the promote write, resumed, and the returned site rebuilt.
func TestPartitionAndKilledFailovers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west", "north")
	file := func(primary string) string {
		p := filepath.Join(h.dir, primary+".yaml")
		if err := os.WriteFile(p, []byte(strings.Replace(drTopology, "PRIMARY", primary, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	east, west := file("orders-east"), file("orders-west")
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	h.createAcked("east", "orders-east")

	inside, err := h.insideConn("east", "orders-east")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	result := make(chan []int64)
	go func() {
		defer inside.Close(context.Background())
		var acked []int64
		for {
			select {
			case <-stop:
				result <- acked
				return
			default:
			}
			id := h.nextID.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := inside.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", id)
			cancel()
			if err != nil {
				<-stop
				result <- acked
				return
			}
			acked = append(acked, id)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	if err := lab.Partition(h.lab.Dir, "east"); err != nil {
		t.Fatal(err)
	}
	partitioned := time.Now()

	// Killed once the consent is recorded: re-run without the flag, the
	// record is the consent.
	h.applyKilledAfter(apply.EventJournal, "failover recorded", "-f", west, "--accept-data-loss", "orders-east")
	if p := h.failoverPhase("west", "orders-west"); p != snapshot.FailoverPromoting {
		t.Fatalf("killed after the record, the record on orders-west is at %q", p)
	}
	r := h.pgtopo("apply", "-f", west, "--progress-format", "json")
	h.expect(r, 0, "Apply complete")
	if !strings.Contains(r.stderr, "resuming failover orders-east → orders-west (epoch 1") {
		t.Fatalf("the re-run did not resume from the record:\n%s", r.stderr)
	}
	promoted := eventAt(t, r.stderr, apply.EventReached, "orders-west writable")
	t.Logf("failover under partition, killed and resumed: orders-west writable %s after the partition began", promoted.Sub(partitioned).Round(10*time.Millisecond))

	// Two primaries now, on different timelines.
	time.Sleep(time.Second)
	var eastTL, westTL int
	if c, err := h.insideConn("east", "orders-east"); err == nil {
		_ = c.QueryRow(context.Background(), "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&eastTL)
		c.Close(context.Background())
	}
	if c, err := h.conn("west", "orders-west"); err == nil {
		_ = c.QueryRow(context.Background(), "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int").Scan(&westTL)
		c.Close(context.Background())
	}
	if eastTL == 0 || eastTL == westTL {
		t.Fatalf("two primaries on timelines %d and %d", eastTL, westTL)
	}

	healed := time.Now()
	if err := lab.Heal(context.Background(), h.lab.Dir, "east"); err != nil {
		t.Fatal(err)
	}
	r = h.pgtopo("apply", "-f", west, "--progress-format", "json")
	close(stop)
	insideAcked := <-result
	h.expect(r, 0, "Apply complete")
	fenced := eventAt(t, r.stderr, apply.EventFence, "fence on return")
	t.Logf("split-brain window: %s (orders-west writable at %s, orders-east fenced at %s, %s after the partition healed)",
		fenced.Sub(promoted).Round(10*time.Millisecond), promoted.Format("15:04:05.000"), fenced.Format("15:04:05.000"), fenced.Sub(healed).Round(10*time.Millisecond))
	if !strings.Contains(r.stderr, "divergence: orders-east wrote") || !strings.Contains(r.stderr, "(its last commit)") || !strings.Contains(r.stderr, "rejoined as a standby of orders-west") {
		t.Fatalf("want the divergence reported and a rejoin by rewind:\n%s", r.stderr)
	}
	// What east took during the split is not on west: never merged. Replay
	// is in commit order, so what west lacks is a suffix.
	missing := h.missing("west", "orders-west", insideAcked)
	if missing == 0 || missing == int64(len(insideAcked)) {
		t.Fatalf("of %d rows the inside writer committed, %d are missing on orders-west: want some of each", len(insideAcked), missing)
	}
	afterFork := insideAcked[len(insideAcked)-int(missing):]
	if n := h.missing("west", "orders-west", insideAcked[:len(insideAcked)-int(missing)]); n != 0 {
		t.Fatalf("orders-west lacks %d rows committed before the fork", n)
	}
	t.Logf("the inside writer committed %d rows on orders-east; %d after the fork, reported as divergent and not on orders-west", len(insideAcked), len(afterFork))
	labtest.Eventually(t, 60*time.Second, "orders-east streams from orders-west", func() error {
		got, err := h.sender("east", "orders-east")
		if err == nil && !strings.HasPrefix(got, "streaming") {
			err = fmt.Errorf("%s", got)
		}
		return err
	})
	if err := h.hasRow("east", "orders-east", afterFork[0]); err == nil {
		t.Fatalf("row %d, written on orders-east after the fork, survived its rewind", afterFork[0])
	}
	// The fence on return must not outlive the rejoin: it would refuse
	// writes the next time orders-east is primary (below).
	t.Logf("fence lifted by pgtopo after the rejoin (not by pg_rewind's copy of postgresql.auto.conf): %v", strings.Contains(r.stderr, "unfence: orders-east"))
	if fenced, err := h.readOnlyDefault("east", "orders-east"); fenced || err != nil {
		t.Fatalf("orders-east still starts sessions read-only after its rejoin (%v)", err)
	}
	h.expect(h.pgtopo("diff", "-f", west), 0, "No changes.")

	// The new primary's site is lost; a failover back is killed after its
	// promote write and resumed; the returned site is rebuilt.
	if err := lab.Fail(h.lab.Dir, "west"); err != nil {
		t.Fatal(err)
	}
	h.applyKilledAfter(apply.EventPromote, "promote", "-f", east, "--accept-data-loss", "orders-west")
	r = h.pgtopo("apply", "-f", east, "--progress-format", "json")
	h.expect(r, 0, "Apply complete")
	if !strings.Contains(r.stderr, "resuming failover orders-west → orders-east (epoch 2") {
		t.Fatalf("the re-run did not resume failover epoch 2:\n%s", r.stderr)
	}
	if ok, err := h.writable("east", "orders-east"); !ok {
		t.Fatalf("orders-east not writable: %v", err)
	}
	if rows := h.writeUntilError("east", "orders-east", closedAfter(200*time.Millisecond)); len(rows) == 0 {
		t.Fatal("orders-east, primary again, commits nothing")
	}
	if err := lab.Heal(context.Background(), h.lab.Dir, "west"); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, 60*time.Second, "orders-west answers again", func() error {
		_, err := h.writable("west", "orders-west")
		return err
	})
	// Back promoted by its own Patroni: fenced and measured, then stopped
	// for a rebuild, which the next run does as a step of its own on the
	// flag's consent.
	r = h.pgtopo("apply", "-f", east, "--progress-format", "json")
	if !strings.Contains(r.stderr, "fence on return: orders-west") {
		t.Fatalf("orders-west not fenced on return:\n%s", r.stderr)
	}
	if r.code != 0 {
		h.expect(r, 1, "rejoin")
		if !strings.Contains(r.stderr, "orders-west needs a rebuild") {
			t.Fatalf("the rejoin failed for another reason than a rebuild:\n%s", r.stderr)
		}
		h.expect(h.pgtopo("apply", "-f", east, "--allow-rebuild", "orders-west"), 0, "Apply complete", "rebuild orders-west, the primary lost in failover epoch 2")
	}
	h.expect(h.pgtopo("diff", "-f", east), 0, "No changes.")
	h.noSecretsInOutput()
}
