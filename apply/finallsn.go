package apply

import (
	"context"
	"fmt"
	"strings"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// The old primary's end of WAL, the gate, can be read in two places:
//
//   - on the old primary, once its operator has restarted it in recovery
//     (its replay position then): the restart's whole length is writes
//     refused;
//   - at the target, as soon as it replays the old primary's shutdown
//     checkpoint: a cleanly stopped primary writes that record last and,
//     before it exits, waits until its connected standbys have flushed it,
//     so the target holds it the moment the old primary is down.
//
// The second is read with pg_walinspect (contrib), created in schema
// pgtopo on the old primary before the fence so that it reaches the
// target through WAL. It counts only a CHECKPOINT_SHUTDOWN record written
// after the fence that is the very last record the target replayed, while
// the old primary takes no writes: WAL after it would mean the old primary
// ran again as a primary. Whichever place answers first sets the gate.

// walInspectSchema is where pgtopo creates pg_walinspect when it is not
// there yet.
const walInspectSchema = "pgtopo"

// prepareFinalAtTarget makes pg_walinspect available on the old primary
// and says in which schema; "" (and why, said once) when it cannot be, and
// the switchover reads the end of WAL on the restarted old primary alone.
func (x *stepRun) prepareFinalAtTarget(ctx context.Context, sw *plan.Switchover) string {
	if sw.FinalLSN != topology.FinalLSNShutdownCheckpoint {
		return ""
	}
	from := x.cluster(sw.From.Cluster)
	var schema string
	err := x.session(ctx, from, func(s Session) error {
		if err := s.QueryRow(ctx, walInspectFindSQL).Scan(&schema); err == nil {
			return nil
		}
		for _, stmt := range []string{"CREATE SCHEMA IF NOT EXISTS " + walInspectSchema, "CREATE EXTENSION IF NOT EXISTS pg_walinspect SCHEMA " + walInspectSchema} {
			if err := s.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return s.QueryRow(ctx, walInspectFindSQL).Scan(&schema)
	})
	if err != nil {
		x.say(EventNote, "final LSN: pg_walinspect is not available (%v): %s's end of WAL is read once it restarts in recovery", err, sw.From.Cluster)
		return ""
	}
	return schema
}

// walInspectFindSQL finds the schema of pg_walinspect (no row: not there).
const walInspectFindSQL = "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_walinspect'"

// finalAtTarget reads, on one session to the target, the end of the old
// primary's shutdown checkpoint once the target has replayed it.
type finalAtTarget struct {
	sess   Session
	schema string
	// fenced is the old primary's end of WAL read at the fence: its
	// shutdown checkpoint comes after.
	fenced snapshot.LSN
}

// openFinalAtTarget opens the session the wait reads through; nil when
// the end of WAL is read on the old primary alone (no schema, a resumed
// switchover that did not fence in this run, or the target unreachable).
func (x *stepRun) openFinalAtTarget(ctx context.Context, to *snapshot.ClusterState, schema string, fenced snapshot.LSN) *finalAtTarget {
	if schema == "" || fenced == 0 {
		return nil
	}
	s, err := x.r.Database.Open(ctx, to)
	if err != nil {
		x.say(EventNote, "final LSN: cannot read at %s (%v): the old primary's end of WAL is read once it restarts in recovery", to.Name, err)
		return nil
	}
	return &finalAtTarget{sess: s, schema: schema, fenced: fenced}
}

func (f *finalAtTarget) close() {
	if f != nil {
		_ = f.sess.Close(context.Background())
	}
}

// read returns the end of the old primary's shutdown checkpoint when the
// target has replayed it as its last record, 0 when not yet, and what it
// saw.
func (f *finalAtTarget) read(ctx context.Context) (snapshot.LSN, string, error) {
	var replayText string
	if err := f.sess.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn()::text").Scan(&replayText); err != nil {
		return 0, "", fmt.Errorf("replay position: %w", err)
	}
	replay, err := snapshot.ParseLSN(replayText)
	if err != nil {
		return 0, "", err
	}
	if replay <= f.fenced {
		return 0, fmt.Sprintf("target replayed up to %s, no WAL after the fence yet", replay), nil
	}
	var found int
	if err := f.sess.QueryRow(ctx, shutdownCheckpointSQL(f.schema), f.fenced.String(), replay.String()).Scan(&found); err != nil {
		return 0, "", fmt.Errorf("pg_walinspect: %w", err)
	}
	if found == 0 {
		return 0, fmt.Sprintf("target replayed up to %s, its last record not a shutdown checkpoint", replay), nil
	}
	return replay, fmt.Sprintf("the old primary's shutdown checkpoint, replayed by the target, ends at %s", replay), nil
}

// shutdownCheckpointSQL counts the shutdown checkpoints between $1 (the
// fence's end of WAL) and $2 (the target's replay position) that end at
// $2: one when the last record the target replayed is the old primary's
// shutdown checkpoint.
func shutdownCheckpointSQL(schema string) string {
	return "SELECT count(*) FROM " + quoteIdent(schema) + ".pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn) " +
		"WHERE resource_manager = 'XLOG' AND record_type = 'CHECKPOINT_SHUTDOWN' AND end_lsn = $2::pg_lsn"
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
