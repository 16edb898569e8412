package alauda

import (
	"context"
	"fmt"
)

// Catalogue is the operator's list of a primary's standby clusters, kept in
// the primary's own database (sys_operator.multi_cluster_info): the
// operator keeps a slot for each row, and a standby promoted from it
// inherits the table by replication. A Patroni cluster has no operator to
// register it, so pgtopo writes its row; a rebuilt or deleted standby's
// row goes so its slot is no longer kept.
//
// The lab operator keeps the same table (lab/operator/sql.go), standing in
// for the real one.
//
// Its methods run SQL through exec, a session on the primary as its admin
// user: the catalogue does no I/O of its own.
type Catalogue struct{}

// Exec runs one statement.
type Exec = func(ctx context.Context, sql string, args ...any) error

const catalogueSchema = `CREATE SCHEMA IF NOT EXISTS sys_operator;
CREATE TABLE IF NOT EXISTS sys_operator.multi_cluster_info (
    cluster_name  text PRIMARY KEY,
    external_ip   text NOT NULL DEFAULT '',
    external_port integer NOT NULL DEFAULT 0,
    repl_svc_type text NOT NULL DEFAULT '',
    slot_name     text NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now()
)`

// Register lists cluster as a standby reached at host:port through slot,
// creating the table where the operator has not (a Patroni primary).
func (Catalogue) Register(ctx context.Context, exec Exec, cluster, host string, port int, slot string) error {
	if err := exec(ctx, catalogueSchema); err != nil {
		return fmt.Errorf("multi_cluster_info: %w", err)
	}
	return exec(ctx, `INSERT INTO sys_operator.multi_cluster_info (cluster_name, external_ip, external_port, slot_name)
VALUES ($1, $2, $3, $4)
ON CONFLICT (cluster_name) DO UPDATE SET external_ip = EXCLUDED.external_ip, external_port = EXCLUDED.external_port, slot_name = EXCLUDED.slot_name, updated_at = now()`,
		cluster, host, port, slot)
}

// Forget removes cluster's row, so the operator stops keeping its slot.
func (Catalogue) Forget(ctx context.Context, exec Exec, cluster string) error {
	return exec(ctx, "DELETE FROM sys_operator.multi_cluster_info WHERE cluster_name = $1", cluster)
}

// FillExternalIP completes a row the operator registered without the
// standby's address; a row that has one keeps it.
func (Catalogue) FillExternalIP(ctx context.Context, exec Exec, cluster, host string) error {
	return exec(ctx, "UPDATE sys_operator.multi_cluster_info SET external_ip = $1 WHERE cluster_name = $2 AND external_ip = ''", host, cluster)
}

// PresentSQL is a query of one boolean: whether the server holds the
// catalogue.
func (Catalogue) PresentSQL() string {
	return "SELECT to_regclass('sys_operator.multi_cluster_info') IS NOT NULL"
}

// RowsSQL reads the catalogue's rows as (cluster, external ip, slot).
// slot_name is read through to_jsonb: an operator's table without the
// column still reads.
func (Catalogue) RowsSQL() string {
	return `SELECT cluster_name, coalesce(external_ip, ''), coalesce(to_jsonb(m)->>'slot_name', '')
FROM sys_operator.multi_cluster_info m ORDER BY cluster_name`
}
