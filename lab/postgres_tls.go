package lab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pgtopo/pgtopo/lab/certs"
)

// Every lab PostgreSQL serves TLS only (pg_hba has hostssl lines alone),
// with a certificate from its site's own CA, as cert-manager would issue
// in each Kubernetes cluster or a data center's PKI on its VMs. Each site
// publishes the bundle of every site's CA, as trust-manager would: a
// standby verifies its peer in another site with it, and pgtopo the
// servers it reaches.

// PostgresCAConfigMap is the ConfigMap (key ca.crt) the lab operator keeps
// in every namespace it runs a cluster in, holding the bundle.
const PostgresCAConfigMap = "pglab-postgres-ca"

// EnvPGCAFile names the bundle's file for pgtopo's Patroni sites.
const EnvPGCAFile = "PGTOPO_PATRONI_PG_CA_FILE"

// PostgresCABundle is the file of every site's PostgreSQL CA.
func (p Paths) PostgresCABundle() string { return filepath.Join(p.PKI(), "postgres-ca-bundle.crt") }

func (p Paths) postgresCA(site string) (cert, key string) {
	return filepath.Join(p.PKI(), "postgres-ca-"+site+".crt"), filepath.Join(p.PKI(), "postgres-ca-"+site+".key")
}

// ensurePostgresCAs makes each site's CA, unless it exists, and writes the
// bundle of them all.
func ensurePostgresCAs(p Paths, sites []SiteState) error {
	var bundle bytes.Buffer
	for _, s := range sites {
		certPath, keyPath := p.postgresCA(s.Name)
		cert, err := os.ReadFile(certPath)
		if errors.Is(err, os.ErrNotExist) {
			ca, err := certs.NewCA("pglab PostgreSQL CA of site " + s.Name)
			if err != nil {
				return err
			}
			if err := os.WriteFile(keyPath, ca.KeyPEM, 0o600); err != nil {
				return err
			}
			if err := os.WriteFile(certPath, ca.CertPEM, 0o644); err != nil {
				return err
			}
			cert = ca.CertPEM
		} else if err != nil {
			return err
		}
		bundle.Write(cert)
	}
	return os.WriteFile(p.PostgresCABundle(), bundle.Bytes(), 0o644)
}

// PostgresCA is a site's CA, which signs its servers' certificates.
func PostgresCA(dir, site string) (*certs.CA, error) {
	certPath, keyPath := Paths{dir}.postgresCA(site)
	cert, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL CA of site %s: %w", site, err)
	}
	key, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL CA of site %s: %w", site, err)
	}
	return certs.LoadCA(cert, key)
}

// ObserverSecret is the Secret (username, password) the lab operator keeps
// in every namespace it runs a cluster in: a login in pg_monitor, which
// pgtopo diff --observer-secret probes with.
const ObserverSecret = "pgtopo-observer"

// Login is a PostgreSQL user and password.
type Login struct{ User, Password string }

// ObserverCredentials is the lab's observer login, created once with a
// random password (one for the lab: the role replicates from the primary).
func ObserverCredentials(dir string) (Login, error) {
	path := filepath.Join(Paths{dir}.PKI(), "observer-password")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 16)
		if _, err := rand.Read(raw); err != nil {
			return Login{}, err
		}
		b = []byte(hex.EncodeToString(raw))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return Login{}, err
		}
	} else if err != nil {
		return Login{}, err
	}
	return Login{User: "pgtopo_observer", Password: string(b)}, nil
}
