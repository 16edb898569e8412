package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
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
// apiserver listens there on its own port) and the service-account signing
// key, unless they exist.
func (k pki) ensure() error {
	if _, err := os.Stat(k.serviceAccountKey()); err == nil {
		return nil
	}
	if err := os.MkdirAll(k.dir, 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pglab CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{
		{k.caCert(), "CERTIFICATE", caDER},
		{k.serverCert(), "CERTIFICATE", srvDER},
	} {
		if err := writePEM(f.path, f.typ, f.der); err != nil {
			return err
		}
	}
	caKeyDER, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		return err
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return err
	}
	if err := writePEM(k.caKey(), "EC PRIVATE KEY", caKeyDER); err != nil {
		return err
	}
	if err := writePEM(k.serverKey(), "EC PRIVATE KEY", srvKeyDER); err != nil {
		return err
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
