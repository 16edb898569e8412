package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/pgtopo/pgtopo/drill"
	"github.com/pgtopo/pgtopo/lab"
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
	cmd := exec.Command(h.bin, "drill", "switchover", "-f", topo, "--hold", "1m")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+lab.Paths{Dir: h.lab.Dir}.Kubeconfig())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var seen []string
	for sc.Scan() {
		seen = append(seen, sc.Text())
		if strings.HasPrefix(sc.Text(), "drill: hold:") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(seen) == 0 || !strings.HasPrefix(seen[len(seen)-1], "drill: hold:") {
		t.Fatalf("the drill never held:\n%s", strings.Join(seen, "\n"))
	}
	h.expectPrimary("west", "orders-west")
	h.expect(h.pgtopo("apply", "-f", topo), 0, "Apply complete")
	r = h.pgtopo("drill", "switchover", "-f", topo, "--hold", "0s", "-o", "markdown")
	h.expect(r, 0, "## pgtopo drill switchover: orders — passed", "| orders-east → orders-west |", "0 missing")
	h.expectNoDrillSchema()
	h.noSecretsInOutput()
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
