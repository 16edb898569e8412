package live

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtopo/pgtopo/snapshot"
)

// PgxProber reads PostgreSQL facts with pgx.
type PgxProber struct {
	// ConnectTimeout bounds each connection attempt (default 5s).
	ConnectTimeout time.Duration
	// Keep, when set, keeps connections between probes; without it each
	// probe opens and closes its own.
	Keep *Conns
	// Catalogue, when set, is read where the server holds it.
	Catalogue Catalogue
}

// Catalogue is an operator's list of a primary's standbys in the primary's
// own database (the flavor knows its table): a query of one boolean, whether
// the server holds it, and one of its rows as (cluster, external ip, slot).
type Catalogue interface {
	PresentSQL() string
	RowsSQL() string
}

// Connect opens a connection as pgtopo does everywhere: to the postgres
// database, over TLS as login.TLS says, with a bounded connect time and an
// application_name that shows up in pg_stat_activity.
func Connect(ctx context.Context, ep snapshot.Endpoint, login Login, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := ConnConfig(ep, login, timeout, "pgtopo")
	if err != nil {
		return nil, err
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		if why, ok := login.TLS.explainTLS(err); ok {
			return nil, &TLSError{msg: fmt.Sprintf("connect %s: %s", ep, redact(errors.New(why), login.Password))}
		}
		// pgx errors can carry the connection string; say only where.
		msg := fmt.Sprintf("connect %s as %s: %s", ep, login.User, redact(err, login.Password))
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000") {
			return nil, &AuthError{msg: msg}
		}
		return nil, errors.New(msg)
	}
	return c, nil
}

// ConnConfig is a connection's configuration from explicit settings alone,
// to the endpoint and nowhere else. pgx fills a parsed configuration from
// libpq's environment, none of which the topology said: PGHOST adds
// fallback hosts that would be sent the password when the endpoint
// refuses, PGOPTIONS and PGAPPNAME session settings, PGTARGETSESSIONATTRS a
// check, PGSSLMODE a plaintext fallback, PGSSLROOTCERT another CA. Every
// setting the environment could give is set here or cleared; TLS is the
// topology's alone, with no fallback to plaintext.
func ConnConfig(ep snapshot.Endpoint, login Login, timeout time.Duration, application string) (*pgx.ConnConfig, error) {
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	tlsConfig, err := login.TLS.config(ep.Host)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", ep, err)
	}
	// Every key the environment (or a home directory's defaults) could
	// fill with a file to read or a check to make is given here, so the
	// parse neither reads nor fails on what the topology did not say.
	// PGSERVICE alone cannot be overridden: a set one fails the parse.
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable connect_timeout=%d "+
		"sslrootcert='' sslcert='' sslkey='' sslpassword='' sslcertmode=disable sslnegotiation=postgres passfile='' "+
		"target_session_attrs=any min_protocol_version=3.0 max_protocol_version=3.0 channel_binding=prefer require_auth=''",
		dsnValue(ep.Host), ep.Port, dsnValue(login.User), max(1, int(timeout.Seconds())))
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connect %s as %s: %w", ep, login.User, err)
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = ep.Host, uint16(ep.Port), login.User, login.Password, "postgres"
	cfg.Fallbacks, cfg.TLSConfig = nil, tlsConfig
	cfg.ValidateConnect, cfg.AfterConnect = nil, nil
	cfg.KerberosSrvName, cfg.KerberosSpn = "", ""
	cfg.ConnectTimeout = timeout
	cfg.RuntimeParams = map[string]string{"application_name": application}
	// Connections live for a handful of statements: preparing and caching
	// them would cost a round trip each and never pay off.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	return cfg, nil
}

// dsnValue quotes a keyword/value connection string value.
func dsnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// TLSError is a server that did not prove itself as the topology's TLS
// policy asks, or offered no TLS: nothing was sent to it.
type TLSError struct{ msg string }

func (e *TLSError) Error() string { return e.msg }

