package live

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/snapshot"
)

// A connection goes to the endpoint and nowhere else, whatever libpq's
// environment says: with PGHOST and PGPORT naming a listening address, a
// refused endpoint must not make pgtopo try (and send the password to)
// that address, as pgx's fallback hosts from the environment would.
func TestConnectGoesOnlyToTheEndpoint(t *testing.T) {
	decoy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer decoy.Close()
	var reached atomic.Int32
	go func() {
		for {
			c, err := decoy.Accept()
			if err != nil {
				return
			}
			reached.Add(1)
			c.Close()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	_, decoyPort, _ := net.SplitHostPort(decoy.Addr().String())
	t.Setenv("PGHOST", "127.0.0.1")
	t.Setenv("PGPORT", decoyPort)
	t.Setenv("PGSSLMODE", "prefer")
	t.Setenv("PGOPTIONS", "-c default_transaction_read_only=on")
	t.Setenv("PGTARGETSESSIONATTRS", "read-write")
	t.Setenv("PGAPPNAME", "not-pgtopo")

	ep := snapshot.Endpoint{Host: "127.0.0.1", Port: refusing}
	if _, err := Connect(context.Background(), ep, "postgres", "s3cret", 2*time.Second); err == nil {
		t.Fatal("connected to a refusing endpoint")
	}
	time.Sleep(100 * time.Millisecond)
	if n := reached.Load(); n != 0 {
		t.Fatalf("%d connection(s) went to PGHOST:PGPORT (%s), not named by the topology", n, decoy.Addr())
	}
	cfg, err := ConnConfig(ep, "postgres", "s3cret", time.Second, "pgtopo")
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
