package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// settingsThatNeedARestart raises and lowers max_connections, which a hot
// standby must keep at least as high as its primary, on a three-site
// topology whose primary is orders-east. A raise restarts the standbys
// first, a lowering the primary first; the primary's restart needs the
// file's consent; no standby's replay pauses meanwhile; diff is in sync
// only once every server runs the new value.
func (h *harness) settingsThatNeedARestart(t *testing.T, template string) {
	file := func(name, maxConnections string, allow bool) string {
		data := strings.Replace(template, "PRIMARY", "orders-east", 1)
		data = strings.Replace(data, "max_slot_wal_keep_size: 10GB}", "max_slot_wal_keep_size: 10GB, max_connections: "+maxConnections+"}", 1)
		if allow {
			data = strings.Replace(data, "maxLagBytes: 16Mi}", "maxLagBytes: 16Mi, primaryRestart: allow}", 1)
		}
		p := filepath.Join(h.dir, name+".yaml")
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	h.expect(h.pgtopo("diff", "-f", file("raise-no-consent", "60", false)), 1,
		"restarting the primary orders-east for max_connections refuses writes until it is back", "spec.replication.primaryRestart: allow")

	standbys := map[string]string{"orders-west": "west", "orders-south": "south"}
	for _, tc := range []struct {
		value string
		first string // the cluster restarted first
	}{{"60", "standbys"}, {"50", "primary"}} {
		path := file("max-connections-"+tc.value, tc.value, true)
		paused := h.samplePauses(t, standbys)
		r := h.pgtopo("apply", "-f", path)
		pauses := paused()
		h.expect(r, 0, "Apply complete")
		order := stepOrder(r.stderr, "update")
		t.Logf("max_connections %s: updates in order %v", tc.value, order)
		if len(order) != 3 {
			t.Fatalf("%d update steps, want 3:\n%s", len(order), r.stderr)
		}
		if (order[0] == "orders-east") != (tc.first == "primary") || (tc.first == "standbys" && order[2] != "orders-east") {
			t.Fatalf("max_connections %s: order %v, want the %s first", tc.value, order, tc.first)
		}
		if !strings.Contains(r.stderr, "restarting the primary orders-east for max_connections") {
			t.Fatalf("the primary's restart was not said:\n%s", r.stderr)
		}
		if len(pauses) > 0 {
			t.Fatalf("a standby's replay paused during the restarts: %v", pauses)
		}
		for cluster, site := range map[string]string{"orders-east": "east", "orders-west": "west", "orders-south": "south"} {
			if got := h.setting(t, site, cluster, "max_connections"); got != tc.value {
				t.Fatalf("%s runs max_connections %s, want %s", cluster, got, tc.value)
			}
		}
		h.expect(h.pgtopo("diff", "-f", path), 0, "No changes.")
	}
}

// stepOrder lists the clusters of a run's steps of one action, in the
// order they began.
func stepOrder(progress, action string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`step \d+/\d+: `+action+` (\S+) `).FindAllStringSubmatch(progress, -1) {
		out = append(out, m[1])
	}
	return out
}

// samplePauses asks the standbys every 200 ms whether their replay is
// paused, until the returned function is called, which returns what it saw.
func (h *harness) samplePauses(t *testing.T, standbys map[string]string) func() []string {
	stop := make(chan struct{})
	var mu sync.Mutex
	var seen []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			for cluster, site := range standbys {
				c, err := h.conn(site, cluster)
				if err != nil {
					continue // restarting
				}
				var state string
				if c.QueryRow(context.Background(), "SELECT pg_get_wal_replay_pause_state()").Scan(&state) == nil && state != "not paused" {
					mu.Lock()
					seen = append(seen, time.Now().Format("15:04:05.000")+" "+cluster+" "+state)
					mu.Unlock()
				}
				c.Close(context.Background())
			}
		}
	}()
	return func() []string {
		close(stop)
		wg.Wait()
		return seen
	}
}

// setting is a server's current value of a setting.
func (h *harness) setting(t *testing.T, site, cluster, name string) string {
	t.Helper()
	c, err := h.conn(site, cluster)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var v string
	if err := c.QueryRow(context.Background(), "SELECT current_setting($1)", name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}