// AuthError is a server that refused the credentials (SQLSTATE 28P01
// invalid_password or 28000 invalid_authorization_specification).
type AuthError struct{ msg string }

func (e *AuthError) Error() string { return e.msg }

func redact(err error, secret string) string {
	if secret == "" {
		return err.Error()
	}
	return strings.ReplaceAll(err.Error(), secret, "[redacted]")
}

// On a standby the timeline is that of the newest WAL it has: what its
// receiver streams (received_tli only moves once WAL of a new timeline
// arrives, receive_start_tli as soon as streaming (re)starts on it, so the
// greater of the two is current even when nothing is being written), and,
// with no receiver (its upstream lost), the newest timeline of the WAL
// segments it holds. Its last restartpoint's timeline alone can be one or
// more switchovers old: restartpoints come every checkpoint_timeout.
//
// A recovery target changed on a primary is not pending: the server reads
// it only when it next starts in recovery, and a restart would not apply
// it (Patroni restarted beside a running primary rewrites them).
const factsSQL = `
SELECT pg_is_in_recovery(),
       (SELECT system_identifier::text FROM pg_control_system()),
       CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END,
       coalesce(pg_last_wal_receive_lsn()::text, ''),
       coalesce(pg_last_wal_replay_lsn()::text, ''),
       current_setting('server_version_num')::int,
       CASE WHEN pg_is_in_recovery()
            THEN greatest((SELECT greatest(received_tli, receive_start_tli) FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()),
                          CASE WHEN has_function_privilege('pg_ls_waldir()', 'EXECUTE')
                               THEN (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$') END)
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END,
       current_setting('default_transaction_read_only')::bool,
       (SELECT count(*) FROM pg_stat_progress_basebackup)::int,
       coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), ''),
       CASE WHEN NOT pg_is_in_recovery() AND current_setting('track_commit_timestamp')::bool
            THEN coalesce(to_char((pg_last_committed_xact()).timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), '')
            ELSE '' END,
       CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()
            THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0) ELSE 0 END,
       CASE WHEN NOT pg_is_in_recovery() AND has_function_privilege('pg_ls_waldir()', 'EXECUTE')
            THEN coalesce((SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'), '') ELSE '' END,
       (SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM pg_settings
         WHERE pending_restart AND (pg_is_in_recovery() OR name NOT LIKE 'recovery\_target%'))`

