package live

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/lab/certs"
	"github.com/pgtopo/pgtopo/lab/pgtest"
	"github.com/pgtopo/pgtopo/snapshot"
)

func testCAPEM(t testing.TB) []byte { return pgtest.CA(t).CertPEM }

func relayed(r *pgtest.Relay) snapshot.Endpoint {
	return snapshot.Endpoint{Host: r.Host(), Port: r.Port()}
}

// TestTLSToRealPostgres: pgtopo reaches a real PostgreSQL over TLS only,
// verified against the CA it was given. Whatever a mode allows, nothing
// it sends before the handshake carries the user or the password, and a
// certificate that does not prove the server is a refusal saying what did
// not match.
func TestTLSToRealPostgres(t *testing.T) {
	s := pgtest.Start(t)
	ctx := context.Background()
	connect := func(ep snapshot.Endpoint, tls TLS) error {
		c, err := Connect(ctx, ep, Login{User: "postgres", Password: pgtest.Password, TLS: tls}, 3*time.Second)
		if err == nil {
			var ssl bool
			err = c.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl)
			c.Close(ctx)
			if err == nil && !ssl && tls.Mode != "disable" {
				t.Fatalf("mode %q: the server reports the session unencrypted", tls.Mode)
			}
		}
		return err
	}
	good := TLS{CA: testCAPEM(t), From: "ConfigMap db/pg-ca (key ca.crt)"}

	t.Run("verified against the CA, nothing in plaintext", func(t *testing.T) {
		t.Setenv("PGSSLMODE", "disable")
		relay := pgtest.StartRelay(t, "127.0.0.1", s.Endpoint.String())
		if err := connect(relayed(relay), good); err != nil {
			t.Fatal(err)
		}
		conns := relay.Sessions()
		if len(conns) != 1 {
			t.Fatalf("%d connections, want 1", len(conns))
		}
		if !bytes.HasPrefix(conns[0], pgtest.SSLRequest) {
			t.Fatalf("the first message was not SSLRequest: % x", conns[0][:min(16, len(conns[0]))])
		}
		for _, plain := range []string{"user\x00postgres", pgtest.Password, "application_name"} {
			if bytes.Contains(conns[0], []byte(plain)) {
				t.Fatalf("%q went over the wire in plaintext", plain)
			}
		}
	})

	t.Run("a wrong CA is refused, naming where the CA came from", func(t *testing.T) {
		other, err := certs.NewCA("another CA")
		if err != nil {
			t.Fatal(err)
		}
		for _, mode := range []string{"verify-full", "verify-ca"} {
			err := connect(s.Endpoint, TLS{Mode: mode, CA: other.CertPEM, From: "ConfigMap db/pg-ca (key ca.crt)"})
			if err == nil || !strings.Contains(err.Error(), "does not chain to the CA from ConfigMap db/pg-ca") || !strings.Contains(err.Error(), s.Endpoint.String()) {
				t.Fatalf("%s with a wrong CA: %v", mode, err)
			}
		}
	})

	t.Run("verify-full refuses a host the certificate does not name; verify-ca takes it", func(t *testing.T) {
		// 127.0.0.3 reaches the server, but its certificate names
		// 127.0.0.1 and localhost only.
		relay := pgtest.StartRelay(t, "127.0.0.3", s.Endpoint.String())
		err := connect(relayed(relay), good)
		if err == nil || !strings.Contains(err.Error(), "does not name the host pgtopo reached (127.0.0.3") {
			t.Fatalf("verify-full to an unnamed host: %v", err)
		}
		if err := connect(relayed(relay), TLS{Mode: "verify-ca", CA: good.CA, From: good.From}); err != nil {
			t.Fatalf("verify-ca to an unnamed host: %v", err)
		}
	})

	t.Run("a server without TLS is refused under require; disable is plaintext by choice", func(t *testing.T) {
		plain := pgtest.StartPlaintext(t)
		for _, mode := range []string{"require", "verify-ca", "verify-full"} {
			err := connect(plain.Endpoint, TLS{Mode: mode, CA: good.CA})
			if err == nil || !strings.Contains(err.Error(), "does not offer TLS") {
				t.Fatalf("%s to a plaintext server: %v", mode, err)
			}
			if strings.Contains(err.Error(), pgtest.Password) {
				t.Fatalf("the error shows the password: %v", err)
			}
		}
		if err := connect(plain.Endpoint, TLS{Mode: "disable"}); err != nil {
			t.Fatalf("disable: %v", err)
		}
	})
}
