package lab

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pgtopo/pgtopo/lab/certs"
)

// pki is the lab's certificate authority and the files the apiservers need.
type pki struct {
	dir string
}

func (k pki) caCert() string            { return filepath.Join(k.dir, "ca.crt") }
func (k pki) caKey() string             { return filepath.Join(k.dir, "ca.key") }
func (k pki) serverCert() string        { return filepath.Join(k.dir, "apiserver.crt") }
func (k pki) serverKey() string         { return filepath.Join(k.dir, "apiserver.key") }
func (k pki) serviceAccountKey() string { return filepath.Join(k.dir, "sa.key") }

// ensure creates the CA, one serving certificate for 127.0.0.1 (every
// apiserver listens there on its own port) and addrs (the nodes' addresses
// where the gateways listen, in a lab with namespaces) and the
// service-account signing key, unless they exist.
func (k pki) ensure(addrs []string) error {
	if _, err := os.Stat(k.serviceAccountKey()); err == nil {
		return nil
	}
	if err := os.MkdirAll(k.dir, 0o700); err != nil {
		return err
	}
	ca, err := certs.NewCA("pglab CA")
	if err != nil {
		return err
	}
	srvCert, srvKey, err := ca.Issue("kube-apiserver", append([]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "127.0.0.1"}, addrs...))
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{k.caCert(), ca.CertPEM}, {k.caKey(), ca.KeyPEM}, {k.serverCert(), srvCert}, {k.serverKey(), srvKey}} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return fmt.Errorf("pki: %w", err)
		}
	}
	return writePEM(k.serviceAccountKey(), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))
}

func writePEM(path, typ string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}
