package live

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/pgtopo/pgtopo/topology"
)

// Login is who pgtopo signs in as, and how it checks the server before it
// says so.
type Login struct {
	User, Password string
	TLS            TLS
}

// TLS is how one connection checks the server it reaches.
type TLS struct {
	// Mode is one of topology's TLS modes; empty is verify-full.
	Mode string
	// CA is the PEM bundle the server's certificate must chain to; nil
	// is the system's roots.
	CA []byte
	// From says where CA came from, for errors.
	From string
}

func (t TLS) mode() string {
	if t.Mode == "" {
		return topology.TLSVerifyFull
	}
	return t.Mode
}

// verifies reports whether the mode checks the certificate, so needs a CA.
func verifies(mode string) bool {
	return mode == "" || mode == topology.TLSVerifyFull || mode == topology.TLSVerifyCA
}

// digest tells TLS settings apart in the kept connections' keys.
func (t TLS) digest() [sha256.Size]byte {
	return sha256.Sum256(append([]byte(t.mode()+"\x00"), t.CA...))
}

// config is the client TLS configuration for a server at host, nil for
// plaintext. Mode names follow libpq's sslmode, without its fallbacks:
// nothing here ever retries in plaintext.
func (t TLS) config(host string) (*tls.Config, error) {
	mode := t.mode()
	switch mode {
	case topology.TLSDisable:
		return nil, nil
	case topology.TLSRequire:
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil
	case topology.TLSVerifyCA, topology.TLSVerifyFull:
	default:
		return nil, fmt.Errorf("TLS mode %q: want verify-full, verify-ca, require or disable", mode)
	}
	roots, err := t.roots()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
	if mode == topology.TLSVerifyCA {
		// The chain alone: Go's verification checks the name too, so it
		// is turned off and done here without one.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
			return err
		}
	}
	return cfg, nil
}

// roots is the pool of CA, or the system's.
func (t TLS) roots() (*x509.CertPool, error) {
	if t.CA == nil {
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("the system's CA roots: %w", err)
		}
		return pool, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(t.CA) {
		return nil, fmt.Errorf("CA bundle from %s holds no PEM certificate", t.From)
	}
	return pool, nil
}

// explainTLS words a connection error that TLS caused: what the server
// did not prove, under which mode and CA, and what to do.
func (t TLS) explainTLS(err error) (string, bool) {
	from := t.From
	if from == "" {
		from = "the system's roots"
	}
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return fmt.Sprintf("its TLS certificate (%s) does not chain to the CA from %s (%s): fix the CA source in spec.postgres.tls.ca, or the server's certificate",
			certSubject(unknown.Cert), from, t.mode()), true
	case errors.As(err, &host):
		return fmt.Sprintf("its TLS certificate does not name the host pgtopo reached (%s; it names %s) under %s: reach it by a name its certificate holds (the cluster's endpoint), or add the name to the certificate",
			host.Host, certNames(host.Certificate), t.mode()), true
	case errors.As(err, &invalid):
		return fmt.Sprintf("its TLS certificate is not valid under %s (%v), checked against the CA from %s", t.mode(), invalid, from), true
	case strings.Contains(err.Error(), "server refused TLS connection"):
		return fmt.Sprintf("the server does not offer TLS, and spec.postgres.tls.mode is %s: turn on ssl in its configuration (pgtopo never falls back to plaintext)", t.mode()), true
	case strings.Contains(err.Error(), "tls:"):
		return fmt.Sprintf("TLS handshake failed under %s: %v", t.mode(), err), true
	}
	return "", false
}

func certSubject(c *x509.Certificate) string {
	if c == nil {
		return "no certificate"
	}
	return fmt.Sprintf("subject %q, issued by %q", c.Subject.CommonName, c.Issuer.CommonName)
}

func certNames(c *x509.Certificate) string {
	if c == nil {
		return "nothing"
	}
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no name"
	}
	return strings.Join(names, ", ")
}

// CABundles answers where a site's servers' CA bundle is: a Kubernetes
// site reads the object the topology names in the cluster's namespace, a
// Patroni site has it with the cluster's credentials. It returns nil (the
// system's roots) only when src is nil and the site was given none.
type CABundles interface {
	PostgresCA(ctx context.Context, cluster, ns string, src *topology.CASource) (pem []byte, from string, err error)
}

// ReadTLS is how connections to one cluster check its server: the
// topology's mode, and the CA bundle its site holds when the mode
// verifies.
func ReadTLS(ctx context.Context, site CABundles, policy topology.PostgresTLS, cluster, ns string) (TLS, error) {
	t := TLS{Mode: policy.Mode}
	if !verifies(t.Mode) {
		return t, nil
	}
	pem, from, err := site.PostgresCA(ctx, cluster, ns, policy.CA)
	if err != nil {
		return t, err
	}
	t.CA, t.From = pem, from
	return t, nil
}
