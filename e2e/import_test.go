package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/pgtopo/pgtopo/flavor/patroni"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/operator"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// A pair built by hand exactly as the operator's runbook does it (the
// primary's CR, the bootstrap Secret with its admin credentials, CHECKPOINT,
// the standby's CR with isReplica, peerHost and peerPort) is imported:
// pgtopo writes its file as it runs, the first plan only records pgtopo's
// marks, applying it restarts neither database, and the adopted pair then
// switches over like any other.
func TestImportARunbookPair(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	ctx := context.Background()
	create := func(site, name string, replication map[string]any, instances int64) {
		t.Helper()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
			"metadata": map[string]any{"name": name, "namespace": "db"},
			"spec": map[string]any{
				"teamId":             "ACID",
				"postgresql":         map[string]any{"version": "15", "parameters": map[string]any{"max_slot_wal_keep_size": "10GB"}},
				"numberOfInstances":  instances,
				"clusterReplication": replication,
				"volume":             map[string]any{"size": "1Gi"},
			},
		}}
		if _, err := h.lab.Dyn[site].Resource(postgresqlGVR).Namespace("db").Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, site := range []string{"east", "west"} {
		_, err := h.lab.Kube[site].CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "db"}}, metav1.CreateOptions{})
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
	}
	// 1. The primary, with replication enabled.
	create("east", "shop-east", map[string]any{"enabled": true, "replSvcType": "NodePort"}, 2)
	h.lab.WaitRunning(t, "east", "db", "shop-east", 3*time.Minute)
	// 2. The bootstrap Secret: the primary's admin credentials, by hand.
	creds, err := h.lab.Kube["east"].CoreV1().Secrets("db").Get(ctx, "postgres.shop-east.credentials.postgresql.acid.zalan.do", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.lab.Kube["west"].CoreV1().Secrets("db").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "standby-bootstrap-secret", Namespace: "db"},
		Type:       corev1.SecretTypeBasicAuth,
		Data:       map[string][]byte{"username": creds.Data["username"], "password": creds.Data["password"]},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// 3. CHECKPOINT on the primary.
	c, err := h.conn("east", "shop-east")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	// 4. The standby, pointing at the primary's NodePort.
	host, port := h.lab.Endpoint(t, "east", "db", "shop-east")
	create("west", "shop-west", map[string]any{"enabled": true, "isReplica": true, "peerHost": host, "peerPort": int64(port),
		"replSvcType": "NodePort", "bootstrapSecret": "standby-bootstrap-secret"}, 1)
	h.lab.WaitRunning(t, "west", "db", "shop-west", 3*time.Minute)
	labtest.Eventually(t, 2*time.Minute, "shop-west streaming from shop-east", func() error {
		c, err := h.conn("west", "shop-west")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		var status string
		if err := c.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&status); err != nil {
			return err
		}
		if status != "streaming" {
			return fmt.Errorf("wal receiver %s", status)
		}
		return nil
	})
	started := h.postmasterStarts("shop")

	// Import writes the file and says what its first plan does.
	out := filepath.Join(h.dir, "imported")
	r := h.pgtopo("import", "--site", "east=lab-east", "--site", "west=lab-west", "--namespace", "db",
		"--ca-configmap", lab.PostgresCAConfigMap, "--out-dir", out)
	h.expect(r, 0, "wrote "+filepath.Join(out, "shop.yaml"))
	if !strings.Contains(r.stderr, "shop: db/shop-east in site east ← db/shop-west in site west (same system identifier); first plan: only pgtopo's marks (record)") {
		t.Fatalf("import's account of the pair:\n%s", r.stderr)
	}
	file := filepath.Join(out, "shop.yaml")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: shop\n", `teamId: "ACID"`, `"max_slot_wal_keep_size": "10GB"`, "serviceType: NodePort",
		`bootstrapSecret: "standby-bootstrap-secret"`, "instances: 2", `volume: {size: "1Gi"}`, "primary: shop-east"} {
		if !strings.Contains(string(data), want) {
			t.Fatalf("the imported file lacks %q:\n%s", want, data)
		}
	}
	// A second import, with the sites and TLS of a file at hand, writes
	// over nothing.
	r = h.pgtopo("import", "-f", h.topology("orders-east"), "--namespace", "db", "--out-dir", out)
	if r.code != 1 || !strings.Contains(r.stderr, "shop.yaml exists already") {
		t.Fatalf("a second import over the file: exit %d\n%s", r.code, r.stderr)
	}

	// The first diff: pgtopo's marks and nothing else.
	r = h.pgtopo("diff", "-f", file, "-o", "json")
	if r.code != 4 {
		t.Fatalf("diff of the imported file: exit %d, want 4 (the marks to record):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var pl plan.Plan
	if err := json.Unmarshal([]byte(r.stdout), &pl); err != nil {
		t.Fatal(err)
	}
	for _, s := range pl.Steps {
		if s.Action != plan.ActionRecord && s.Action != plan.ActionLock {
			t.Fatalf("the first plan of an imported pair has a %s step (%s): %s", s.Action, s.Subject.Cluster, s.Reason)
		}
	}
	h.expect(h.pgtopo("apply", "-f", file), 0, "Apply complete")
	h.expect(h.pgtopo("diff", "-f", file), 0)
	if now := h.postmasterStarts("shop"); now != started {
		t.Fatalf("adopting the pair restarted a database: postmaster start times %v, then %v", started, now)
	}
	// Managed now: a new import leaves it alone.
	r = h.pgtopo("import", "--site", "east=lab-east", "--site", "west=lab-west", "--namespace", "db", "--ca-configmap", lab.PostgresCAConfigMap)
	if r.code != 1 || !strings.Contains(r.stderr, "already managed by pgtopo") || !strings.Contains(r.stderr, "no hot-standby pair found") {
		t.Fatalf("an import of a managed pair: exit %d\n%s", r.code, r.stderr)
	}

	// Adopted for real: a switchover by the file.
	moved := strings.Replace(string(data), "primary: shop-east", "primary: shop-west", 1)
	if err := os.WriteFile(file, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	h.expect(h.pgtopo("apply", "-f", file), 0, "Apply complete")
	if ok, err := h.writable("west", "shop-west"); !ok {
		t.Fatalf("shop-west not writable after the switchover: %v", err)
	}
	h.noSecretsInOutput()
}

// postmasterStarts is when each of the pair NAME-east, NAME-west started.
func (h *harness) postmasterStarts(name string) [2]time.Time {
	h.t.Helper()
	var out [2]time.Time
	for i, site := range []string{"east", "west"} {
		c, err := h.conn(site, name+"-"+site)
		if err != nil {
			h.t.Fatal(err)
		}
		if err := c.QueryRow(context.Background(), "SELECT pg_postmaster_start_time()").Scan(&out[i]); err != nil {
			h.t.Fatal(err)
		}
		c.Close(context.Background())
	}
	return out
}

// A Kubernetes standby of a Patroni cluster on VMs, built by hand (a
// CHECKPOINT on the Patroni primary, a bootstrap Secret with its admin
// credentials, the standby's slot as a Patroni permanent slot, the
// standby's CR following the endpoint in front of Patroni's leader), is
// imported from a file that names the Kubernetes site and the Patroni
// cluster (no API lists Patroni clusters): the imported file pairs them
// by system identifier, and adopting it restarts neither database.
func TestImportAPatroniPair(t *testing.T) {
	t.Parallel()
	m := newMixed(t)
	ctx := context.Background()

	// The file at hand: lab-mixed.yaml with the Patroni cluster alone.
	full, err := os.ReadFile(m.topology("orders-dc1"))
	if err != nil {
		t.Fatal(err)
	}
	from, to := strings.Index(string(full), "    - name: orders-east\n"), strings.Index(string(full), "  primary:")
	if from < 0 || to < from {
		t.Fatalf("lab-mixed.yaml has no orders-east cluster before its primary:\n%s", full)
	}
	sites := filepath.Join(m.dir, "sites.yaml")
	if err := os.WriteFile(sites, append(full[:from:from], full[to:]...), 0o644); err != nil {
		t.Fatal(err)
	}

	// 1. CHECKPOINT on the Patroni primary.
	c, err := m.connect("orders-dc1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	// 2. The bootstrap Secret: the Patroni cluster's admin credentials.
	_, err = m.lab.Kube["east"].CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "db"}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	_, err = m.lab.Kube["east"].CoreV1().Secrets("db").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "standby-bootstrap-secret", Namespace: "db"},
		Type:       corev1.SecretTypeBasicAuth,
		Data:       map[string][]byte{"username": []byte(m.creds[lab.EnvPGUser]), "password": []byte(m.creds[lab.EnvPGPassword])},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// 3. The standby's slot, kept by Patroni as a permanent slot.
	rest := &patroni.Client{HTTP: http.DefaultClient, User: m.creds[lab.EnvRESTUser], Password: m.creds[lab.EnvRESTPassword]}
	for _, member := range m.dc1.Members {
		rest.Members = append(rest.Members, snapshot.Endpoint{Host: member, Port: 8008})
	}
	slot := operator.SlotName("orders-east")
	if err := rest.PatchConfig(ctx, map[string]any{"slots": map[string]any{slot: map[string]any{"type": "physical"}}}); err != nil {
		t.Fatal(err)
	}
	// 4. The standby, following the endpoint in front of the leader.
	host, portText, _ := strings.Cut(m.dc1.Endpoint, ":")
	port, err := strconv.Atoi(portText)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
		"metadata": map[string]any{"name": "orders-east", "namespace": "db"},
		"spec": map[string]any{
			"teamId":            "ACID",
			"postgresql":        map[string]any{"version": "15", "parameters": map[string]any{"max_slot_wal_keep_size": "10GB"}},
			"numberOfInstances": int64(1),
			"clusterReplication": map[string]any{"enabled": true, "isReplica": true, "peerHost": host, "peerPort": int64(port),
				"replSvcType": "NodePort", "bootstrapSecret": "standby-bootstrap-secret"},
			"volume": map[string]any{"size": "1Gi"},
		},
	}}
	if _, err := m.lab.Dyn["east"].Resource(postgresqlGVR).Namespace("db").Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m.lab.WaitRunning(t, "east", "db", "orders-east", 3*time.Minute)
	labtest.Eventually(t, 2*time.Minute, "orders-east streaming from orders-dc1 through slot "+slot, func() error {
		var active bool
		m.query("orders-dc1", "SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = '"+slot+"'), false)", &active)
		if !active {
			return fmt.Errorf("slot %s not active on orders-dc1", slot)
		}
		return nil
	})
	starts := func() [2]time.Time {
		var out [2]time.Time
		m.query("orders-dc1", "SELECT pg_postmaster_start_time()", &out[0])
		m.query("orders-east", "SELECT pg_postmaster_start_time()", &out[1])
		return out
	}
	started := starts()

	out := filepath.Join(m.dir, "imported")
	r := m.run("import", "-f", sites, "--namespace", "db", "--out-dir", out)
	m.expect(r, 0, "wrote "+filepath.Join(out, "orders.yaml"))
	// Beyond the marks, pgtopo lists the Patroni primary in its own
	// catalogue, which its operator standbys replicate (their operator
	// keeps its slot once one of them is primary): a row, no restart.
	if !strings.Contains(r.stderr, "orders: Patroni cluster orders-dc1 in site dc1 ← db/orders-east in site east (same system identifier); first plan: pgtopo's marks and what keeps WAL for the standbys (ensure-slot orders-dc1): nothing restarts") {
		t.Fatalf("import's account of the pair:\n%s", r.stderr)
	}
	file := filepath.Join(out, "orders.yaml")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: patroni", `scope: "orders-dc1"`, fmt.Sprintf(`endpoint: {host: %q, port: %d}`, host, port),
		`bootstrapSecret: "standby-bootstrap-secret"`, `"max_slot_wal_keep_size": "10GB"`, "primary: orders-dc1"} {
		if !strings.Contains(string(data), want) {
			t.Fatalf("the imported file lacks %q:\n%s", want, data)
		}
	}

	r = m.run("diff", "-f", file, "-o", "json")
	if r.code != 4 {
		t.Fatalf("diff of the imported file: exit %d, want 4 (the marks to record):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var pl plan.Plan
	if err := json.Unmarshal([]byte(r.stdout), &pl); err != nil {
		t.Fatal(err)
	}
	for _, s := range pl.Steps {
		if s.Action != plan.ActionRecord && s.Action != plan.ActionLock && s.Action != plan.ActionEnsureSlot {
			t.Fatalf("the first plan of an imported pair has a %s step (%s): %s", s.Action, s.Subject.Cluster, s.Reason)
		}
	}
	m.expect(m.run("apply", "-f", file), 0, "Apply complete")
	m.expect(m.run("diff", "-f", file), 0)
	if now := starts(); now != started {
		t.Fatalf("adopting the pair restarted a database: postmaster start times %v, then %v", started, now)
	}
	// Managed now, Patroni's cluster too (its marks are in its dynamic
	// configuration): a new import leaves both alone.
	r = m.run("import", "-f", sites, "--namespace", "db")
	if r.code != 1 || !strings.Contains(r.stderr, "Patroni cluster orders-dc1 in site dc1: already managed by pgtopo") || !strings.Contains(r.stderr, "no hot-standby pair found") {
		t.Fatalf("an import of a managed pair: exit %d\n%s", r.code, r.stderr)
	}
	m.noPatroniSecrets()
}
