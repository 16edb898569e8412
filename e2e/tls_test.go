package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/certs"
	"github.com/pgtopo/pgtopo/lab/pgtest"
)

// checkTLS: on a lab whose every server serves TLS alone, from its site's
// CA, pgtopo's sessions start with the TLS handshake and verify the
// server against the CA the topology names; libpq's environment sends
// nothing anywhere else; a CA that does not match, or is missing, is a
// refusal naming the cluster, the endpoint and the CA's source.
func (h *harness) checkTLS(t *testing.T, topologyFile string) {
	ctx := context.Background()
	st, err := lab.Load(h.lab.Dir)
	if err != nil {
		t.Fatal(err)
	}
	east, _ := st.Site("east")
	node := st.Addrs(east).NodeIP().String()
	svc, err := h.lab.Kube["east"].CoreV1().Services("db").Get(ctx, "orders-east", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	real := fmt.Sprintf("%s:%d", node, svc.Spec.Ports[0].NodePort)
	password := h.lab.Password(t, "east", "db", "orders-east")

	// pgtopo reaches orders-east through a recording relay on the node's
	// own address (which its certificate names), PGHOST pointing at a
	// decoy that must hear nothing.
	relay := pgtest.StartRelay(t, node, real)
	decoy := pgtest.StartDecoy(t)
	src, err := os.ReadFile(topologyFile)
	if err != nil {
		t.Fatal(err)
	}
	relayed := filepath.Join(h.dir, "relayed.yaml")
	data := strings.Replace(string(src), "      site: east\n      namespace: db\n",
		fmt.Sprintf("      site: east\n      namespace: db\n      endpoint: {host: %s, port: %d}\n", node, relay.Port()), 1)
	if err := os.WriteFile(relayed, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	r := h.pgtopoEnv([]string{"KUBECONFIG=" + lab.Paths{Dir: h.lab.Dir}.Kubeconfig(),
		"PGHOST=127.0.0.1", "PGPORT=" + decoy.Port(), "PGSSLMODE=disable", "PGSSLROOTCERT=/nonexistent"}, "status", "-f", relayed)
	h.expect(r, 0, "orders-east  east  db         primary")
	sessions := relay.Sessions()
	if len(sessions) == 0 {
		t.Fatalf("no session went through the relay:\n%s", r.stdout)
	}
	for i, s := range sessions {
		if !bytes.HasPrefix(s, pgtest.SSLRequest) {
			t.Fatalf("session %d did not open with SSLRequest: % x", i, s[:min(16, len(s))])
		}
		for _, plain := range []string{"user\x00postgres", password, "application_name"} {
			if bytes.Contains(s, []byte(plain)) {
				t.Fatalf("session %d sent %q in plaintext", i, plain)
			}
		}
	}
	if n := decoy.Hits(); n != 0 {
		t.Fatalf("%d connection(s) went to PGHOST:PGPORT, which the topology does not name", n)
	}
	t.Logf("%d session(s) through the relay, each TLS from its first message; none to PGHOST", len(sessions))

	// A CA that did not sign the servers' certificates, and one that is
	// not there: refusals, with the words to act on.
	other, err := certs.NewCA("not the lab's CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, site := range []string{"east", "west"} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "another-ca"}, Data: map[string]string{"ca.crt": string(other.CertPEM)}}
		if _, err := h.lab.Kube[site].CoreV1().ConfigMaps("db").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ configMap, want string }{
		{"another-ca", "does not chain to the CA from ConfigMap db/another-ca (key ca.crt)"},
		{"no-such-ca", `not probed: get ConfigMap db/no-such-ca (key ca.crt): configmaps "no-such-ca" not found`},
	} {
		path := filepath.Join(h.dir, tc.configMap+".yaml")
		data := strings.Replace(string(src), "configMap: {name: pglab-postgres-ca}", "configMap: {name: "+tc.configMap+"}", 1)
		if data == string(src) {
			t.Fatal("the lab topology names no CA ConfigMap")
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		r := h.pgtopo("status", "-f", path)
		if r.code == 0 || !strings.Contains(r.stdout, tc.want) || !strings.Contains(r.stdout, "orders-east") {
			t.Fatalf("CA %s: exit %d, want a refusal saying %q:\n%s%s", tc.configMap, r.code, tc.want, r.stdout, r.stderr)
		}
		if tc.configMap == "another-ca" && !strings.Contains(r.stdout, real) {
			t.Fatalf("the refusal does not name the endpoint %s:\n%s", real, r.stdout)
		}
		// Nothing is planned from a database pgtopo could not verify.
		d := h.pgtopo("diff", "-f", path)
		if d.code == 0 || strings.Contains(d.stdout, "ensure-primary") || strings.Contains(d.stdout, "create-standby") {
			t.Fatalf("diff with CA %s: exit %d:\n%s", tc.configMap, d.code, d.stdout)
		}
	}
}
