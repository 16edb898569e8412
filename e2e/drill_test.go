package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/drill"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/operator"
)

// A switchover drill on the lab with an application's writer running: it
// moves the primary to west and back, its heartbeat measures the gaps and
// loses nothing, it leaves no schema of its own and the topology in sync;
// it refuses a topology that is not in sync; a drill killed during its
// hold is cleaned up by the next one.
func TestDrillSwitchover(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	topo := h.topology("orders-east")
	h.expect(h.pgtopo("apply", "-f", topo), 0, "Apply complete")
	h.createAcked("east", "orders-east")
	w := h.startWriter()

	r := h.pgtopo("drill", "switchover", "-f", topo, "--hold", "2s", "-o", "json")
	if r.code != 0 {
		t.Fatalf("drill: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var rep drill.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, r.stdout)
	}
	if rep.Result != "passed" || len(rep.Moves) != 2 || rep.Moves[0].To != "orders-west" || rep.Moves[1].To != "orders-east" {
		t.Fatalf("report: %+v", rep)
	}
	if rep.Missing != 0 || rep.Acknowledged < 20 || rep.StreamingAfter <= 0 || !strings.HasPrefix(rep.Ready, "DR ready") {
		t.Fatalf("report: %d of %d heartbeats missing, streaming after %.1fs, ready %q", rep.Missing, rep.Acknowledged, rep.StreamingAfter, rep.Ready)
	}
	for _, m := range rep.Moves {
		if m.LongestGap <= 0 || m.LongestGap > m.Seconds {
			t.Fatalf("move %s → %s: longest write gap %.2fs in a move of %.1fs", m.From, m.To, m.LongestGap, m.Seconds)
		}
	}
	t.Logf("drill: gaps %.2fs and %.2fs, %d heartbeats, none missing, every standby streaming %.1fs after",
		rep.Moves[0].LongestGap, rep.Moves[1].LongestGap, rep.Acknowledged, rep.StreamingAfter)
	w.finish()
	if n := h.missing("east", "orders-east", w.acked); n != 0 {
		t.Fatalf("%d of the application's acknowledged rows missing", n)
	}
	if w.bothSeen.Load() > 0 {
		t.Fatalf("both clusters writable in %d samples", w.bothSeen.Load())
	}
	h.expect(h.pgtopo("diff", "-f", topo), 0)
	h.expectNoDrillSchema()
	// Kept in the sites: status shows it.
	h.expect(h.pgtopo("status", "-f", topo), 0, "last drill: switchover passed: orders-east → orders-west gap")

	// Not in sync with its file: refused, nothing moved.
	west := h.topology("orders-west")
	r = h.pgtopo("drill", "switchover", "-f", west, "--hold", "0s")
	if r.code != 1 || !strings.Contains(r.stderr, "is not in sync with its file") {
		t.Fatalf("a drill of a file not applied: exit %d\n%s", r.code, r.stderr)
	}
	h.expectPrimary("east", "orders-east")

	// Killed during its hold: orders-west is primary and the heartbeat
	// table is left. Applying the file brings orders-east back; the next
	// drill drops what the killed one left, and passes.
	h.killDrillAt("drill: hold:", "the drill never held", "switchover", "-f", topo, "--hold", "1m")
	h.expectPrimary("west", "orders-west")
	h.expect(h.pgtopo("apply", "-f", topo), 0, "Apply complete")
	r = h.pgtopo("drill", "switchover", "-f", topo, "--hold", "0s", "-o", "markdown")
	h.expect(r, 0, "## pgtopo drill switchover: orders — passed", "| orders-east → orders-west |", "0 missing")
	h.expectNoDrillSchema()

	h.isolatedDrills(topo)
	h.noSecretsInOutput()
}

// isolatedDrills runs drill failover --isolated on the lab of
// TestDrillSwitchover, with a writer of its own: a
// clone of orders-west in west, promoted and checked with the file's
// checks; production's objects and replication unchanged; then a drill
// killed once its clone streams, whose clone the next drill removes.
func (h *harness) isolatedDrills(topo string) {
	t := h.t
	src, err := os.ReadFile(topo)
	if err != nil {
		t.Fatal(err)
	}
	checked := filepath.Join(h.dir, "checked.yaml")
	withChecks := strings.Replace(string(src), "  sites:\n", `  drills:
    checks:
      - name: orders-kept
        sql: SELECT count(*) > 0 FROM acked
      - name: heartbeat-recent
        sql: SELECT max(at) > now() - interval '5 minutes' FROM pgtopo_drill.heartbeat
  sites:
`, 1)
	if err := os.WriteFile(checked, []byte(withChecks), 0o644); err != nil {
		t.Fatal(err)
	}
	// The checks are part of the file: recorded before the drill.
	h.expect(h.pgtopo("apply", "-f", checked), 0, "Apply complete")
	w := h.startWriter()
	// What the test holds the drill to, read by the test itself: each
	// object's generation (its spec) and annotations (pgtopo's marks).
	versions := h.objectVersions()
	r := h.pgtopo("drill", "failover", "--isolated", "-f", checked, "-o", "json")
	if r.code != 0 {
		t.Fatalf("isolated drill: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var rep drill.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, r.stdout)
	}
	iso := rep.Isolation
	if rep.Result != "passed" || rep.Drill != drill.KindIsolated || iso == nil || iso.From != "orders-west" || iso.Clone != "west/db/orders-west-drill" {
		t.Fatalf("report: %+v %+v", rep, iso)
	}
	if iso.RTO <= 0 || iso.ReplayedAtCut <= 0 || iso.KeptAfterPromotion < iso.ReplayedAtCut || iso.Production != "unchanged" || len(iso.Changes) != 0 {
		t.Fatalf("isolation: %+v", iso)
	}
	if len(iso.Checks) != 2 || !iso.Checks[0].Passed || !iso.Checks[1].Passed {
		t.Fatalf("checks: %+v", iso.Checks)
	}
	if rep.Missing != 0 || rep.Acknowledged < 10 {
		t.Fatalf("production's heartbeats: %d of %d missing", rep.Missing, rep.Acknowledged)
	}
	t.Logf("isolated drill: clone streaming %.1fs after creation, RTO %.2fs, RPO %.2fs (%d heartbeats), checks passed",
		iso.StreamingAfter, iso.RTO, iso.RPO, iso.LostHeartbeats)
	// Unchanged, as the test sees it too: the objects' versions, and the
	// application lost nothing.
	if after := h.objectVersions(); after != versions {
		t.Fatalf("production's objects changed: %s → %s", versions, after)
	}
	if len(iso.StatusOnly) > 0 {
		t.Logf("status only (the operator's): %s", strings.Join(iso.StatusOnly, "; "))
	}
	h.expectNoClone()
	h.expectNoDrillSchema()
	h.expect(h.pgtopo("diff", "-f", checked), 0)
	h.expect(h.pgtopo("status", "-f", checked), 0, "last drill: failover-isolated passed: clone of orders-west writable")

	// Killed once the clone streams: the clone is left. The next drill
	// removes it first, and passes.
	h.killDrillAt(" streams (", "the killed drill's clone never streamed", "failover", "--isolated", "-f", checked)
	if _, err := h.lab.Dyn["west"].Resource(operator.GVR).Namespace("db").Get(context.Background(), "orders-west-drill", metav1.GetOptions{}); err != nil {
		t.Fatalf("the killed drill left no clone: %v", err)
	}
	r = h.pgtopo("drill", "failover", "--isolated", "-f", checked, "-o", "markdown")
	h.expect(r, 0, "## pgtopo drill failover-isolated: orders — passed", "Removed `west/db/orders-west-drill`, a clone an earlier drill left.", "| production | unchanged |")
	h.expectNoClone()
	h.expectNoDrillSchema()
	w.finish()
	if n := h.missing("east", "orders-east", w.acked); n != 0 {
		t.Fatalf("%d of the application's acknowledged rows missing", n)
	}
	if w.bothSeen.Load() > 0 {
		t.Fatalf("both clusters writable in %d samples", w.bothSeen.Load())
	}
}

// killDrillAt runs pgtopo drill with args and SIGKILLs it as soon as its
// progress prints a line holding at; never seen, the test fails with
// never.
func (h *harness) killDrillAt(at, never string, args ...string) {
	h.t.Helper()
	cmd := exec.Command(h.bin, append([]string{"drill"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+lab.Paths{Dir: h.lab.Dir}.Kubeconfig())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var seen []string
	for sc.Scan() {
		seen = append(seen, sc.Text())
		if strings.Contains(sc.Text(), at) {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		h.t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(seen) == 0 || !strings.Contains(seen[len(seen)-1], at) {
		h.t.Fatalf("%s:\n%s", never, strings.Join(seen, "\n"))
	}
}

// objectVersions are the generations (spec changes; the operator's status
// updates leave it) and annotations (pgtopo's marks) of the topology's
// objects.
func (h *harness) objectVersions() string {
	h.t.Helper()
	var out []string
	for site, name := range map[string]string{"east": "orders-east", "west": "orders-west"} {
		u, err := h.lab.Dyn[site].Resource(operator.GVR).Namespace("db").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			h.t.Fatal(err)
		}
		ann, _ := json.Marshal(u.GetAnnotations())
		out = append(out, fmt.Sprintf("%s generation %d annotations %s", name, u.GetGeneration(), ann))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// expectNoClone checks the drill's clone is gone: its object, Service and
// credentials Secret.
func (h *harness) expectNoClone() {
	h.t.Helper()
	ctx := context.Background()
	if _, err := h.lab.Dyn["west"].Resource(operator.GVR).Namespace("db").Get(ctx, "orders-west-drill", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		h.t.Fatalf("the clone's object is left: %v", err)
	}
	labtest.Eventually(h.t, 30*time.Second, "the clone's Service and Secret gone", func() error {
		if _, err := h.lab.Kube["west"].CoreV1().Services("db").Get(ctx, "orders-west-drill", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("Service: %v", err)
		}
		if _, err := h.lab.Kube["west"].CoreV1().Secrets("db").Get(ctx, operator.CredentialsSecret("orders-west-drill"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("credentials Secret: %v", err)
		}
		return nil
	})
}

// expectNoDrillSchema checks the primary holds no schema of a drill's.
func (h *harness) expectNoDrillSchema() {
	h.t.Helper()
	c, err := h.conn("east", "orders-east")
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM pg_namespace WHERE nspname = $1", drill.Schema).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	if n != 0 {
		h.t.Fatalf("schema %s left on orders-east after the drill", drill.Schema)
	}
}
