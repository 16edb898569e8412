package live

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/lab/pgtest"
	"github.com/pgtopo/pgtopo/snapshot"
)

// A connection goes to the endpoint and nowhere else, whatever libpq's
// environment says: with PGHOST and PGPORT naming a listening address, a
// refused endpoint must not make pgtopo try (and send the password to)
// that address, as pgx's fallback hosts from the environment would.
func TestConnectGoesOnlyToTheEndpoint(t *testing.T) {
	decoy := pgtest.StartDecoy(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	t.Setenv("PGHOST", "127.0.0.1")
	t.Setenv("PGPORT", decoy.Port())
	t.Setenv("PGSSLMODE", "prefer")
	t.Setenv("PGOPTIONS", "-c default_transaction_read_only=on")
	t.Setenv("PGTARGETSESSIONATTRS", "read-write")
	t.Setenv("PGAPPNAME", "not-pgtopo")

	ep := snapshot.Endpoint{Host: "127.0.0.1", Port: refusing}
	for k, v := range map[string]string{
		"PGSSLROOTCERT": "/nonexistent/root.crt", "PGSSLCERT": "/nonexistent/client.crt", "PGSSLKEY": "/nonexistent/client.key",
		"PGPASSFILE": "/nonexistent/pgpass", "PGSSLNEGOTIATION": "direct", "PGCHANNELBINDING": "bogus",
		"PGREQUIREAUTH": "bogus", "PGMAXPROTOCOLVERSION": "9.9", "PGMINPROTOCOLVERSION": "9.9",
	} {
		t.Setenv(k, v)
	}
	if _, err := Connect(context.Background(), ep, Login{User: "postgres", Password: "s3cret"}, 2*time.Second); err == nil {
		t.Fatal("connected to a refusing endpoint")
	}
	time.Sleep(100 * time.Millisecond)
	if n := decoy.Hits(); n != 0 {
		t.Fatalf("%d connection(s) went to PGHOST:PGPORT (%s), not named by the topology", n, decoy.Addr())
	}
	cfg, err := ConnConfig(ep, Login{User: "postgres", Password: "s3cret", TLS: TLS{Mode: "disable"}}, time.Second, "pgtopo")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Fallbacks) != 0 || cfg.ValidateConnect != nil || cfg.TLSConfig != nil ||
		len(cfg.RuntimeParams) != 1 || cfg.RuntimeParams["application_name"] != "pgtopo" ||
		cfg.Host != "127.0.0.1" || strconv.Itoa(int(cfg.Port)) != strconv.Itoa(refusing) {
		t.Fatalf("configuration took from the environment: fallbacks %v, validate %v, tls %v, params %v, %s:%d",
			cfg.Fallbacks, cfg.ValidateConnect != nil, cfg.TLSConfig != nil, cfg.RuntimeParams, cfg.Host, cfg.Port)
	}
}

// The TLS configuration is the topology's mode and nothing weaker: no
// mode leaves a plaintext fallback, and the verifying ones check what
// they say.
func TestConnConfigTLSModes(t *testing.T) {
	ep := snapshot.Endpoint{Host: "db.example", Port: 5432}
	for _, tc := range []struct {
		mode                 string
		tls, skip, verifyCon bool
	}{
		{mode: "", tls: true},
		{mode: "verify-full", tls: true},
		{mode: "verify-ca", tls: true, skip: true, verifyCon: true},
		{mode: "require", tls: true, skip: true},
		{mode: "disable"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Setenv("PGSSLMODE", "disable")
			cfg, err := ConnConfig(ep, Login{User: "postgres", TLS: TLS{Mode: tc.mode, CA: testCAPEM(t), From: "a test"}}, time.Second, "pgtopo")
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Fallbacks) != 0 {
				t.Fatalf("fallbacks %v: a refused TLS handshake must not be retried another way", cfg.Fallbacks)
			}
			if got := cfg.TLSConfig != nil; got != tc.tls {
				t.Fatalf("TLS %v, want %v", got, tc.tls)
			}
			if !tc.tls {
				return
			}
			if cfg.TLSConfig.InsecureSkipVerify != tc.skip || (cfg.TLSConfig.VerifyConnection != nil) != tc.verifyCon {
				t.Fatalf("skip verify %v, own verification %v", cfg.TLSConfig.InsecureSkipVerify, cfg.TLSConfig.VerifyConnection != nil)
			}
			if !tc.skip && (cfg.TLSConfig.ServerName != "db.example" || cfg.TLSConfig.RootCAs == nil) {
				t.Fatalf("verify-full checks name %q against roots %v", cfg.TLSConfig.ServerName, cfg.TLSConfig.RootCAs)
			}
		})
	}
	if _, err := ConnConfig(ep, Login{TLS: TLS{Mode: "prefer"}}, time.Second, "pgtopo"); err == nil {
		t.Fatal("mode prefer (a plaintext fallback) was taken")
	}
	if _, err := ConnConfig(ep, Login{TLS: TLS{CA: []byte("not PEM"), From: "ConfigMap db/ca"}}, time.Second, "pgtopo"); err == nil || !strings.Contains(err.Error(), "ConfigMap db/ca") {
		t.Fatalf("a CA bundle with no certificate: %v", err)
	}
}
