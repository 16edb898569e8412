package operator

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// The group catalogue the real operator keeps on the primary.
const multiClusterSchema = `
CREATE SCHEMA IF NOT EXISTS sys_operator;
CREATE TABLE IF NOT EXISTS sys_operator.multi_cluster_info (
    cluster_name  text PRIMARY KEY,
    external_ip   text NOT NULL DEFAULT '',
    external_port integer NOT NULL DEFAULT 0,
    repl_svc_type text NOT NULL DEFAULT '',
    slot_name     text NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now()
)`

// registration is one row of multi_cluster_info.
type registration struct {
	Cluster, ExternalIP string
	ExternalPort        int
	ServiceType         string
	Slot                string
}

// connect opens a session over TLS, verifying the server's chain against
// the lab's CA bundle (a peer in another site is reached at an address its
// certificate need not name, as the members' replication does), with
// explicit settings only, as pgtopo's own connections are made.
func connect(ctx context.Context, labDir, host string, port int, user, password string) (*pgx.Conn, error) {
	bundle, err := os.ReadFile(lab.Paths{Dir: labDir}.PostgresCABundle())
	if err != nil {
		return nil, err
	}
	login := live.Login{User: user, Password: password, TLS: live.TLS{Mode: topology.TLSVerifyCA, CA: bundle, From: "the lab's CA bundle"}}
	cfg, err := live.ConnConfig(snapshot.Endpoint{Host: host, Port: port}, login, 3*time.Second, "pglab-operator")
	if err != nil {
		return nil, err
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
	}
	return c, nil
}

// upsertRegistration records a cluster in the catalogue. An empty external
// IP never overwrites a filled one: the real operator leaves it empty for
// LoadBalancer standbys, and a DBA (or pgtopo) fills it by hand.
func upsertRegistration(ctx context.Context, c *pgx.Conn, r registration) error {
	if _, err := c.Exec(ctx, multiClusterSchema); err != nil {
		return fmt.Errorf("multi_cluster_info: %w", err)
	}
	_, err := c.Exec(ctx, `
INSERT INTO sys_operator.multi_cluster_info AS m (cluster_name, external_ip, external_port, repl_svc_type, slot_name)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (cluster_name) DO UPDATE SET
    external_ip   = CASE WHEN EXCLUDED.external_ip = '' THEN m.external_ip ELSE EXCLUDED.external_ip END,
    external_port = EXCLUDED.external_port,
    repl_svc_type = EXCLUDED.repl_svc_type,
    slot_name     = EXCLUDED.slot_name,
    updated_at    = now()
WHERE (m.external_ip, m.external_port, m.repl_svc_type, m.slot_name) IS DISTINCT FROM
      (CASE WHEN EXCLUDED.external_ip = '' THEN m.external_ip ELSE EXCLUDED.external_ip END,
       EXCLUDED.external_port, EXCLUDED.repl_svc_type, EXCLUDED.slot_name)`,
		r.Cluster, r.ExternalIP, r.ExternalPort, r.ServiceType, r.Slot)
	if err != nil {
		return fmt.Errorf("multi_cluster_info: register %s: %w", r.Cluster, err)
	}
	return nil
}

func listRegistrations(ctx context.Context, c *pgx.Conn) ([]registration, error) {
	rows, err := c.Query(ctx, `SELECT cluster_name, external_ip, external_port, repl_svc_type, slot_name
FROM sys_operator.multi_cluster_info ORDER BY cluster_name`)
	if err != nil {
		return nil, fmt.Errorf("multi_cluster_info: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (registration, error) {
		var x registration
		err := r.Scan(&x.Cluster, &x.ExternalIP, &x.ExternalPort, &x.ServiceType, &x.Slot)
		return x, err
	})
}
