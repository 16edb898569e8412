package cli

import (
	"context"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/flavor/patroni"
	"github.com/pgtopo/pgtopo/snapshot"
)

// Credentials come from the file named by --patroni-credentials first,
// then the environment, per cluster before for all; a _FILE variable names
// a file holding the value; a missing password says where to put one and
// shows no value.
func TestPatroniCredentials(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "patroni.env")
	if err := os.WriteFile(creds, []byte("# lab\nexport PGTOPO_PATRONI_REST_USER=patroni\nPGTOPO_PATRONI_ORDERS_DC1_PG_PASSWORD=dc1-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"PGTOPO_PATRONI_PG_PASSWORD":        "everyone-secret",
		"PGTOPO_PATRONI_REST_USER":          "not-this-one",
		"PGTOPO_PATRONI_REST_PASSWORD_FILE": pwFile,
	}
	p := &patroniFlags{credentialsFile: creds, getenv: func(k string) string { return env[k] }}
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cluster, user, password, restUser, restPassword string
	}{
		{"orders-dc1", "postgres", "dc1-secret", "patroni", "from-a-file"},
		{"orders-dc2", "postgres", "everyone-secret", "patroni", "from-a-file"},
	} {
		c, err := p.credentials(tc.cluster)
		if err != nil {
			t.Fatal(err)
		}
		if c.PGUser != tc.user || c.PGPassword != tc.password || c.RESTUser != tc.restUser || c.RESTPassword != tc.restPassword {
			t.Errorf("%s: %+v", tc.cluster, c)
		}
	}
	delete(env, "PGTOPO_PATRONI_PG_PASSWORD")
	_, err := p.credentials("orders-dc2")
	if err == nil || !strings.Contains(err.Error(), "no PostgreSQL password for orders-dc2: set PGTOPO_PATRONI_PG_PASSWORD (or PGTOPO_PATRONI_ORDERS_DC2_PG_PASSWORD)") {
		t.Fatalf("missing password: %v", err)
	}
	bad := &patroniFlags{credentialsFile: filepath.Join(dir, "bad.env"), getenv: func(string) string { return "" }}
	if err := os.WriteFile(bad.credentialsFile, []byte("PGTOPO_PATRONI_PG_PASSWORD hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := bad.open(); err == nil || !strings.Contains(err.Error(), "bad.env:1: want KEY=VALUE") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("a malformed line: %v", err)
	}
}

// A REST API over TLS is reached with the CA --patroni-ca names, and not
// without it.
func TestPatroniTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"members":[{"name":"pg1","role":"leader","state":"running"}]}`))
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is the point
	srv.StartTLS()
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "https://"))
	n, _ := strconv.Atoi(port)
	member := []snapshot.Endpoint{{Host: host, Port: n}}

	with := &patroniFlags{caFile: ca}
	if err := with.open(); err != nil {
		t.Fatal(err)
	}
	c := &patroni.Client{HTTP: with.client, Members: member, TLS: true}
	if v, err := c.Cluster(context.Background()); err != nil || len(v.Members) != 1 {
		t.Fatalf("with the CA: %+v %v", v, err)
	}
	without := &patroniFlags{}
	if err := without.open(); err != nil {
		t.Fatal(err)
	}
	c.HTTP = without.client
	if _, err := c.Cluster(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: %v, want a certificate error", err)
	}
	notPEM := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := (&patroniFlags{caFile: notPEM}).open(); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("a CA file without a certificate: %v", err)
	}
}
