package lab_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/operator"
	"github.com/pgtopo/pgtopo/lab/proc"
)

const ns = "db"

func postgresCR(name string, instances int, repl map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"teamId": "ACID", "numberOfInstances": int64(instances),
			"postgresql":         map[string]any{"version": "15", "parameters": map[string]any{"max_slot_wal_keep_size": "10GB"}},
			"volume":             map[string]any{"size": "1Gi"},
			"clusterReplication": repl,
		},
	}}
}

func create(t *testing.T, l *labtest.Lab, site string, cr *unstructured.Unstructured) {
	t.Helper()
	if _, err := l.Dyn[site].Resource(operator.GVR).Namespace(ns).Create(context.Background(), cr, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s in %s: %v", cr.GetName(), site, err)
	}
}

func patch(t *testing.T, l *labtest.Lab, site, name, body string) {
	t.Helper()
	if _, err := l.Dyn[site].Resource(operator.GVR).Namespace(ns).Patch(context.Background(), name, types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch %s in %s: %v", name, site, err)
	}
}

func dial(t *testing.T, host string, port int, password string) *pgx.Conn {
	t.Helper()
	var c *pgx.Conn
	labtest.Eventually(t, 30*time.Second, fmt.Sprintf("connect %s:%d", host, port), func() error {
		var err error
		c, err = pgx.Connect(context.Background(), fmt.Sprintf("postgres://postgres:%s@%s:%d/postgres?sslmode=require&connect_timeout=3", password, host, port))
		return err
	})
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func queryInt(t *testing.T, c *pgx.Conn, sql string) int64 {
	t.Helper()
	var n int64
	if err := c.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func bootstrapSecret(t *testing.T, l *labtest.Lab, site, password string) {
	t.Helper()
	_, err := l.Kube[site].CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "standby-bootstrap-secret"}, Type: corev1.SecretTypeBasicAuth,
		StringData: map[string]string{"username": "postgres", "password": password}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

type member struct {
	Role, State string
	Timeline    int
}

func patroniMember(l *labtest.Lab, site, cluster string, i int) (member, error) {
	pod, err := l.Kube[site].CoreV1().Pods(ns).Get(context.Background(), fmt.Sprintf("%s-%d", cluster, i), metav1.GetOptions{})
	if err != nil {
		return member{}, err
	}
	if pod.Status.PodIP == "" {
		return member{}, fmt.Errorf("pod %s has no IP yet", pod.Name)
	}
	var m member
	return m, labtest.GetJSON("http://"+pod.Status.PodIP+":8008/patroni", &m)
}

// TestLab drives the lab as the operator's hot-standby runbook describes the operator: a primary, a
// standby born as a standby in another site, and the runbook's two-phase
// switchover through the CRs alone.
func TestLab(t *testing.T) {
	l := labtest.Start(t, "east", "west")
	ctx := context.Background()

	create(t, l, "east", postgresCR("orders-east", 2, map[string]any{"enabled": true, "replSvcType": "NodePort"}))
	l.WaitRunning(t, "east", ns, "orders-east", 90*time.Second)
	password := l.Password(t, "east", ns, "orders-east")
	eastHost, eastPort := l.Endpoint(t, "east", ns, "orders-east")

	t.Run("primary is writable through its NodePort Service", func(t *testing.T) {
		c := dial(t, eastHost, eastPort, password)
		if _, err := c.Exec(ctx, "CREATE TABLE rows (id int PRIMARY KEY); INSERT INTO rows SELECT generate_series(1, 500)"); err != nil {
			t.Fatal(err)
		}
		if n := queryInt(t, c, "SELECT count(*) FROM sys_operator.multi_cluster_info WHERE cluster_name = 'orders-east'"); n != 1 {
			t.Errorf("multi_cluster_info has %d rows for the primary", n)
		}
		pods, err := l.Kube["east"].CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "cluster-name=orders-east,spilo-role=master"})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("master pods: %v %v", pods, err)
		}
	})

	t.Run("standby created as a standby streams from the primary", func(t *testing.T) {
		bootstrapSecret(t, l, "west", password)
		create(t, l, "west", postgresCR("orders-west", 1, map[string]any{"enabled": true, "isReplica": true,
			"peerHost": eastHost, "peerPort": int64(eastPort), "replSvcType": "NodePort", "bootstrapSecret": "standby-bootstrap-secret"}))
		l.WaitRunning(t, "west", ns, "orders-west", 90*time.Second)
		westHost, westPort := l.Endpoint(t, "west", ns, "orders-west")
		standby := dial(t, westHost, westPort, password)
		waitStreaming(t, standby, "orders-west")
		if m, err := patroniMember(l, "west", "orders-west", 0); err != nil || m.Role != "standby_leader" {
			t.Fatalf("orders-west-0: %+v %v", m, err)
		}
		primary := dial(t, eastHost, eastPort, password)
		if _, err := primary.Exec(ctx, "INSERT INTO rows SELECT generate_series(501, 1000)"); err != nil {
			t.Fatal(err)
		}
		labtest.Eventually(t, 20*time.Second, "rows replicated", func() error {
			if n := queryInt(t, standby, "SELECT count(*) FROM rows"); n != 1000 {
				return fmt.Errorf("%d rows on the standby", n)
			}
			return nil
		})
		if n := queryInt(t, primary, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'xdc_orders_west' AND active"); n != 1 {
			t.Errorf("primary has no active slot for the standby")
		}
		if n := queryInt(t, primary, "SELECT count(*) FROM sys_operator.multi_cluster_info WHERE cluster_name = 'orders-west' AND external_ip <> ''"); n != 1 {
			t.Errorf("standby not registered with its NodePort address")
		}
		if sysid(t, primary) != sysid(t, standby) {
			t.Errorf("system identifiers differ")
		}
	})

	t.Run("two-phase switchover by hand through the CRs", func(t *testing.T) {
		westHost, westPort := l.Endpoint(t, "west", ns, "orders-west")
		// Phase 1: demote the primary to a standby of the target.
		patch(t, l, "east", "orders-east", fmt.Sprintf(`{"spec":{"numberOfInstances":1,"clusterReplication":{"isReplica":true,"peerHost":%q,"peerPort":%d}}}`, westHost, westPort))
		labtest.Eventually(t, 60*time.Second, "orders-east demoted to standby leader", func() error {
			m, err := patroniMember(l, "east", "orders-east", 0)
			if err != nil {
				return err
			}
			if m.Role != "standby_leader" || m.State != "running" {
				return fmt.Errorf("%+v", m)
			}
			return nil
		})
		// Phase 2: promote the target.
		patch(t, l, "west", "orders-west", `{"spec":{"numberOfInstances":2,"clusterReplication":{"isReplica":false}}}`)
		labtest.Eventually(t, 60*time.Second, "orders-west promoted", func() error {
			m, err := patroniMember(l, "west", "orders-west", 0)
			if err != nil {
				return err
			}
			if m.Role != "master" || m.Timeline != 2 {
				return fmt.Errorf("%+v", m)
			}
			return nil
		})
		newPrimary := dial(t, westHost, westPort, password)
		if n := queryInt(t, newPrimary, "SELECT count(*) FROM rows"); n != 1000 {
			t.Errorf("%d rows after the switchover, want 1000", n)
		}
		if _, err := newPrimary.Exec(ctx, "INSERT INTO rows VALUES (1001)"); err != nil {
			t.Fatalf("new primary not writable: %v", err)
		}
		old := dial(t, eastHost, eastPort, password)
		waitStreaming(t, old, "orders-east")
		if m, err := patroniMember(l, "east", "orders-east", 0); err != nil || m.Role != "standby_leader" {
			t.Fatalf("orders-east-0: %+v %v", m, err)
		}
		labtest.Eventually(t, 20*time.Second, "old primary receives timeline 2", func() error {
			if tli := queryInt(t, old, "SELECT received_tli FROM pg_stat_wal_receiver"); tli != 2 {
				return fmt.Errorf("receiving timeline %d", tli)
			}
			return nil
		})
		labtest.Eventually(t, 20*time.Second, "row written on the new primary reaches the old one", func() error {
			if n := queryInt(t, old, "SELECT count(*) FROM rows"); n != 1001 {
				return fmt.Errorf("%d rows", n)
			}
			return nil
		})
		l.WaitRunning(t, "west", ns, "orders-west", 60*time.Second)
		pods, _ := l.Kube["west"].CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "cluster-name=orders-west"})
		if len(pods.Items) != 2 {
			t.Errorf("orders-west has %d pods after scaling to 2", len(pods.Items))
		}
	})

	t.Run("ClusterIP and LoadBalancer Services are reachable", func(t *testing.T) {
		create(t, l, "east", postgresCR("inv-a", 2, map[string]any{"enabled": true, "replSvcType": "ClusterIP"}))
		create(t, l, "east", postgresCR("pay-a", 1, map[string]any{"enabled": true, "replSvcType": "LoadBalancer"}))
		l.WaitRunning(t, "east", ns, "inv-a", 90*time.Second)
		l.WaitRunning(t, "east", ns, "pay-a", 90*time.Second)
		for _, cl := range []string{"inv-a", "pay-a"} {
			host, port := l.Endpoint(t, "east", ns, cl)
			if !strings.HasPrefix(host, "127.") {
				t.Errorf("%s endpoint %s is not a loopback address", cl, host)
			}
			c := dial(t, host, port, l.Password(t, "east", ns, cl))
			if n := queryInt(t, c, "SELECT CASE WHEN pg_is_in_recovery() THEN 0 ELSE 1 END"); n != 1 {
				t.Errorf("%s master Service does not reach the leader", cl)
			}
		}
		repl, err := l.Kube["east"].CoreV1().Services(ns).Get(ctx, "inv-a-repl", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c := dial(t, repl.Spec.ClusterIP, 5432, l.Password(t, "east", ns, "inv-a"))
		if n := queryInt(t, c, "SELECT CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END"); n != 1 {
			t.Errorf("replica Service does not reach a replica")
		}
	})

	t.Run("a LoadBalancer standby registers with an empty external_ip", func(t *testing.T) {
		payPassword := l.Password(t, "east", ns, "pay-a")
		host, port := l.Endpoint(t, "east", ns, "pay-a")
		_, err := l.Kube["west"].CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "pay-bootstrap"}, Type: corev1.SecretTypeBasicAuth,
			StringData: map[string]string{"username": "postgres", "password": payPassword}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		create(t, l, "west", postgresCR("pay-b", 1, map[string]any{"enabled": true, "isReplica": true,
			"peerHost": host, "peerPort": int64(port), "replSvcType": "LoadBalancer", "bootstrapSecret": "pay-bootstrap"}))
		l.WaitRunning(t, "west", ns, "pay-b", 90*time.Second)
		c := dial(t, host, port, payPassword)
		labtest.Eventually(t, 20*time.Second, "pay-b registered", func() error {
			var ip string
			err := c.QueryRow(ctx, "SELECT external_ip FROM sys_operator.multi_cluster_info WHERE cluster_name = 'pay-b'").Scan(&ip)
			if err != nil {
				return err
			}
			if ip != "" {
				t.Errorf("external_ip = %q, want empty as the real operator leaves it", ip)
			}
			return nil
		})
	})
}

