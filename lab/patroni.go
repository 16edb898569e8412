package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgtopo/pgtopo/lab/proc"
)

// A Patroni site stands for a data center of VMs: no kube-apiserver, one
// Patroni cluster of PatroniMembers members on the site's pod addresses
// (REST API on :8008, PostgreSQL on :5432), and a TCP endpoint on the
// site's node address in front of the leader, as HAProxy (checking
// GET /primary) or vip-manager would be. A supervisor process (pglab vm)
// starts the members and restarts them when they die, as systemd would,
// and serves that endpoint. These are the real Patroni and PostgreSQL.
const PatroniMembers = 2

// PatroniCluster describes the one Patroni cluster of a lab's Patroni site.
type PatroniCluster struct {
	// Name is the cluster's name in a topology and its Patroni scope.
	Name string
	// Members are the members' addresses (REST API on :8008, PostgreSQL
	// on :5432).
	Members []string
	// Endpoint is host:port of the endpoint in front of the leader.
	Endpoint string
}

// PatroniClusterName names the Patroni cluster of a lab's Patroni site.
func PatroniClusterName(site string) string { return "orders-" + site }

// PatroniCluster returns the Patroni cluster of a Patroni site.
func (s State) PatroniCluster(site SiteState) (PatroniCluster, error) {
	if !site.Patroni {
		return PatroniCluster{}, fmt.Errorf("site %s is a Kubernetes site", site.Name)
	}
	a := s.Addrs(site)
	c := PatroniCluster{Name: PatroniClusterName(site.Name), Endpoint: a.NodeIP().String() + ":5432"}
	for i := range PatroniMembers {
		ip, err := a.PodIP(i)
		if err != nil {
			return c, err
		}
		c.Members = append(c.Members, ip.String())
	}
	return c, nil
}

// PatroniDCSNamespace is the Patroni namespace of a lab's Patroni site in
// the lab's etcd: a prefix of its own, as another data center's DCS.
func (s State) PatroniDCSNamespace(site string) string {
	return fmt.Sprintf("/pglab-%d/vm-%s/", s.Slot, site)
}

// The environment pgtopo reads a Patroni site's credentials from
// (cli/patroni.go); pglab writes them to DIR/patroni.env.
const (
	EnvPGUser       = "PGTOPO_PATRONI_PG_USER"
	EnvPGPassword   = "PGTOPO_PATRONI_PG_PASSWORD"
	EnvRESTUser     = "PGTOPO_PATRONI_REST_USER"
	EnvRESTPassword = "PGTOPO_PATRONI_REST_PASSWORD"
)

// PatroniEnvFile holds the credentials of the lab's Patroni sites as
// KEY=VALUE lines (mode 0600), for pgtopo --patroni-credentials.
func (p Paths) PatroniEnvFile() string { return filepath.Join(p.Dir, "patroni.env") }

// PatroniCredentials returns the Patroni sites' credentials, creating them
// once with random passwords.
func PatroniCredentials(dir string) (map[string]string, error) {
	path := Paths{dir}.PatroniEnvFile()
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		out := map[string]string{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				out[k] = v
			}
		}
		return out, sc.Err()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	creds := map[string]string{EnvPGUser: "postgres", EnvRESTUser: "patroni"}
	for _, k := range []string{EnvPGPassword, EnvRESTPassword} {
		raw := make([]byte, 16)
		if _, err := rand.Read(raw); err != nil {
			return nil, err
		}
		creds[k] = hex.EncodeToString(raw)
	}
	creds[EnvPGCAFile] = Paths{dir}.PostgresCABundle()
	var b strings.Builder
	for _, k := range []string{EnvPGUser, EnvPGPassword, EnvRESTUser, EnvRESTPassword, EnvPGCAFile} {
		fmt.Fprintf(&b, "%s=%s\n", k, creds[k])
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return creds, os.WriteFile(path, []byte(b.String()), 0o600)
}

// startPatroniSite starts the site's supervisor and waits until its
// cluster has a leader and the endpoint in front of it answers.
func startPatroniSite(ctx context.Context, st *State, site SiteState, progress io.Writer) error {
	p := Paths{st.Dir}
	c, err := st.PatroniCluster(site)
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "lab: site %s (Patroni, no Kubernetes): cluster %s, members %s, endpoint %s\n",
		site.Name, c.Name, strings.Join(c.Members, ", "), c.Endpoint)
	name := "vm-" + site.Name
	if err := startSupervisor(st, site); err != nil {
		return err
	}
	if err := WaitPatroniLeader(ctx, c, site.StandbyOf != "", 120*time.Second); err != nil {
		return fmt.Errorf("site %s: %w (logs: %s, %s)", site.Name, err, p.Log(name), p.PatroniMemberDir(site.Name, c.Name, 0))
	}
	return nil
}

