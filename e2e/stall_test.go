package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/drill"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/proc"
)

// TestSwitchoverBacksOutOfAStalledTarget freezes the target's replay (its
// startup process stopped with SIGSTOP: it still answers queries and
// streams, replays nothing; Patroni resumes a replay paused by SQL) with a
// writer on the primary, and switches over with a 12 s write-outage budget. The fence
// waits for the target to catch up, sees no progress for a third of the
// budget, and backs out: the old primary takes writes again, the journal is
// cleared, no acknowledged row is lost, and the writer's longest gap stays
// within the budget plus a second.
func TestSwitchoverBacksOutOfAStalledTarget(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	east := h.topology("orders-east")
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	h.createAcked("east", "orders-east")
	src, err := os.ReadFile(h.topology("orders-west"))
	if err != nil {
		t.Fatal(err)
	}
	const budget = 12 * time.Second
	west := filepath.Join(h.dir, "west-budget.yaml")
	text := strings.Replace(string(src), "    serviceType: NodePort\n", "    serviceType: NodePort\n    maxWritePause: 12s\n", 1)
	if text == string(src) {
		t.Fatal("the lab topology has no serviceType line to put the budget after")
	}
	if err := os.WriteFile(west, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	w := h.startWriter()
	time.Sleep(time.Second)
	startup := h.signalStartup("orders-west", syscall.SIGSTOP)
	defer func() { _ = syscall.Kill(startup, syscall.SIGCONT) }()
	time.Sleep(500 * time.Millisecond) // rows the target will never replay
	began := time.Now()
	r := h.pgtopo("apply", "-f", west, "--progress-format", "json")
	took := time.Since(began)
	time.Sleep(2 * time.Second) // writes resume
	w.finish()

	if r.code != 1 || !strings.Contains(r.stderr, "backed out: stalled: orders-west replay >= ") || !strings.Contains(r.stderr, "orders-east is primary again") {
		t.Fatalf("apply exit %d, want 1 with a back-out after a stall\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if ok, err := h.writable("east", "orders-east"); !ok {
		t.Fatalf("orders-east is not writable after the back-out: %v", err)
	}
	if a, b := h.journalPhase("east", "orders-east"), h.journalPhase("west", "orders-west"); a != "" || b != "" {
		t.Fatalf("journal left: %q %q", a, b)
	}
	gap := time.Duration(w.longestMs.Load()) * time.Millisecond
	t.Logf("apply backed out after %s; %d rows acknowledged; longest gap between commits %s (budget %s)", took.Round(100*time.Millisecond), len(w.acked), gap, budget)
	if gap > budget+time.Second {
		t.Fatalf("writes stopped for %s, more than the budget %s plus a second", gap, budget)
	}
	if missing := h.missing("east", "orders-east", w.acked); missing != 0 || len(w.acked) == 0 {
		t.Fatalf("%d of %d acknowledged rows missing", missing, len(w.acked))
	}
	if w.bothSeen.Load() != 0 {
		t.Fatalf("two clusters writable at once in %d samples", w.bothSeen.Load())
	}
	h.signalStartup("orders-west", syscall.SIGCONT)
	// The file that names orders-east is in sync: nothing was left behind.
	h.expect(h.pgtopo("diff", "-f", east), 0, "No changes.")

	// A drill that meets the stalled target backs out of its first move
	// and ends there; its report says so.
	h.drillBacksOut(east, text)

	// The target's Patroni stopped: its operator no longer reports it
	// ready, so the switchover does not begin (a target that is not
	// promotable would cost a write outage for nothing): it waits, bounded,
	// before the fence and gives up with nothing fenced. (The back-out when
	// it stops being ready after the fence is a fake-world test.)
	patroni := h.signalPatroni("orders-west", syscall.SIGSTOP)
	defer func() { _ = syscall.Kill(patroni, syscall.SIGCONT) }()
	h.lab.WaitStatus(t, "west", "db", "orders-west", "Creating", 30*time.Second)
	h.expect(h.pgtopo("diff", "-f", west), 4, "orders-west's operator reports it Creating, not ready: the switchover waits until it does")
	w = h.startWriter()
	time.Sleep(time.Second)
	began = time.Now()
	r = h.pgtopo("apply", "-f", west, "--progress-format", "json", "--step-timeout", "8s")
	took = time.Since(began)
	time.Sleep(2 * time.Second)
	w.finish()
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, "switchover orders-east → orders-west not begun, nothing fenced") || strings.Contains(r.stderr, `"event":"fence"`) {
		t.Fatalf("apply exit %d, want 1 refusing before the fence a target whose Patroni is stopped\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if a, b := h.journalPhase("east", "orders-east"), h.journalPhase("west", "orders-west"); a != "" || b != "" {
		t.Fatalf("journal left: %q %q", a, b)
	}
	gap = time.Duration(w.longestMs.Load()) * time.Millisecond
	t.Logf("target's Patroni stopped: apply refused after %s, nothing fenced; longest gap between commits %s", took.Round(100*time.Millisecond), gap)
	if gap > 2*time.Second {
		t.Fatalf("writes stopped for %s although nothing was fenced", gap)
	}
	if missing := h.missing("east", "orders-east", w.acked); missing != 0 || len(w.acked) == 0 {
		t.Fatalf("%d of %d acknowledged rows missing", missing, len(w.acked))
	}
	if w.bothSeen.Load() != 0 {
		t.Fatalf("two clusters writable at once in %d samples", w.bothSeen.Load())
	}
	_ = syscall.Kill(patroni, syscall.SIGCONT)
	h.lab.WaitStatus(t, "west", "db", "orders-west", "Running", 60*time.Second)
	// The back-out put orders-east on a new timeline: west follows it and
	// catches up on what was written meanwhile before a switchover can pass.
	labtest.Eventually(t, 90*time.Second, "a switchover to orders-west planned, not refused", func() error {
		if r := h.pgtopo("diff", "-f", west); r.code != 4 {
			return fmt.Errorf("diff exit %d: %s", r.code, r.stdout)
		}
		return nil
	})
	// Without the drill's tight budget: a loaded machine may take Patroni,
	// just resumed, longer than its stall bound to act.
	h.expect(h.pgtopo("apply", "-f", h.topology("orders-west")), 0, "Apply complete", "switchover")
	h.noSecretsInOutput()
}

// signalPatroni signals the Patroni process of a cluster's first member
// and returns its pid.
// Its pid file names it: Patroni's command line is also in that of the
// reaper it runs under.
func (h *harness) signalPatroni(cluster string, sig syscall.Signal) int {
	h.t.Helper()
	files, _ := filepath.Glob(filepath.Join(h.lab.Dir, "sites", "*", "clusters", "db", cluster, "0", "patroni.pid"))
	if len(files) != 1 {
		h.t.Fatalf("%s's first member: %d pid files", cluster, len(files))
	}
	pid := proc.ReadPid(files[0])
	if !proc.Alive(pid) {
		h.t.Fatalf("%s's Patroni (pid file %s) does not run", cluster, files[0])
	}
	if err := syscall.Kill(pid, sig); err != nil {
		h.t.Fatalf("signal %s's Patroni (%d): %v", cluster, pid, err)
	}
	return pid
}

// signalStartup signals the startup (WAL replay) process of a standby
// cluster's PostgreSQL and returns its pid.
func (h *harness) signalStartup(cluster string, sig syscall.Signal) int {
	return h.signal("postgres: "+cluster+": startup", cluster+"'s startup process", sig)
}

// signal signals the first process of this lab whose command line
// contains pattern (other tests run other labs at the same time).
func (h *harness) signal(pattern, what string, sig syscall.Signal) int {
	h.t.Helper()
	pids, err := lab.SiteProcesses(h.lab.Dir, "", pattern)
	if err != nil {
		h.t.Fatalf("no process for %s: %v", what, err)
	}
	pid := pids[0]
	if err := syscall.Kill(pid, sig); err != nil {
		h.t.Fatalf("signal %s (%d): %v", what, pid, err)
	}
	return pid
}

// drillBacksOut runs a switchover drill (its file with the test's 12 s
// budget, orders-east primary) while orders-west's replay is stopped: the
// first move backs out, the drill holds nothing and moves nothing back,
// its report says "backed out", and orders-east takes writes.
func (h *harness) drillBacksOut(east, westWithBudget string) {
	t := h.t
	eastBudget := filepath.Join(h.dir, "east-budget.yaml")
	if err := os.WriteFile(eastBudget, []byte(strings.Replace(westWithBudget, "primary: orders-west", "primary: orders-east", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	h.expect(h.pgtopo("apply", "-f", eastBudget), 0, "Apply complete")
	startup := h.signalStartup("orders-west", syscall.SIGSTOP)
	defer func() { _ = syscall.Kill(startup, syscall.SIGCONT) }()
	r := h.pgtopo("drill", "switchover", "-f", eastBudget, "--hold", "0s", "-o", "json")
	var rep drill.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("drill exit %d: report: %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
	}
	if r.code != 1 || rep.Result != "backed out" || len(rep.Moves) != 1 || !strings.Contains(rep.Moves[0].Error, "backed out: stalled: orders-west replay") {
		t.Fatalf("drill exit %d, report %+v\n%s", r.code, rep, r.stderr)
	}
	if !strings.Contains(rep.Record().Summary, "switchover backed out") {
		t.Fatalf("record: %+v", rep.Record())
	}
	if ok, err := h.writable("east", "orders-east"); !ok {
		t.Fatalf("orders-east is not writable after the drill backed out: %v", err)
	}
	t.Logf("drill backed out: move %.1fs, longest write gap %.2fs, %d heartbeats, %d missing", rep.Moves[0].Seconds, rep.Moves[0].LongestGap, rep.Acknowledged, rep.Missing)
	if rep.Missing != 0 {
		t.Fatalf("%d heartbeats missing after the back-out", rep.Missing)
	}
	h.signalStartup("orders-west", syscall.SIGCONT)
	h.expectNoDrillSchema()
	h.expect(h.pgtopo("apply", "-f", east), 0)
}
