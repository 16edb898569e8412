package operator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/proc"
)

// baseParameters are what every lab cluster runs with; the CR's parameters
// are laid over them.
var baseParameters = map[string]string{
	"wal_level":             "replica",
	"hot_standby":           "on",
	"wal_log_hints":         "on",
	"max_wal_senders":       "10",
	"max_replication_slots": "10",
	"wal_keep_size":         "128MB",
	"shared_buffers":        "32MB",
	"max_connections":       "50",
	"fsync":                 "on",
	"synchronous_commit":    "on",
	// A primary demoted to a standby leader is stopped at once by Patroni
	// (immediate-nolock) and restarts through crash recovery, which fsyncs
	// every file of its data directory first with the default (fsync):
	// about 0.1 s of the switchover's write window here. syncfs is one
	// call per file system (PostgreSQL 14+, Linux).
	"recovery_init_sync_method": "syncfs",
}

// memberConfig is everything that goes into one member's patroni.yml.
type memberConfig struct {
	Scope, Namespace, Name string
	IP                     string
	Etcd                   string
	DataDir, PgPass        string
	SocketDir              string
	Password               string
	Parameters             map[string]string
	Standby                map[string]any // bootstrap standby_cluster; nil for a primary
	// User is the superuser (and replication user); "postgres" when empty.
	User string
	// RESTUser and RESTPassword, when set, guard the REST API's unsafe
	// endpoints (PATCH /config and the like) with basic auth.
	RESTUser, RESTPassword string
	// TLS are the member's certificate, key and peers' CA bundle.
	TLS tlsFiles
	// Routed is the lab's routed block (a lab with network namespaces),
	// whose addresses connect too; "" for loopback alone.
	Routed string
}

// hba is the member's pg_hba: TLS and a password over TCP from the lab's
// addresses, nothing in plain text.
func (m memberConfig) hba() []string {
	nets := []string{"127.0.0.0/8"}
	if m.Routed != "" {
		nets = append(nets, m.Routed)
	}
	out := []string{"local all all trust"}
	for _, n := range nets {
		out = append(out, "hostssl all all "+n+" scram-sha-256", "hostssl replication all "+n+" scram-sha-256")
	}
	return out
}

// render writes the Patroni configuration. Passwords sit in this file, as
// with any Patroni deployment; it is written 0600 for the postgres user.
func (m memberConfig) render() ([]byte, error) {
	params := map[string]string{}
	for k, v := range baseParameters {
		params[k] = v
	}
	for k, v := range m.Parameters {
		params[k] = v
	}
	dcs := map[string]any{
		"ttl": 10, "loop_wait": 2, "retry_timeout": 4,
		"maximum_lag_on_failover": 1 << 20,
		"postgresql": map[string]any{
			"use_pg_rewind": true,
			"use_slots":     true,
			"parameters":    params,
		},
	}
	if m.Standby != nil {
		dcs["standby_cluster"] = m.Standby
	}
	user := m.User
	if user == "" {
		user = "postgres"
	}
	// Every connection between members and sites verifies the peer's
	// certificate chain; a name check would need each peer's address in
	// its certificate, which the address another site hands out is not.
	auth := map[string]any{"username": user, "password": m.Password, "sslmode": "verify-ca", "sslrootcert": m.TLS.bundle}
	restapi := map[string]any{"listen": m.IP + ":8008", "connect_address": m.IP + ":8008"}
	if m.RESTUser != "" {
		restapi["authentication"] = map[string]any{"username": m.RESTUser, "password": m.RESTPassword}
	}
	cfg := map[string]any{
		"scope":     m.Scope,
		"namespace": m.Namespace,
		"name":      m.Name,
		"log":       map[string]any{"level": "INFO"},
		"restapi":   restapi,
		"etcd3":     map[string]any{"host": m.Etcd},
		"bootstrap": map[string]any{
			"dcs":    dcs,
			"initdb": []any{map[string]any{"encoding": "UTF8"}, "data-checksums"},
		},
		"postgresql": map[string]any{
			"listen":          m.IP + ":5432",
			"connect_address": m.IP + ":5432",
			"data_dir":        m.DataDir,
			"bin_dir":         "/usr/lib/postgresql/15/bin",
			"pgpass":          m.PgPass,
			"authentication":  map[string]any{"superuser": auth, "replication": auth, "rewind": auth},
			"parameters": map[string]any{"unix_socket_directories": m.SocketDir,
				"ssl": "on", "ssl_cert_file": m.TLS.cert, "ssl_key_file": m.TLS.key, "ssl_min_protocol_version": "TLSv1.2"},
			// TLS or nothing over TCP: no line takes a plaintext session.
			"pg_hba":                 m.hba(),
			"create_replica_methods": []string{"basebackup"},
			"basebackup":             []any{map[string]any{"checkpoint": "fast"}},
		},
	}
	return yaml.Marshal(cfg)
}

