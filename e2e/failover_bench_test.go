package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
)

// timedWriter commits rows on one cluster until stopped or a commit
// fails, remembering when each was acknowledged.
type timedWriter struct {
	mu    sync.Mutex
	ids   []int64
	acked []time.Time
	stop  chan struct{}
	done  chan struct{}
}

func (h *harness) startTimedWriter(b testing.TB, site, cluster string) *timedWriter {
	w := &timedWriter{stop: make(chan struct{}), done: make(chan struct{})}
	c, err := h.conn(site, cluster)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer c.Close(context.Background())
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			id := h.nextID.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := c.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", id)
			cancel()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.ids, w.acked = append(w.ids, id), append(w.acked, time.Now())
			w.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return w
}

func (w *timedWriter) finish() { close(w.stop); <-w.done }

// after counts the rows acknowledged after t.
func (w *timedWriter) after(t time.Time) int64 {
	var n int64
	for _, at := range w.acked {
		if at.After(t) {
			n++
		}
	}
	return n
}

var mayBeLost = regexp.MustCompile(`committed after (\S+) \(the last commit`)

// BenchmarkFailover compares, on one lab and run, pgtopo's failover with
// the runbook's manual one as a script (patch the standby to primary):
// recovery time from the start to the new primary writable (goal: pgtopo
// within 1.5x while doing every check), rows acknowledged on the lost
// primary and missing afterwards against pgtopo's stated bound (goal:
// never more), and, under reconcile --interval 1m, the time from the lost
// site answering again to its old primary fenced (goal: within 10 s).
func BenchmarkFailover(b *testing.B) {
	benchIdle(b)
	h := newHarness(b, "east", "west", "north")
	file := func(primary string) string {
		p := filepath.Join(h.dir, primary+".yaml")
		if err := os.WriteFile(p, []byte(strings.Replace(drTopology, "PRIMARY", primary, 1)), 0o644); err != nil {
			b.Fatal(err)
		}
		return p
	}
	east, west := file("orders-east"), file("orders-west")
	rebuildAllowed := filepath.Join(h.dir, "west-rebuild-allowed.yaml")
	if err := os.WriteFile(rebuildAllowed, []byte(strings.Replace(strings.Replace(drTopology, "PRIMARY", "orders-west", 1),
		"maxLagBytes: 16Mi}", "maxLagBytes: 16Mi, rebuild: allow}", 1)), 0o644); err != nil {
		b.Fatal(err)
	}
	if r := h.pgtopo("apply", "-f", east); r.code != 0 {
		b.Fatalf("bring-up: %s %s", r.stdout, r.stderr)
	}
	h.createAcked("east", "orders-east")
	ctx := context.Background()
	writableBy := func(site, cluster string, deadline time.Time) {
		for ok := false; !ok; {
			ok, _ = h.writable(site, cluster)
			if time.Now().After(deadline) {
				b.Fatalf("%s never became writable", cluster)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	labSettled(b, "")
	b.ResetTimer()
	var pgs, rbs, fences, heals []float64
	phases := &failoverPhases{}
	var lost, stated int64
	var rounds []string
	for i := 0; i < b.N; i++ {
		// pgtopo: east lost, fail over to west on the flag's consent.
		w := h.startTimedWriter(b, "east", "orders-east")
		time.Sleep(time.Second)
		if err := lab.Fail(h.lab.Dir, "east"); err != nil {
			b.Fatal(err)
		}
		w.finish()
		d := h.pgtopo("diff", "-f", west)
		m := mayBeLost.FindStringSubmatch(d.stdout)
		if m == nil {
			b.Fatalf("the plan states no bound on what is lost:\n%s", d.stdout)
		}
		bound, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			b.Fatal(err)
		}
		// Recovery ends when the new primary takes writes; the apply goes on
		// to repoint the other standby meanwhile.
		began := time.Now()
		applied := make(chan run, 1)
		go func() {
			applied <- h.pgtopo("apply", "-f", west, "--accept-data-loss", "orders-east", "--progress-format", "json")
		}()
		writableBy("west", "orders-west", time.Now().Add(time.Minute))
		took := time.Since(began)
		r := <-applied
		if r.code != 0 {
			b.Fatalf("failover: %s %s", r.stdout, r.stderr)
		}
		phases.add(b, r.stderr, began)
		gone := h.missing("west", "orders-west", w.ids)
		lost, stated, pgs = lost+gone, stated+w.after(bound), append(pgs, took.Seconds())

		// The lost site returns under the loop: time to its fence.
		// Its file consents to rebuilds: the returned east, promoted by its
		// own Patroni, needs one, a step of its own after the fence.
		l := h.startLoop("-f", rebuildAllowed, "--interval", "1m")
		time.Sleep(2 * time.Second)
		answered := h.whenAPIAnswers(ctx, b, "east")
		healed, seen := time.Now(), l.count()
		if err := lab.Heal(ctx, h.lab.Dir, "east"); err != nil {
			b.Fatal(err)
		}
		for {
			if ok, err := h.writable("east", "orders-east"); err == nil && !ok {
				break
			}
			if fenced, _ := h.readOnlyDefault("east", "orders-east"); fenced {
				break
			}
			if time.Since(healed) > 2*time.Minute {
				b.Fatal("orders-east never fenced after its return")
			}
			time.Sleep(50 * time.Millisecond)
		}
		fencedAt := time.Now()
		// From the site's API answering, as the goal says: its API
		// server's own start is the lab's, not the loop's.
		var answeredAt time.Time
		select {
		case answeredAt = <-answered:
		case <-time.After(10 * time.Second):
			b.Fatal("east's API server never answered /readyz, yet orders-east was fenced")
		}
		tf := fencedAt.Sub(answeredAt)
		fences, heals = append(fences, tf.Seconds()), append(heals, fencedAt.Sub(healed).Seconds())
		// The loop's cycle that fenced it ends once it rejoined and is
		// recorded so (a cycle before the heal recorded the loop's file).
		l.waitFor(b, 3*time.Minute, "the rejoin cycle", seen, func(r logRecord) bool { return r.Msg == "cycle" && r.Result == "applied" })
		if got, err := h.sender("east", "orders-east"); err != nil || !strings.HasPrefix(got, "streaming") {
			b.Fatalf("orders-east does not stream after its rejoin: %q %v", got, err)
		}
		_ = l.cmd.Process.Kill()
		<-l.done

		// The runbook's failover by script: west lost, patch east to primary.
		if err := lab.Fail(h.lab.Dir, "west"); err != nil {
			b.Fatal(err)
		}
		began = time.Now()
		if _, err := h.lab.Dyn["east"].Resource(postgresqlGVR).Namespace("db").Patch(ctx, "orders-east", types.MergePatchType,
			[]byte(`{"spec":{"clusterReplication":{"isReplica":false}}}`), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		writableBy("east", "orders-east", time.Now().Add(time.Minute))
		tr := time.Since(began)
		rbs = append(rbs, tr.Seconds())
		rounds = append(rounds, fmt.Sprintf("pgtopo %.2fs, script %.2fs, fenced %.2fs after return", took.Seconds(), tr.Seconds(), tf.Seconds()))
		// The runbook's rejoin of a drifted cluster: delete it, recreate it.
		if err := lab.Heal(ctx, h.lab.Dir, "west"); err != nil {
			b.Fatal(err)
		}
		if err := h.lab.Dyn["west"].Resource(postgresqlGVR).Namespace("db").Delete(ctx, "orders-west", metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
		// Recreated only once its operator has torn it down, data and all:
		// the healed old west came back on its own data, as a primary.
		labtest.Eventually(b, time.Minute, "orders-west torn down (no pod, no data)", func() error {
			if _, err := h.lab.Kube["west"].CoreV1().Pods("db").Get(ctx, "orders-west-0", metav1.GetOptions{}); err == nil {
				return fmt.Errorf("pod orders-west-0 still there")
			}
			dir := filepath.Join(lab.Paths{Dir: h.lab.Dir}.Site("west"), "clusters", "db", "orders-west")
			if _, err := os.Stat(dir); err == nil {
				return fmt.Errorf("%s still there", dir)
			}
			return nil
		})
		if r := h.pgtopo("apply", "-f", east); r.code != 0 {
			b.Fatalf("recreate orders-west: %s %s", r.stdout, r.stderr)
		}
	}
	ratio := median(pgs) / median(rbs)
	b.ReportMetric(ratio, "pgtopo/script")
	b.ReportMetric(median(fences)*1000, "ms-return-to-fence")
	spread := func(xs []float64) string {
		return fmt.Sprintf("median %.2fs, p95 %.2fs", median(xs), percentile(xs, 95))
	}
	fmt.Printf("failover recovery over %d rounds (start to new primary writable): pgtopo %s; runbook script %s; ratio of the medians %.2f (goal <= 1.5; issue 27: <= 1.2)\n",
		len(pgs), spread(pgs), spread(rbs), ratio)
	fmt.Printf("rows acknowledged on the lost primary and missing: %d; stated as possibly lost: %d (goal: missing <= stated)\n", lost, stated)
	fmt.Printf("lost site answering to its old primary fenced, reconcile --interval 1m: %s (goal <= 10s; issue 27: <= 5s); from the heal's start, its API server's boot included: %s\n", spread(fences), spread(heals))
	fmt.Printf("  rounds: %s\n", strings.Join(rounds, "; "))
	fmt.Printf("  where pgtopo's failover goes (mean s from the process's start): %s\n", phases)
	if lost > stated {
		b.Fatalf("%d rows lost, more than the %d stated", lost, stated)
	}
}

// whenAPIAnswers polls a site's API server (through its gateway, as pgtopo
// reaches it) every 20 ms and sends the time it first answers /readyz.
func (h *harness) whenAPIAnswers(ctx context.Context, b *testing.B, site string) <-chan time.Time {
	cfg, err := lab.OutsideRESTConfig(h.lab.Dir, site)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 1000, 1000 // client-go's default 5 per second would pace the polls
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	at := make(chan time.Time, 1)
	go func() {
		for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
			cancel()
			if err == nil {
				at <- time.Now()
				return
			}
		}
	}()
	return at
}

// readOnlyDefault reports whether a cluster's new sessions start read-only.
func (h *harness) readOnlyDefault(site, cluster string) (bool, error) {
	c, err := h.conn(site, cluster)
	if err != nil {
		return false, err
	}
	defer c.Close(context.Background())
	var v string
	err = c.QueryRow(context.Background(), "SHOW default_transaction_read_only").Scan(&v)
	return v == "on", err
}

// failoverPhases adds up, over rounds, when pgtopo's failover run reached
// its marks, from the process's start (its first event is the lock step,
// after it read the file, observed every site and planned).
type failoverPhases struct {
	rounds int
	sum    [5]float64
}

var failoverMarks = [5]string{"lock step begins (file read, sites observed, planned)", "failover step begins (Lease held, looked again)", "consent recorded", "promote written", "new primary writable"}

func (p *failoverPhases) add(b *testing.B, stderr string, began time.Time) {
	at := map[int]float64{}
	for _, line := range strings.Split(stderr, "\n") {
		var e struct {
			Event, Message, Action string
			Time                   time.Time
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		mark := -1
		switch {
		case e.Event == "step" && e.Action == "lock":
			mark = 0
		case e.Event == "step" && e.Action == "failover":
			mark = 1
		case e.Event == "journal" && strings.HasPrefix(e.Message, "failover recorded"):
			mark = 2
		case e.Event == "promote":
			mark = 3
		case e.Event == "reached" && strings.Contains(e.Message, "writable on a timeline"):
			mark = 4
		}
		if _, seen := at[mark]; mark >= 0 && !seen {
			at[mark] = e.Time.Sub(began).Seconds()
		}
	}
	for i := range p.sum {
		v, ok := at[i]
		if !ok {
			b.Fatalf("pgtopo's failover progress has no mark %q:\n%s", failoverMarks[i], stderr)
		}
		p.sum[i] += v
	}
	p.rounds++
}

func (p *failoverPhases) String() string {
	var parts []string
	for i, name := range failoverMarks {
		parts = append(parts, fmt.Sprintf("%s %.2f", name, p.sum[i]/float64(max(p.rounds, 1))))
	}
	return strings.Join(parts, ", ")
}
