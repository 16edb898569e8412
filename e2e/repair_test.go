package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
)

// TestRepairs is the runbook's troubleshooting section done by pgtopo on
// the lab: a standby whose WAL was removed (small max_slot_wal_keep_size,
// the standby stopped under writes) is planned as "needs rebuild" with the
// evidence, refused without the policy, rebuilt with it through a kill -9
// in the middle, and streams again; a slot left behind by a deleted
// standby is a drop-slot step with the WAL it holds, and goes; a slot that
// is no one's pgtopo knows is only reported; a cluster removed from the
// file with deletionPolicy delete goes with its catalogue row and slot.
func TestRepairs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	src, err := os.ReadFile("../examples/topologies/lab-two-sites.yaml")
	if err != nil {
		t.Fatal(err)
	}
	small := strings.Replace(string(src), "max_slot_wal_keep_size: 10GB", "max_slot_wal_keep_size: 64MB", 1)
	topo := filepath.Join(h.dir, "small.yaml")
	if err := os.WriteFile(topo, []byte(small), 0o644); err != nil {
		t.Fatal(err)
	}
	h.expect(h.pgtopo("apply", "-f", topo), 0, "Apply complete")

	// west away while east writes past max_slot_wal_keep_size (64MB) and
	// wal_keep_size (128MB): its slot is lost and the WAL it needs goes.
	// Patroni and PostgreSQL only (the site's apiserver stays up), and
	// east ends the walsender that served west: a checkpoint invalidating
	// a slot waits for the process holding it, which a frozen receiver
	// would keep stuck.
	resume := freeze(t, h.lab.Dir, "west", "patroni", "postgres")
	defer resume()
	c, err := h.conn("east", "orders-east")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.Exec(ctx, "CREATE TABLE churn (n int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'xdc_orders_west' AND active"); err != nil {
		t.Fatal(err)
	}
	status := ""
	churnWAL(t, c, func() bool {
		if err := c.QueryRow(ctx, "SELECT coalesce((SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'xdc_orders_west'), 'absent')").Scan(&status); err != nil {
			t.Fatal(err)
		}
		return status == "lost"
	})
	c.Close(ctx)
	if status != "lost" {
		t.Fatalf("xdc_orders_west on east: wal_status %s after 40 segments, want lost", status)
	}
	resume()

	// Without the policy: refused, with the evidence, nothing changed.
	r := h.pgtopo("diff", "-f", topo)
	h.expect(r, 1, "orders-west needs a rebuild:", "its slot xdc_orders_west on orders-east is lost (wal_status lost)", "--allow-rebuild orders-west")
	t.Logf("refused: %s", firstLine(r.stdout, "needs a rebuild"))

	// With the flag, killed right after the deletion; the re-run goes on
	// without the flag, from the record on the primary.
	seen, killed := h.killApply(t, func(ev apply.Event) bool {
		return ev.Action == "rebuild" && ev.Type == apply.EventWrite && strings.Contains(ev.Message, "deleted with its data")
	}, "apply", "-f", topo, "--allow-rebuild", "orders-west")
	if !killed {
		t.Fatalf("apply ended before the deletion:\n%s", strings.Join(seen, "\n"))
	}
	r = h.pgtopo("diff", "-f", topo)
	h.expect(r, 4, "resume the rebuild of orders-west recorded on orders-east")
	h.expect(h.pgtopo("apply", "-f", topo), 0, "Apply complete")
	labtest.Eventually(t, 60*time.Second, "west streaming from east again", func() error {
		c, err := h.conn("west", "orders-west")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		var st string
		if err := c.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&st); err != nil {
			return err
		}
		if st != "streaming" {
			return fmt.Errorf("receiver %s", st)
		}
		return nil
	})
	h.expect(h.pgtopo("diff", "-f", topo), 0, "No changes.")

	// A slot that is no one's pgtopo knows: reported, never dropped. Made
	// as a DBA keeps a backup tool's slot on a Patroni leader, which drops
	// unknown slots when it reloads its own: listed in ignore_slots.
	pod, err := h.lab.Kube["east"].CoreV1().Pods("db").Get(ctx, "orders-east-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPatch, "http://"+pod.Status.PodIP+":8008/config", strings.NewReader(`{"ignore_slots":[{"name":"backup_tool","type":"physical"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("ignore_slots: %v %v", err, resp)
	}
	resp.Body.Close()
	c, err = h.conn("east", "orders-east")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_create_physical_replication_slot('backup_tool', true)"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	r = h.pgtopo("diff", "-f", topo)
	h.expect(r, 0, "slot backup_tool on orders-east (inactive, holds", "is not one pgtopo knows", "No changes.")

	// west's CR deleted by hand and west dropped from the file: the slot
	// east's operator still keeps for it (its catalogue row is there)
	// holds WAL for no one, and goes.
	oneSite := filepath.Join(h.dir, "east-only.yaml")
	only := strings.Replace(small, `    - name: orders-west
      site: west
      namespace: db
      instances: 2
      volume: {size: 1Gi}
`, "", 1)
	// west stays declared: pgtopo observes a site the file keeps, and
	// finds there what the file no longer lists.
	if err := os.WriteFile(oneSite, []byte(only), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.lab.Dyn["west"].Resource(postgresqlGVR).Namespace("db").Delete(ctx, "orders-west", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, 60*time.Second, "west's slot inactive on east", func() error {
		c, err := h.conn("east", "orders-east")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		var active bool
		if err := c.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'xdc_orders_west'").Scan(&active); err != nil {
			return err
		}
		if active {
			return fmt.Errorf("still active")
		}
		return nil
	})
	r = h.pgtopo("diff", "-f", oneSite)
	h.expect(r, 4, "drop-slot", "slot xdc_orders_west on orders-east was kept for orders-west, which the file no longer lists; inactive, it holds", "backup_tool")
	if strings.Contains(r.stdout, "slot backup_tool: present") {
		t.Fatalf("a slot pgtopo does not know is planned for dropping:\n%s", r.stdout)
	}
	h.expect(h.pgtopo("apply", "-f", oneSite), 0, "Apply complete")
	var slots, rows int
	c, err = h.conn("east", "orders-east")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := c.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'xdc_orders_west'), (SELECT count(*) FROM sys_operator.multi_cluster_info WHERE cluster_name = 'orders-west')").Scan(&slots, &rows); err != nil {
		t.Fatal(err)
	}
	if slots != 0 || rows != 0 {
		t.Fatalf("after apply: %d slots xdc_orders_west, %d catalogue rows for orders-west", slots, rows)
	}
	var backup int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'backup_tool'").Scan(&backup); err != nil || backup != 1 {
		t.Fatalf("backup_tool: %d (%v): a slot pgtopo does not know must stay", backup, err)
	}
	h.expect(h.pgtopo("diff", "-f", oneSite), 0, "No changes.")

	// west again, then out of the file with deletionPolicy delete: its
	// object and data, its catalogue row and its slot go in one step.
	h.expect(h.pgtopo("apply", "-f", topo), 0, "Apply complete")
	deleting := filepath.Join(h.dir, "delete-west.yaml")
	if err := os.WriteFile(deleting, []byte(strings.Replace(only, "  primary: orders-east", "  deletionPolicy: delete\n  primary: orders-east", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	r = h.pgtopo("diff", "-f", deleting)
	h.expect(r, 4, "delete-cluster", "object db/orders-west and its volumes: present → deleted", "sys_operator.multi_cluster_info orders-west on orders-east: present → removed", "slot xdc_orders_west on orders-east", "1 to delete")
	h.expect(h.pgtopo("apply", "-f", deleting), 0, "Apply complete")
	if _, err := h.lab.Dyn["west"].Resource(postgresqlGVR).Namespace("db").Get(ctx, "orders-west", metav1.GetOptions{}); err == nil {
		t.Fatal("orders-west's object is still there")
	}
	if err := c.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'xdc_orders_west'), (SELECT count(*) FROM sys_operator.multi_cluster_info WHERE cluster_name = 'orders-west')").Scan(&slots, &rows); err != nil {
		t.Fatal(err)
	}
	if slots != 0 || rows != 0 {
		t.Fatalf("after the deletion: %d slots xdc_orders_west, %d catalogue rows for orders-west", slots, rows)
	}
	h.expect(h.pgtopo("diff", "-f", deleting), 0, "No changes.")
	h.noSecretsInOutput()
}

// freeze stops the processes of a lab site that match any of patterns
// (SIGSTOP) and returns what resumes them, once.
func freeze(t testing.TB, dir, site string, patterns ...string) func() {
	t.Helper()
	var pids []int
	for _, pattern := range patterns {
		found, err := lab.SiteProcesses(dir, site, pattern)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, found...)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		})
	}
}

// churnWAL writes a row, switches to a new 16 MB segment and checkpoints,
// until done says so (at most 40 segments), so old WAL goes.
func churnWAL(t testing.TB, c *pgx.Conn, done func() bool) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		for _, sql := range []string{"INSERT INTO churn VALUES (1)", "SELECT pg_switch_wal()", "CHECKPOINT"} {
			if _, err := c.Exec(ctx, sql); err != nil {
				t.Fatal(err)
			}
		}
		if done() {
			return
		}
	}
}
