package cli

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/topology"
)

// Where a Patroni cluster's credentials come from: never the topology
// file. Each is looked up for the cluster first
// (PGTOPO_PATRONI_<CLUSTER>_PG_PASSWORD, the name upper-cased with '-' as
// '_'), then for every Patroni cluster (PGTOPO_PATRONI_PG_PASSWORD); a
// KEY_FILE names a file holding the value. The file named by
// --patroni-credentials (KEY=VALUE lines) is read before the environment.
const (
	envPatroniPrefix = "PGTOPO_PATRONI_"
	envPGUser        = "PG_USER"
	envPGPassword    = "PG_PASSWORD"
	envRESTUser      = "REST_USER"
	envRESTPassword  = "REST_PASSWORD"
	envPGCA          = "PG_CA" // the PEM bundle of the PostgreSQL servers' CA; PG_CA_FILE its path
	envPatroniCA     = "PGTOPO_PATRONI_CA"
)

// patroniFlags are the flags and environment of Patroni sites.
type patroniFlags struct {
	credentialsFile string
	caFile          string
	getenv          func(string) string

	once    sync.Once
	client  *http.Client
	file    map[string]string
	openErr error
}

func (p *patroniFlags) register(cmd *cobra.Command, e env) {
	p.getenv = e.getenv
	cmd.Flags().StringVar(&p.credentialsFile, "patroni-credentials", "", "file of KEY=VALUE lines with Patroni sites' credentials (PGTOPO_PATRONI_PG_USER, _PG_PASSWORD, _REST_USER, _REST_PASSWORD, or per cluster PGTOPO_PATRONI_<CLUSTER>_PG_PASSWORD); default: the environment")
	cmd.Flags().StringVar(&p.caFile, "patroni-ca", "", "CA bundle for Patroni REST APIs served over TLS (default: $PGTOPO_PATRONI_CA)")
}

// open reads the credentials file and builds the REST client, once.
func (p *patroniFlags) open() error {
	p.once.Do(func() {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		ca := p.caFile
		if ca == "" && p.getenv != nil {
			ca = p.getenv(envPatroniCA)
		}
		if ca != "" {
			pem, err := os.ReadFile(ca)
			if err != nil {
				p.openErr = fmt.Errorf("patroni CA: %w", err)
				return
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				p.openErr = fmt.Errorf("patroni CA %s: no PEM certificate in it", ca)
				return
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		p.client = &http.Client{Transport: tr, Timeout: 3 * time.Second}
		if p.credentialsFile != "" {
			p.file, p.openErr = readKeyValues(p.credentialsFile)
		}
	})
	return p.openErr
}

// readKeyValues reads KEY=VALUE lines; blank lines and # comments are
// skipped. Values are never echoed in errors.
func readKeyValues(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("patroni credentials: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("patroni credentials %s:%d: want KEY=VALUE", path, n)
		}
		out[strings.TrimSpace(strings.TrimPrefix(k, "export "))] = v
	}
	return out, sc.Err()
}

// lookup finds one credential of a cluster, whether it was given, and
// under which key.
func (p *patroniFlags) lookup(cluster, what string) (string, string, bool, error) {
	perCluster := envPatroniPrefix + strings.ToUpper(strings.ReplaceAll(cluster, "-", "_")) + "_" + what
	for _, key := range []string{perCluster, envPatroniPrefix + what} {
		if v, ok := p.file[key]; ok {
			return v, key, true, nil
		}
		path, pathKey := p.file[key+"_FILE"], key+"_FILE"
		if p.getenv != nil {
			if v := p.getenv(key); v != "" {
				return v, key, true, nil
			}
			if path == "" {
				path = p.getenv(key + "_FILE")
			}
		}
		if path != "" {
			b, err := os.ReadFile(path)
			if err != nil {
				return "", pathKey, false, fmt.Errorf("%s: %w", pathKey, err)
			}
			return strings.TrimRight(string(b), "\r\n"), pathKey + " (" + path + ")", true, nil
		}
	}
	return "", "", false, nil
}

// credentials gathers a cluster's credentials, or says what is missing.
func (p *patroniFlags) credentials(cluster string) (flavor.PatroniCredentials, error) {
	var c flavor.PatroniCredentials
	var err error
	get := func(what, fallback string) string {
		v, _, ok, e := p.lookup(cluster, what)
		if e != nil && err == nil {
			err = e
		}
		if !ok {
			return fallback
		}
		return v
	}
	c.PGUser = get(envPGUser, "postgres")
	c.PGPassword = get(envPGPassword, "")
	c.RESTUser = get(envRESTUser, "")
	c.RESTPassword = get(envRESTPassword, "")
	if err != nil {
		return c, err
	}
	ca, from, ok, err := p.lookup(cluster, envPGCA)
	if err != nil {
		return c, err
	}
	if ok {
		c.PGCA, c.PGCAFrom = []byte(ca), from
	}
	if c.PGPassword == "" {
		key := strings.ToUpper(strings.ReplaceAll(cluster, "-", "_"))
		return c, fmt.Errorf("no PostgreSQL password for %s: set %s%s (or %s%s_%s), or name a file of them with --patroni-credentials",
			cluster, envPatroniPrefix, envPGPassword, envPatroniPrefix, key, envPGPassword)
	}
	return c, nil
}

// siteAPI is a site both observed and changed.
type siteAPI interface {
	live.SiteAPI
	apply.SiteWriter
}

// patroniSite opens a patroni site of d.
func (f *sourceFlags) patroniSite(d *topology.Desired, site topology.Site, names flavor.Names) (siteAPI, error) {
	if err := f.patroni.open(); err != nil {
		return nil, err
	}
	return flavor.PatroniSite(d, site, f.patroni.client, f.patroni.credentials, names)
}