// Probe reads the facts of one server in two round trips: the facts, WAL
// receiver, slots, replication peers and whether it holds the operator's
// catalogue pipelined in one batch, then the catalogue where it does.
func (p PgxProber) Probe(ctx context.Context, ep snapshot.Endpoint, login Login) (*snapshot.PGState, error) {
	var key connKey
	if p.Keep != nil {
		key = connKey{ep: ep, user: login.User, password: sha256.Sum256([]byte(login.Password)), tls: login.TLS.digest()}
		if kept := p.Keep.take(key); kept != nil {
			s, err := probe(ctx, kept.conn, ep, p.Catalogue)
			if err == nil && !kept.conn.IsClosed() {
				p.Keep.put(key, kept)
				return s, nil
			}
			// Most likely the server restarted or ended the session: what
			// a fresh connection says is the answer.
			kept.conn.Close(context.Background())
		}
	}
	c, err := Connect(ctx, ep, login, p.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	s, err := probe(ctx, c, ep, p.Catalogue)
	if err != nil || c.IsClosed() || p.Keep == nil {
		c.Close(context.Background())
		return s, err
	}
	p.Keep.put(key, &keptConn{conn: c, opened: time.Now()})
	return s, nil
}

func probe(ctx context.Context, c *pgx.Conn, ep snapshot.Endpoint, catalogue Catalogue) (*snapshot.PGState, error) {
	var s snapshot.PGState
	var cur, recv, replay string
	b := &pgx.Batch{}
	b.Queue(factsSQL).QueryRow(func(r pgx.Row) error {
		if err := r.Scan(&s.InRecovery, &s.SystemID, &cur, &recv, &replay, &s.ServerVersion, &s.Timeline, &s.ReadOnlyDefault, &s.BaseBackups, &s.LastReplayedCommit, &s.LastCommit, &s.ReplayDelaySeconds, &s.OldestWAL, &s.PendingRestart); err != nil {
			return fmt.Errorf("read facts: %w", err)
		}
		return nil
	})
	b.Queue(`SELECT status, coalesce(sender_host, ''), coalesce(sender_port, 0), coalesce(greatest(received_tli, receive_start_tli), 0),
	                coalesce(to_char(last_msg_receipt_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), ''), coalesce(slot_name, '')
	         FROM pg_stat_wal_receiver`).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var w snapshot.WalReceiver
			if err := rows.Scan(&w.Status, &w.SenderHost, &w.SenderPort, &w.Timeline, &w.LastMessage, &w.Slot); err != nil {
				return fmt.Errorf("pg_stat_wal_receiver: %w", err)
			}
			s.WalReceiver = &w
		}
		return rows.Err()
	})
	b.Queue(`SELECT slot_name, active, coalesce(restart_lsn::text, ''), coalesce(wal_status, ''),
	                coalesce((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - restart_lsn)::bigint, 0),
	                coalesce((SELECT CASE WHEN ssl THEN version ELSE '` + snapshot.StreamPlaintext + `' END FROM pg_stat_ssl WHERE pid = active_pid), '')
	         FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name`).Query(func(rows pgx.Rows) error {
		var err error
		s.Slots, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (snapshot.Slot, error) {
			var sl snapshot.Slot
			var lsn string
			if err := r.Scan(&sl.Name, &sl.Active, &lsn, &sl.WALStatus, &sl.RetainedBytes, &sl.StreamTLS); err != nil {
				return sl, err
			}
			if lsn != "" {
				sl.RestartLSN, _ = snapshot.ParseLSN(lsn)
			}
			return sl, nil
		})
		if err != nil {
			return fmt.Errorf("pg_replication_slots: %w", err)
		}
		return nil
	})
	b.Queue(`SELECT application_name, coalesce(client_addr::text, ''), state, coalesce(replay_lsn::text, '') FROM pg_stat_replication ORDER BY application_name`).Query(func(rows pgx.Rows) error {
		var err error
		s.Replication, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (snapshot.ReplicationPeer, error) {
			var p snapshot.ReplicationPeer
			var lsn string
			if err := r.Scan(&p.ApplicationName, &p.ClientAddr, &p.State, &lsn); err != nil {
				return p, err
			}
			if lsn != "" {
				p.ReplayLSN, _ = snapshot.ParseLSN(lsn)
			}
			return p, nil
		})
		if err != nil {
			return fmt.Errorf("pg_stat_replication: %w", err)
		}
		return nil
	})
	if catalogue != nil {
		b.Queue(catalogue.PresentSQL()).QueryRow(func(r pgx.Row) error {
			if err := r.Scan(&s.HasMultiClusterTable); err != nil {
				return fmt.Errorf("operator catalogue: %w", err)
			}
			return nil
		})
	}
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("%s: %w", ep, err)
	}
	for _, f := range []struct {
		in  string
		out *snapshot.LSN
	}{{cur, &s.CurrentLSN}, {recv, &s.ReceiveLSN}, {replay, &s.ReplayLSN}} {
		if f.in == "" {
			continue
		}
		v, err := snapshot.ParseLSN(f.in)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ep, err)
		}
		*f.out = v
	}
	if s.HasMultiClusterTable {
		rows, err := c.Query(ctx, catalogue.RowsSQL())
		if err != nil {
			return nil, fmt.Errorf("%s: operator catalogue: %w", ep, err)
		}
		s.MultiCluster, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (snapshot.MultiClusterInfo, error) {
			var m snapshot.MultiClusterInfo
			return m, r.Scan(&m.Cluster, &m.ExternalIP, &m.Slot)
		})
		if err != nil {
			return nil, fmt.Errorf("%s: operator catalogue: %w", ep, err)
		}
	}
	return &s, nil
}
