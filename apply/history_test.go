// Real PostgreSQL servers, left out of mutation runs (scripts/mutate.sh
// builds with the mutation tag): each mutant would start three servers, and
// the fake-world tests cover the same branches.

//go:build !mutation

package apply

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/lab/labtest"
	"github.com/pgtopo/pgtopo/lab/pgtest"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// passwords is the one site's Secrets: every test server's credentials.
type passwords struct{ ca []byte }

func (passwords) GetSecret(context.Context, string, string) (*corev1.Secret, error) {
	return &corev1.Secret{Data: map[string][]byte{"username": []byte("postgres"), "password": []byte(pgtest.Password)}}, nil
}

// PostgresCA is the tests' CA, which every test server's certificate
// chains to.
func (p passwords) PostgresCA(context.Context, string, string, *topology.CASource) ([]byte, string, error) {
	return p.ca, "the tests' CA", nil
}

// realDB opens admin sessions to real servers the way pgtopo does.
type realDB struct{ live.Admin }

func (d realDB) Open(ctx context.Context, c *snapshot.ClusterState) (Session, error) {
	s, err := d.Admin.Open(ctx, c)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// On real PostgreSQL, a lost primary promoted by itself has a timeline 2
// of its own, which its history file tells from the new primary's timeline
// 2; a standby that followed the new primary has the new primary's file.
// The lost primary is made the way its site's Patroni makes it: restarted
// as a replica with nothing to follow, then promoted.
func TestTimelineOfItsOwnOnPostgreSQL(t *testing.T) {
	ctx := context.Background()
	oldPrimary := pgtest.Start(t)
	if _, err := oldPrimary.Admin.Exec(ctx, "CREATE TABLE before_the_fork (id int)"); err != nil {
		t.Fatal(err)
	}
	newPrimary := pgtest.Standby(t, oldPrimary)
	labtest.Eventually(t, 30*time.Second, "the standby replays the table", func() error {
		var n int
		if err := newPrimary.Admin.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'before_the_fork'").Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("%d tables before_the_fork (%v)", n, err)
		}
		return nil
	})
	// The failover: the standby is promoted.
	if _, err := newPrimary.Admin.Exec(ctx, "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	// A standby that follows the new primary from birth.
	follower := pgtest.Standby(t, newPrimary)
	// The lost primary comes back and its site promotes it.
	oldPrimary.Stop()
	oldPrimary.WriteFile(t, "standby.signal", nil)
	oldPrimary.Restart(t)
	if _, err := oldPrimary.Admin.Exec(ctx, "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}

	probe := func(s *pgtest.Server) *snapshot.PGState {
		st, err := live.PgxProber{}.Probe(ctx, s.Endpoint, live.Login{User: "postgres", Password: pgtest.Password, TLS: live.TLS{CA: pgtest.CA(t).CertPEM}})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	labtest.Eventually(t, 30*time.Second, "the follower streams timeline 2", func() error {
		if st := probe(follower); st.WalReceiver == nil || st.WalReceiver.Status != "streaming" || st.Timeline != 2 {
			return fmt.Errorf("timeline %d, receiver %+v", st.Timeline, st.WalReceiver)
		}
		return nil
	})
	state := func(name string, s *pgtest.Server) snapshot.ClusterState {
		ep := s.Endpoint
		return snapshot.ClusterState{Name: name, Site: "here", Namespace: "db", Endpoint: &ep,
			Credentials: snapshot.SecretState{Name: "credentials"}, PG: probe(s)}
	}
	for _, tc := range []struct {
		name     string
		returned *pgtest.Server
		own      bool
	}{
		{"promoted in its own site", oldPrimary, true},
		{"followed the new primary", follower, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := &stepRun{r: &Runner{Database: realDB{live.Admin{Sites: func(string) (live.LoginReader, error) { return passwords{pgtest.CA(t).CertPEM}, nil }, Keys: alaudaKeys(t)}}},
				last: &snapshot.Snapshot{Clusters: []snapshot.ClusterState{state("orders-east", tc.returned), state("orders-west", newPrimary)}}}
			own, why, err := x.timelineOfItsOwn(ctx, "orders-east", "orders-west", 1)
			if err != nil {
				t.Fatal(err)
			}
			if own != tc.own {
				t.Fatalf("timeline of its own: %v (%s), want %v", own, why, tc.own)
			}
			if own && !strings.Contains(why, "orders-east is on a timeline 2 of its own") {
				t.Fatalf("words %q", why)
			}
			t.Logf("%v: %s", own, why)
		})
	}
}

// alaudaKeys are the alauda flavor's credentials keys.
func alaudaKeys(t *testing.T) flavor.Names {
	t.Helper()
	op, err := flavor.Lookup("")
	if err != nil {
		t.Fatal(err)
	}
	return op.Names
}
