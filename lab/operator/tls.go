package operator

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/certs"
)

// A member's TLS files, in its directory, the postgres user's: the serving
// certificate and key PostgreSQL runs with, and the bundle of every lab
// site's CA, which its replication and rewind connections verify a peer
// with (verify-ca: a peer is reached at an address another site hands
// out). This is the lab standing in for an operator that mounts
// cert-manager's Secret and a trust bundle into its pods.
const (
	servingCert = "server.crt"
	servingKey  = "server.key"
	caBundle    = "ca-bundle.crt"
)

// tlsFiles are the paths of a member's TLS files.
type tlsFiles struct{ cert, key, bundle string }

func memberTLS(dir string) tlsFiles {
	return tlsFiles{filepath.Join(dir, servingCert), filepath.Join(dir, servingKey), filepath.Join(dir, caBundle)}
}

// ensureServing writes a member's certificate for hosts, signed by its
// site's CA, and the bundle, unless the certificate on disk already names
// exactly those hosts. It reports whether it wrote a new certificate.
func ensureServing(labDir, site, dir, cn string, hosts []string) (bool, error) {
	f := memberTLS(dir)
	want := slices.Clone(hosts)
	slices.Sort(want)
	want = slices.Compact(want)
	bundle, err := os.ReadFile(lab.Paths{Dir: labDir}.PostgresCABundle())
	if err != nil {
		return false, err
	}
	if cur, err := os.ReadFile(f.bundle); err != nil || string(cur) != string(bundle) {
		if err := writePostgresFile(f.bundle, bundle); err != nil {
			return false, err
		}
	}
	if cur, err := os.ReadFile(f.cert); err == nil && slices.Equal(certs.Names(cur), want) {
		return false, nil
	}
	ca, err := lab.PostgresCA(labDir, site)
	if err != nil {
		return false, err
	}
	certPEM, keyPEM, err := ca.Issue(cn, want)
	if err != nil {
		return false, err
	}
	if err := writePostgresFile(f.key, keyPEM); err != nil {
		return false, err
	}
	return true, writePostgresFile(f.cert, certPEM)
}

// writePostgresFile writes a file only the postgres user reads (as
// PostgreSQL requires of a key), replacing it whole.
func writePostgresFile(path string, data []byte) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := chownPostgres(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// reloadPostgres asks a member's postmaster to read its configuration
// again, which takes a new certificate (PostgreSQL 10 and later).
func reloadPostgres(dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	first, _, _ := strings.Cut(string(b), "\n")
	if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGHUP)
	}
}