// waitStreaming waits until a standby's WAL receiver streams.
func waitStreaming(t *testing.T, c *pgx.Conn, name string) {
	t.Helper()
	labtest.Eventually(t, 60*time.Second, name+" streaming", func() error {
		var status string
		err := c.QueryRow(context.Background(), "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&status)
		if err != nil {
			return err
		}
		if status != "streaming" {
			return fmt.Errorf("wal receiver %s", status)
		}
		return nil
	})
}

func sysid(t *testing.T, c *pgx.Conn) string {
	t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), "SELECT system_identifier::text FROM pg_control_system()").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDownLeavesNothing brings a lab up with a running cluster and proves
// down stops every process it started.
func TestDownLeavesNothing(t *testing.T) {
	l := labtest.Start(t, "solo")
	create(t, l, "solo", postgresCR("tiny", 1, map[string]any{"enabled": true}))
	l.WaitRunning(t, "solo", ns, "tiny", 90*time.Second)
	if got := proc.Mentioning(l.Dir); len(got) < 4 {
		t.Fatalf("expected etcd, apiserver, operator, patroni and postgres running, found %d processes", len(got))
	}
	start := time.Now()
	if err := lab.Down(l.Dir); err != nil {
		t.Fatal(err)
	}
	if left := proc.Mentioning(l.Dir); len(left) != 0 {
		t.Fatalf("processes left after down: %v", left)
	}
	t.Logf("down took %s", time.Since(start).Round(time.Millisecond))
}