// startSupervisor starts a Patroni site's supervisor (pglab vm).
func startSupervisor(st *State, site SiteState) error {
	p, name := Paths{st.Dir}, "vm-"+site.Name
	_, err := proc.Start(proc.Spec{Name: name, Path: filepath.Join(st.BinDir, "pglab"),
		Args:    []string{"vm", "--dir", st.Dir, "--site", site.Name},
		LogFile: p.Log(name), PidFile: p.Pid(name)})
	return err
}

// PatroniMemberDir is where a Patroni site's member keeps its data,
// configuration and log (MemberPidFiles finds its pid file there).
func (p Paths) PatroniMemberDir(site, cluster string, i int) string {
	return filepath.Join(p.Site(site), "clusters", "vm", cluster, fmt.Sprint(i))
}

// WaitPatroniLeader waits until a member of c answers GET /primary (GET
// /standby-leader for a standby cluster) with 200, as HAProxy checks, and
// the endpoint in front of it accepts connections.
func WaitPatroniLeader(ctx context.Context, c PatroniCluster, standby bool, timeout time.Duration) error {
	check := "/primary"
	if standby {
		check = "/standby-leader"
	}
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, m := range c.Members {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m+":8008"+check, nil)
			resp, err := client.Do(req)
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				continue
			}
			if postgresAnswers(c.Endpoint) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	return fmt.Errorf("patroni cluster %s: no leader answering %s behind %s after %s", c.Name, check, c.Endpoint, timeout)
}

// postgresAnswers reports whether PostgreSQL answers at addr: an
// SSLRequest gets its one-byte reply. A TCP connect alone is not enough:
// the endpoint accepts and closes while it has no leader to route to.
func postgresAnswers(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	// Length 8, then the SSLRequest code 1234/5679.
	if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		return false
	}
	reply := make([]byte, 1)
	if _, err := io.ReadFull(conn, reply); err != nil {
		return false
	}
	return reply[0] == 'N' || reply[0] == 'S'
}

// DeleteEtcdPrefix removes every key under prefix from the lab's etcd, as
// an operator deletes Patroni's DCS objects with a cluster, or patronictl
// remove does: otherwise a new cluster of the same name would inherit the
// old one's initialize key and configuration.
func DeleteEtcdPrefix(ctx context.Context, etcd, prefix string) error {
	end := []byte(prefix)
	end[len(end)-1]++
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var out struct{}
	return EtcdCall(ctx, etcd, "/v3/kv/deleterange", map[string][]byte{"key": []byte(prefix), "range_end": end}, &out)
}

// EtcdCall posts one request to the lab etcd's v3 JSON gateway ([]byte
// fields go base64, as the gateway wants) and decodes its answer into out.
func EtcdCall(ctx context.Context, etcd, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+etcd+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: HTTP %d", path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// PatroniBootstrapFile holds the bootstrap standby_cluster section a
// Patroni site's members start with when they have no data: what a DBA
// puts into patroni.yml from pgtopo render patroni-bootstrap.
func (p Paths) PatroniBootstrapFile(site string) string {
	return filepath.Join(p.Site(site), "bootstrap-standby.json")
}

// RebuildPatroniSite is the rebuild by hand that pgtopo states for a
// Patroni cluster it holds fenced: every member stopped, their data moved
// away, the cluster removed from the DCS (patronictl remove), and the
// members started again with the given bootstrap standby_cluster (from
// pgtopo render patroni-bootstrap), so they come up as a standby cluster
// by base backup.
func RebuildPatroniSite(ctx context.Context, dir, site string, standbyCluster map[string]any) error {
	st, s, err := loadSite(dir, site)
	if err != nil {
		return err
	}
	c, err := st.PatroniCluster(s)
	if err != nil {
		return err
	}
	if ReadFault(st.Dir, s.Name).Kind != FaultFailed {
		if err := Fail(dir, site); err != nil { // every process of the site stopped
			return err
		}
	}
	p := Paths{st.Dir}
	for i := range c.Members {
		d := p.PatroniMemberDir(s.Name, c.Name, i)
		if err := os.Rename(d, fmt.Sprintf("%s.old-%d", d, time.Now().Unix())); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := DeleteEtcdPrefix(ctx, st.EtcdEndpoint(), st.PatroniDCSNamespace(s.Name)+c.Name+"/"); err != nil {
		return err
	}
	b, err := json.Marshal(standbyCluster)
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.PatroniBootstrapFile(s.Name), b, 0o644); err != nil {
		return err
	}
	return Heal(ctx, dir, site)
}
