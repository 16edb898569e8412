package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// externalIP reads the multi_cluster_info row of standby on the primary.
func (h *harness) externalIP(site, primary, standby string) (string, error) {
	c, err := h.conn(site, primary)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var ip string
	err = c.QueryRow(context.Background(), "SELECT external_ip FROM sys_operator.multi_cluster_info WHERE cluster_name = $1", standby).Scan(&ip)
	return ip, err
}

// TestLoadBalancerExternalIP is the operator's hot-standby runbook's multi_cluster_info check:
// with LoadBalancer Services the operator registers a standby with an
// empty external_ip, and pgtopo fills it with the standby's load balancer
// address, after bring-up, after a switchover, and after someone blanked it.
func TestLoadBalancerExternalIP(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	src, err := os.ReadFile(h.topology("orders-east"))
	if err != nil {
		t.Fatal(err)
	}
	lb := strings.Replace(string(src), "serviceType: NodePort", "serviceType: LoadBalancer", 1)
	if lb == string(src) {
		t.Fatal("the lab topology no longer says serviceType: NodePort")
	}
	east := filepath.Join(h.dir, "lb-east.yaml")
	west := filepath.Join(h.dir, "lb-west.yaml")
	for path, text := range map[string]string{east: lb, west: strings.Replace(lb, "primary: orders-east", "primary: orders-west", 1)} {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Right after apply returns, without another run: apply re-plans until
	// nothing is left, and the standby registers before it streams.
	filled := func(site, primary, standby string) {
		t.Helper()
		want, _ := h.lab.Endpoint(t, standbySite(standby), "db", standby)
		ip, err := h.externalIP(site, primary, standby)
		if err != nil || ip != want {
			t.Fatalf("multi_cluster_info on %s: external_ip of %s is %q (%v), want the load balancer address %s", primary, standby, ip, err, want)
		}
	}

	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	filled("east", "orders-east", "orders-west")

	// Blanked by hand: diff shows the step, apply fills it, diff is clean.
	c, err := h.conn("east", "orders-east")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(context.Background(), "UPDATE sys_operator.multi_cluster_info SET external_ip = '' WHERE cluster_name = 'orders-west'"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	h.expect(h.pgtopo("diff", "-f", east), 4, "fill-external-ip", "sys_operator.multi_cluster_info.external_ip: (none) → ")
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	filled("east", "orders-east", "orders-west")
	h.expect(h.pgtopo("diff", "-f", east), 0, "No changes.")

	// After a switchover the old primary registers on the new one.
	h.expect(h.pgtopo("apply", "-f", west), 0, "Apply complete", "switchover")
	filled("west", "orders-west", "orders-east")
	h.expect(h.pgtopo("diff", "-f", west), 0, "No changes.")
}

func standbySite(cluster string) string { return strings.TrimPrefix(cluster, "orders-") }
