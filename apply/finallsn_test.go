package apply

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/pgtest"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// On real PostgreSQL: after a fast shutdown, the end of the old primary's
// shutdown checkpoint read at its standby is the old primary's end of WAL,
// as the old primary itself reports it once restarted in recovery. After
// an immediate shutdown (Patroni's demotion to a standby leader) there is
// no shutdown checkpoint, and nothing is read at the standby.
func TestFinalLSNReadAtTheTargetOnPostgreSQL(t *testing.T) {
	for _, tc := range []struct {
		name      string
		immediate bool
	}{
		{"fast shutdown", false},
		{"immediate shutdown", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			primary := pgtest.Start(t)
			standby := pgtest.Standby(t, primary)
			probe := func(s *pgtest.Server) *snapshot.PGState {
				st, err := live.PgxProber{}.Probe(ctx, s.Endpoint, live.Login{User: "postgres", Password: pgtest.Password, TLS: live.TLS{CA: pgtest.CA(t).CertPEM}})
				if err != nil {
					t.Fatal(err)
				}
				return st
			}
			state := func(name string, s *pgtest.Server) snapshot.ClusterState {
				ep := s.Endpoint
				return snapshot.ClusterState{Name: name, Site: "here", Namespace: "db", Endpoint: &ep,
					Credentials: snapshot.SecretState{Name: "credentials"}, PG: probe(s)}
			}
			x := &stepRun{r: &Runner{Database: realDB{live.Admin{Sites: func(string) (live.LoginReader, error) { return passwords{pgtest.CA(t).CertPEM}, nil }, Keys: alaudaKeys(t)}}},
				last: &snapshot.Snapshot{Clusters: []snapshot.ClusterState{state("orders-east", primary), state("orders-west", standby)}}}
			x.r.Progress = func(e Event) { t.Logf("%s: %s", e.Type, e.Message) }
			schema := x.prepareFinalAtTarget(ctx, &plan.Switchover{From: plan.Subject{Cluster: "orders-east"}, FinalLSN: topology.FinalLSNShutdownCheckpoint})
			if schema != walInspectSchema {
				t.Fatalf("pg_walinspect in schema %q", schema)
			}
			var fencedText string
			if err := primary.Admin.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&fencedText); err != nil {
				t.Fatal(err)
			}
			fenced, _ := snapshot.ParseLSN(fencedText)
			labtest.Eventually(t, 30*time.Second, "the standby replays the fence's end of WAL", func() error {
				if st := probe(standby); st.ReplayLSN < fenced {
					return fmt.Errorf("replay %s, fence %s", st.ReplayLSN, fenced)
				}
				return nil
			})
			if tc.immediate {
				primary.StopImmediate()
			} else {
				primary.Stop()
			}
			at := x.openFinalAtTarget(ctx, x.cluster("orders-west"), schema, fenced)
			if at == nil {
				t.Fatal("no session to the standby")
			}
			defer at.close()
			var got snapshot.LSN
			var detail string
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && got == 0; time.Sleep(100 * time.Millisecond) {
				var err error
				if got, detail, err = at.read(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if tc.immediate {
				if got != 0 {
					t.Fatalf("read %s (%s) after an immediate shutdown, which writes no shutdown checkpoint", got, detail)
				}
				t.Logf("nothing read at the standby: %s", detail)
				return
			}
			if got == 0 || !strings.Contains(detail, "shutdown checkpoint") {
				t.Fatalf("nothing read at the standby after a fast shutdown: %s", detail)
			}
			// The old primary, restarted in recovery with nothing to
			// follow, reports the same end of WAL.
			primary.WriteFile(t, "standby.signal", nil)
			primary.Restart(t)
			if end := probe(primary).ReplayLSN; end != got {
				t.Fatalf("read %s at the standby; the old primary's end of WAL is %s", got, end)
			}
			t.Logf("read %s at the standby, the old primary's end of WAL (%s)", got, detail)
		})
	}
}
