package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/quorum"
)

// The agents of an automatic-failover topology, one reconcile per site
// (north a witness), keep their sites' votes in Leases on the lab's API
// servers and decide from them: all in sight, nothing to do; the witness
// cut off, still a majority; the primary's site cut off, its agent would
// fence the primary before the others may fail over. The lab's partition
// stands in for the network (an agent here runs outside its site, so a
// partitioned site's agent loses its own API too, as one whose API
// server is gone). This version decides and logs; it does not act.
func TestQuorumVotes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west", "north")
	ctx := context.Background()
	if _, err := h.lab.Kube["north"].CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "db"}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	file := h.topologyWith("orders-east", "automatic", "    maxLagBytes: 16Mi\n  failover: {mode: automatic, after: 10s, maxDataLoss: 1Mi}")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(strings.Replace(string(data), "  clusters:\n", "    - name: north\n      context: lab-north\n  clusters:\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	r := h.pgtopo("apply", "-f", file)
	h.expect(r, 0, "Apply complete")
	if !strings.Contains(r.stderr, "spec.failover.mode: warning: automatic") {
		t.Fatalf("apply does not warn that automatic failover does not act yet:\n%s", r.stderr)
	}

	agents := map[string]*loop{}
	for _, site := range []string{"east", "west", "north"} {
		agents[site] = h.startLoop("-f", file, "--site", site, "--interval", "5s")
	}
	said := func(site string, from int, within time.Duration, what string, match func(logRecord) bool) (logRecord, int) {
		t.Helper()
		return agents[site].waitFor(t, within, site+"'s agent: "+what, from, match)
	}
	quorumLine := func(prefix string) func(logRecord) bool {
		return func(r logRecord) bool { return strings.HasPrefix(r.Msg, prefix) }
	}
	_, east := said("east", 0, time.Minute, "every site sees east", quorumLine("quorum: primary's site: 3 of 3 sites saw east"))
	_, west := said("west", 0, time.Minute, "no failover", quorumLine("quorum: 0 of 3 sites have not seen east"))

	// Each vote, read by the test from its site: the others' stamps, and
	// the primary's LSN.
	for _, site := range []string{"east", "west", "north"} {
		labtest.Eventually(t, 20*time.Second, site+"'s vote seeing both other sites", func() error {
			lease, err := h.lab.Kube[site].CoordinationV1().Leases("db").Get(ctx, "pgtopo-orders-vote", metav1.GetOptions{})
			if err != nil {
				return err
			}
			var v quorum.Vote
			if err := json.Unmarshal([]byte(lease.Annotations["pgtopo.dev/vote"]), &v); err != nil {
				return err
			}
			if v.Site != site || len(v.Seen) != 2 || v.Primary != "orders-east" || v.PrimaryLSN == 0 {
				return fmt.Errorf("vote %+v", v)
			}
			return nil
		})
	}

	// The witness cut off: east still has a majority (east, west), and
	// west does not see the primary's site lost.
	if err := lab.Partition(h.lab.Dir, "north"); err != nil {
		t.Fatal(err)
	}
	northCut := time.Now()
	_, east = said("east", east, 30*time.Second, "a majority without the witness", quorumLine("quorum: primary's site: 2 of 3 sites saw east"))
	time.Sleep(12 * time.Second) // longer than after
	for _, site := range []string{"east", "west"} {
		agents[site].mu.Lock()
		for _, r := range agents[site].records {
			// (An agent's first rounds, before the others' votes are
			// read, would fence: a started agent has no majority yet.)
			if r.Time.After(northCut) && strings.HasPrefix(r.Msg, "quorum: would fence") || strings.HasPrefix(r.Msg, "quorum: a failover may start") {
				agents[site].mu.Unlock()
				t.Fatalf("the witness cut off, %s's agent: %s", site, r.Msg)
			}
		}
		agents[site].mu.Unlock()
	}
	if err := lab.Heal(ctx, h.lab.Dir, "north"); err != nil {
		t.Fatal(err)
	}
	_, east = said("east", east, 30*time.Second, "every site again", quorumLine("quorum: primary's site: 3 of 3 sites saw east"))

	// The primary's site cut off: east's agent would fence within after/2
	// (and a renewal); west's may fail over only after after, later.
	if err := lab.Partition(h.lab.Dir, "east"); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	fence, _ := said("east", east, 30*time.Second, "would fence", quorumLine("quorum: would fence the primary"))
	failover, _ := said("west", west, 40*time.Second, "a failover may start", quorumLine("quorum: a failover may start"))
	if !fence.Time.Add(quorum.FenceTime).Before(failover.Time) {
		t.Fatalf("east's agent would fence at %s, west may fail over at %s: the fence must take effect first", fence.Time.Format(time.StampMilli), failover.Time.Format(time.StampMilli))
	}
	if !strings.Contains(failover.Msg, "nothing done") {
		t.Fatalf("west's agent: %s", failover.Msg)
	}
	t.Logf("east cut off: its agent would fence %.1fs after the cut, west may fail over %.1fs after it", fence.Time.Sub(cut).Seconds(), failover.Time.Sub(cut).Seconds())
	if err := lab.Heal(ctx, h.lab.Dir, "east"); err != nil {
		t.Fatal(err)
	}
	said("east", 0, 30*time.Second, "every site after the heal", func(r logRecord) bool {
		return r.Time.After(failover.Time) && strings.HasPrefix(r.Msg, "quorum: primary's site: 3 of 3 sites saw east")
	})
	h.expect(h.pgtopo("diff", "-f", file), 0, "No changes")
}
