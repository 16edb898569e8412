package pgtest

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/pgtopo/pgtopo/lab/certs"
)

var (
	caOnce sync.Once
	ca     *certs.CA
	caErr  error
)

// CA is the tests' CA: every server's certificate chains to it. Its PEM
// is what a test hands pgtopo as the servers' CA bundle.
func CA(t testing.TB) *certs.CA {
	t.Helper()
	caOnce.Do(func() { ca, caErr = certs.NewCA("pgtest CA") })
	if caErr != nil {
		t.Fatal(caErr)
	}
	return ca
}

// serving writes the server's certificate (for 127.0.0.1 and localhost)
// and key, once, and returns their paths.
func (s *Server) serving(t testing.TB) (crt, key string) {
	t.Helper()
	crt, key = filepath.Join(s.dir, "server.crt"), filepath.Join(s.dir, "server.key")
	certPEM, keyPEM, err := CA(t).Issue("pgtest", []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	s.writeOwned(t, crt, certPEM)
	s.writeOwned(t, key, keyPEM)
	return crt, key
}