// memberDirs makes a member's directory and socket directory, private to
// the postgres user; their parents must be searchable by it.
func memberDirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
			return err
		}
		if err := os.Mkdir(d, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		if err := chownPostgres(d); err != nil {
			return err
		}
	}
	return nil
}

// startPatroni writes a member's patroni.yml (0600, the postgres user's:
// it holds passwords, as with any Patroni) and starts Patroni on it, under
// `pglab reap` in binDir: the init a pod or VM gives it (see proc.Reap);
// a pod's postmaster ends with its Patroni, a VM's does not.
func startPatroni(mc memberConfig, dir, binDir string, pod bool) error {
	cfgPath, err := writePatroniConfig(mc, dir)
	if err != nil {
		return err
	}
	_, err = proc.StartReaped(proc.Spec{Name: mc.Name, Path: lab.PatroniBinary, Args: []string{cfgPath}, Dir: dir,
		LogFile: filepath.Join(dir, "patroni.log"), PidFile: filepath.Join(dir, "patroni.pid"), User: lab.PostgresUser},
		filepath.Join(binDir, "pglab"), pod)
	return err
}

// writePatroniConfig writes a member's patroni.yml (0600, the postgres
// user's) and returns its path.
func writePatroniConfig(mc memberConfig, dir string) (string, error) {
	cfg, err := mc.render()
	if err != nil {
		return "", err
	}
	cfgPath := filepath.Join(dir, "patroni.yml")
	if err := writePostgresFile(cfgPath, cfg); err != nil {
		return "", err
	}
	return cfgPath, nil
}

// standbyConfig is Patroni's standby_cluster section for a peer.
func standbyConfig(host string, port int, slot string) map[string]any {
	sc := map[string]any{
		"host":                   host,
		"port":                   port,
		"create_replica_methods": []string{"basebackup"},
	}
	if slot != "" {
		sc["primary_slot_name"] = slot
	}
	return sc
}

// memberStatus is the part of Patroni's GET /patroni answer the lab uses.
type memberStatus struct {
	State    string `json:"state"`
	Role     string `json:"role"`
	Timeline int    `json:"timeline"`
	Xlog     struct {
		Location         int64 `json:"location"`
		ReceivedLocation int64 `json:"received_location"`
		ReplayedLocation int64 `json:"replayed_location"`
	} `json:"xlog"`
	ReplicationState string `json:"replication_state"`
	SystemID         string `json:"database_system_identifier"`
	PendingRestart   bool   `json:"pending_restart"`
}

// IsLeader reports whether the member holds its cluster's leader lock.
// Patroni 3.0 calls a primary "master".
func (s memberStatus) IsLeader() bool {
	return s.Role == "master" || s.Role == "primary" || s.Role == "standby_leader"
}

// patroniClient talks to members' REST APIs.
type patroniClient struct{ http *http.Client }

func newPatroniClient() patroniClient {
	return patroniClient{http: &http.Client{Timeout: 2 * time.Second}}
}

func (c patroniClient) status(ctx context.Context, ip string) (memberStatus, error) {
	var s memberStatus
	err := c.do(ctx, http.MethodGet, ip, "/patroni", nil, &s)
	return s, err
}

func (c patroniClient) config(ctx context.Context, ip string) (map[string]any, error) {
	var cfg map[string]any
	err := c.do(ctx, http.MethodGet, ip, "/config", nil, &cfg)
	return cfg, err
}

func (c patroniClient) restart(ctx context.Context, ip string) error {
	return c.do(ctx, http.MethodPost, ip, "/restart", map[string]any{"restart_pending": true}, nil)
}

func (c patroniClient) patchConfig(ctx context.Context, ip string, patch map[string]any) error {
	return c.do(ctx, http.MethodPatch, ip, "/config", patch, nil)
}

func (c patroniClient) do(ctx context.Context, method, ip, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ip+":8008"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	// GET /patroni answers 503 on a member that is not running yet, with
	// the same body; the body is what matters.
	if resp.StatusCode >= 300 && !(method == http.MethodGet && len(b) > 0 && b[0] == '{') {
		return fmt.Errorf("patroni %s %s %s: HTTP %d: %s", ip, method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}
