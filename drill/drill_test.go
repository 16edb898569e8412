package drill

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// These are narrow tests of the drill's logic over a fake world; the drill
// against the lab is e2e.TestDrillSwitchover.

type fakeWorld struct {
	mu       sync.Mutex
	primary  string
	rows     map[int64]bool
	applyErr error
	// failMove fails the nth move (1-based) with applyErr.
	failMove int
	dropErr  error
	// neverSettlesAfter: after that move (1-based), the standby never
	// streams again.
	neverSettlesAfter int
	// rv is every object's resource version; instances its spec's, which
	// onPromote-like hooks change.
	rv        string
	instances int
	lose      int64 // a beat id the primary forgets (a loss to count)
	applied   []string
	notReady  bool
	// replicaDown: the primary's in-site replicas run but do not stream.
	replicaDown bool
	// catchUp: after each move, the new standby is that many looks from
	// streaming (catching up with the promotion); observed counts down.
	catchUp, behind int
	// rebuild: after each move, the new primary's operator reports it
	// Creating (building its in-site replicas) for that many looks.
	rebuild, building int
	// appliedWhileBehind counts moves applied while a standby was behind.
	appliedWhileBehind int
	// replication and slots are what the primary's pg_stat_replication
	// and pg_replication_slots show, as the drill's queries return them.
	replication, slots string
}

func (w *fakeWorld) Observe(_ context.Context, d *topology.Desired) *snapshot.Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	snap := &snapshot.Snapshot{Topology: d.Name, Sites: []snapshot.SiteState{{Name: "east", Reachable: true}, {Name: "west", Reachable: true}}}
	for _, c := range []struct{ name, site string }{{"orders-east", "east"}, {"orders-west", "west"}} {
		cs := snapshot.ClusterState{Name: c.name, Site: c.site, Namespace: "db", Exists: true, Endpoint: &snapshot.Endpoint{Host: c.site, Port: 5432},
			PG: &snapshot.PGState{SystemID: "7"}, Service: &snapshot.Service{Type: "NodePort", ClusterIP: "10.0.0.1"}}
		if c.name != w.primary {
			cs.PG.InRecovery = true
			cs.PG.WalReceiver = &snapshot.WalReceiver{Status: "streaming"}
			if w.notReady || w.behind > 0 {
				cs.PG.WalReceiver.Status = "stopped"
			}
		}
		cs.Object = &snapshot.Object{Status: "Running", Ready: true, ResourceVersion: w.rv, Spec: snapshot.Spec{Instances: w.instances}}
		if c.name == w.primary && w.building > 0 {
			cs.Object.Status, cs.Object.Ready = "Creating", false
		}
		snap.Clusters = append(snap.Clusters, cs)
	}
	for i := range snap.Clusters {
		if p := &snap.Clusters[i]; p.Name == w.primary {
			p.PG.Replication = w.senders(snap)
		}
	}
	if w.behind > 0 {
		w.behind--
	}
	if w.building > 0 {
		w.building--
	}
	return snap
}

// senders is the primary's pg_stat_replication: what w.replication says,
// or else the standby while it streams (in snap); and instances-1
// in-site replicas, connected only when not w.replicaDown.
func (w *fakeWorld) senders(snap *snapshot.Snapshot) []snapshot.ReplicationPeer {
	var out []snapshot.ReplicationPeer
	for line := range strings.Lines(w.replication) {
		name, state, _ := strings.Cut(strings.TrimSpace(line), "\t")
		state, _, _ = strings.Cut(state, " ")
		out = append(out, snapshot.ReplicationPeer{ApplicationName: name, State: state})
	}
	if w.replication == "" && snap != nil {
		for _, c := range snap.Clusters {
			if c.Name != w.primary && c.PG.WalReceiver != nil && c.PG.WalReceiver.Status == "streaming" {
				out = append(out, snapshot.ReplicationPeer{ApplicationName: c.Name, State: "streaming"})
			}
		}
	}
	for i := 1; i < w.instances && !w.replicaDown; i++ {
		out = append(out, snapshot.ReplicationPeer{ApplicationName: fmt.Sprintf("%s-%d", w.primary, i), State: "streaming"})
	}
	return out
}

func (w *fakeWorld) Apply(_ context.Context, d *topology.Desired) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.applied = append(w.applied, d.Primary().Name)
	if w.applyErr != nil && (w.failMove == 0 || w.failMove == len(w.applied)) {
		return w.applyErr
	}
	if w.behind > 0 || w.building > 0 {
		w.appliedWhileBehind++
	}
	time.Sleep(30 * time.Millisecond) // writes refused meanwhile
	w.primary = d.Primary().Name
	w.behind, w.building = w.catchUp, w.rebuild
	if w.neverSettlesAfter == len(w.applied) {
		w.behind = 1 << 30
	}
	return nil
}

func (w *fakeWorld) Open(_ context.Context, c *snapshot.ClusterState) (Session, error) {
	return &fakeSession{w: w, cluster: c.Name}, nil
}

type fakeSession struct {
	w       *fakeWorld
	cluster string
}

func (s *fakeSession) Exec(_ context.Context, sql string, args ...any) error {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if s.cluster != s.w.primary {
		return errors.New("read-only")
	}
	if strings.HasPrefix(sql, "INSERT") {
		if id := args[0].(int64); id != s.w.lose {
			s.w.rows[id] = true
		}
	}
	if sql == dropSQL && len(s.w.rows) > 0 { // the drill's last drop, not its first
		return s.w.dropErr
	}
	return nil
}

type row struct{ f func(dest ...any) error }

func (r row) Scan(dest ...any) error { return r.f(dest...) }

func (s *fakeSession) QueryRow(_ context.Context, sql string, args ...any) interface{ Scan(dest ...any) error } {
	return row{func(dest ...any) error {
		s.w.mu.Lock()
		defer s.w.mu.Unlock()
		switch {
		case strings.Contains(sql, "pg_stat_replication"):
			var lines []string
			for _, r := range s.w.senders(nil) {
				lines = append(lines, r.ApplicationName+"\t"+r.State+" async")
			}
			*dest[0].(*string) = strings.Join(lines, "\n")
		case strings.Contains(sql, "pg_replication_slots"):
			*dest[0].(*string) = s.w.slots
		case strings.Contains(sql, "pg_is_in_recovery"):
			*dest[0].(*bool) = s.cluster == s.w.primary
		case strings.Contains(sql, "count(*)"):
			n := int64(0)
			for _, id := range args[0].([]int64) {
				if s.w.rows[id] {
					n++
				}
			}
			*dest[0].(*int64) = n
		}
		return nil
	}}
}

func (s *fakeSession) Close(context.Context) error { return nil }

func desired(t *testing.T, primary string) *topology.Desired {
	t.Helper()
	d := &topology.Desired{Name: "orders", MaxLagBytes: 16 << 20}
	for _, c := range []struct{ name, site string }{{"orders-east", "east"}, {"orders-west", "west"}} {
		d.Clusters = append(d.Clusters, topology.DesiredCluster{Name: c.name, Site: topology.Site{Name: c.site, Context: "lab-" + c.site}, Namespace: "db"})
	}
	if primary == "orders-west" {
		d.PrimaryIndex = 1
	}
	return d
}

func drillOver(t *testing.T, w *fakeWorld) *Switchover {
	return &Switchover{World: w, Desired: desired(t, "orders-east"), Beat: 5 * time.Millisecond, Hold: 50 * time.Millisecond,
		WithPrimary: func(p string) (*topology.Desired, error) { return desired(t, p), nil }}
}

func TestDrillRoundTrip(t *testing.T) {
	w := &fakeWorld{primary: "orders-east", rows: map[int64]bool{}}
	rep, err := drillOver(t, w).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Result != "passed" || len(rep.Moves) != 2 || rep.Moves[0].To != "orders-west" || rep.Moves[1].To != "orders-east" || w.primary != "orders-east" {
		t.Fatalf("report %+v, primary %s", rep, w.primary)
	}
	if rep.Missing != 0 || rep.Acknowledged == 0 {
		t.Fatalf("%d of %d heartbeats missing", rep.Missing, rep.Acknowledged)
	}
	for _, m := range rep.Moves {
		if m.LongestGap < 0.02 {
			t.Fatalf("move %s → %s: longest gap %.3fs, want the ~30 ms writes were refused", m.From, m.To, m.LongestGap)
		}
	}
}

// With no hold, the way back waits until the old primary streams again
// (as it catches up with the promotion): a move back at once would be
// refused for its lag.
// And until the new primary's operator reports it ready again: one still
// building its in-site replicas runs base backups, whose end, written
// after the next fence, would back that move out.
func TestDrillMovesBackFromAReadyTopology(t *testing.T) {
	for _, w := range []*fakeWorld{
		{primary: "orders-east", rows: map[int64]bool{}, catchUp: 3},
		{primary: "orders-east", rows: map[int64]bool{}, rebuild: 3},
	} {
		d := drillOver(t, w)
		d.Hold = 0
		rep, err := d.Run(context.Background())
		if err != nil || rep.Result != "passed" || len(w.applied) != 2 {
			t.Fatalf("report %+v, error %v, applied %v", rep, err, w.applied)
		}
		if w.appliedWhileBehind != 0 {
			t.Fatalf("%d move(s) applied while a standby was not streaming or the primary not ready", w.appliedWhileBehind)
		}
	}
}

// A heartbeat acknowledged and then absent is counted missing: the first,
// which the drill waits for before its first move (a later one may fall
// in a move's refused writes, and not be acknowledged at all).
func TestDrillCountsAMissingHeartbeat(t *testing.T) {
	w := &fakeWorld{primary: "orders-east", rows: map[int64]bool{}, lose: 1}
	rep, err := drillOver(t, w).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Missing != 1 {
		t.Fatalf("%d missing, want 1", rep.Missing)
	}
}

func TestDrillRefusesATopologyNotReady(t *testing.T) {
	w := &fakeWorld{primary: "orders-east", rows: map[int64]bool{}, notReady: true}
	rep, err := drillOver(t, w).Run(context.Background())
	var nr *NotReadyError
	if rep != nil || !errors.As(err, &nr) || !strings.Contains(err.Error(), "orders-west is not streaming") {
		t.Fatalf("report %v, error %v: want a refusal naming the standby", rep, err)
	}
	if len(w.applied) != 0 {
		t.Fatalf("applied %v while refusing", w.applied)
	}
}

// A move that backs out ends the drill there: no hold, no move back, and
// the report says so.
func TestDrillThatBacksOutSaysSo(t *testing.T) {
	w := &fakeWorld{primary: "orders-east", rows: map[int64]bool{},
		applyErr: &apply.BackedOutError{From: "orders-east", To: "orders-west", Cause: errors.New("stalled"), Refused: time.Second}}
	rep, err := drillOver(t, w).Run(context.Background())
	if err == nil || rep == nil || rep.Result != "backed out" || len(rep.Moves) != 1 || len(w.applied) != 1 {
		t.Fatalf("report %+v, error %v, applied %v", rep, err, w.applied)
	}
	if !strings.Contains(rep.Text(), "backed out") || !strings.Contains(rep.Markdown(), "— backed out") {
		t.Fatalf("the report does not say it backed out:\n%s\n%s", rep.Text(), rep.Markdown())
	}
}

// A drill whose way back fails, or whose topology does not settle after
// it, or whose table is not dropped, says so: never "passed".
func TestDrillFailsOnTheWayBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    *fakeWorld
		want string
	}{
		{"the move back fails", &fakeWorld{applyErr: errors.New("refused: lag"), failMove: 2}, "move orders-west → orders-east: refused: lag"},
		{"never DR ready after the first move", &fakeWorld{neverSettlesAfter: 1}, "not ready within 300ms before moving back"},
		{"never DR ready after the drill", &fakeWorld{neverSettlesAfter: 2}, "not ready within 300ms after the drill"},
		{"the table not dropped", &fakeWorld{dropErr: errors.New("permission denied")}, "pgtopo_drill not dropped on orders-east: permission denied"},
		{"an in-site replica never streams", &fakeWorld{instances: 2, replicaDown: true}, "not ready within 300ms before the first move: orders-east streams to 1 of the 2 members expected (orders-west)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.w.primary, tc.w.rows = "orders-east", map[int64]bool{}
			d := drillOver(t, tc.w)
			d.Settle = 300 * time.Millisecond
			rep, err := d.Run(context.Background())
			if rep == nil || !strings.Contains(rep.Error, tc.want) {
				t.Fatalf("report %+v, error %v; want %q", rep, err, tc.want)
			}
			if tc.name != "the table not dropped" && (rep.Result != "failed" || err == nil) {
				t.Fatalf("result %s, error %v", rep.Result, err)
			}
		})
	}
}

// Target prefers a standby in another site than the primary's, then the
// one least behind; one that does not stream is never chosen.
func TestTargetPrefersAnotherSiteThenLeastBehind(t *testing.T) {
	d := desired(t, "orders-east")
	st := func(name, site string, replay snapshot.LSN, status string) snapshot.ClusterState {
		return snapshot.ClusterState{Name: name, Site: site, PG: &snapshot.PGState{InRecovery: true, ReplayLSN: replay, WalReceiver: &snapshot.WalReceiver{Status: status}}}
	}
	primary := snapshot.ClusterState{Name: "orders-east", Site: "east", PG: &snapshot.PGState{CurrentLSN: 1000}}
	for _, tc := range []struct {
		name     string
		standbys []snapshot.ClusterState
		want     string
	}{
		{"another site though further behind", []snapshot.ClusterState{st("orders-east2", "east", 1000, "streaming"), st("orders-west", "west", 900, "streaming")}, "orders-west"},
		{"least behind among other sites", []snapshot.ClusterState{st("orders-west", "west", 500, "streaming"), st("orders-south", "south", 900, "streaming")}, "orders-south"},
		{"least behind, listed first", []snapshot.ClusterState{st("orders-south", "south", 900, "streaming"), st("orders-west", "west", 500, "streaming")}, "orders-south"},
		{"not one that does not stream", []snapshot.ClusterState{st("orders-west", "west", 1000, "stopped"), st("orders-east2", "east", 100, "streaming")}, "orders-east2"},
	} {
		snap := &snapshot.Snapshot{Clusters: append([]snapshot.ClusterState{primary}, tc.standbys...)}
		got, err := Target(d, snap, "")
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestTarget(t *testing.T) {
	w := &fakeWorld{primary: "orders-east"}
	snap := w.Observe(context.Background(), desired(t, "orders-east"))
	d := desired(t, "orders-east")
	for _, tc := range []struct{ named, want, err string }{
		{"", "orders-west", ""},
		{"orders-west", "orders-west", ""},
		{"orders-east", "", "it is the primary already"},
		{"orders-north", "", "not a cluster of topology orders"},
	} {
		got, err := Target(d, snap, tc.named)
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Target(%q) = %q, %v; want %q, %q", tc.named, got, err, tc.want, tc.err)
		}
	}
}

func TestLongestGap(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	acked := []beat{{1, at(0)}, {2, at(100)}, {3, at(1900)}, {4, at(2000)}, {5, at(5000)}}
	for _, tc := range []struct {
		from, to int
		want     time.Duration
	}{
		{50, 1950, 1800 * time.Millisecond}, // the gap inside the move
		{2100, 2200, 3 * time.Second},       // a move inside one gap counts it whole
		{10, 90, 100 * time.Millisecond},
		{6000, 7000, 2 * time.Second}, // writes never came back: up to the move's end
	} {
		if got := LongestGap(acked, at(tc.from), at(tc.to)); got != tc.want {
			t.Errorf("[%d, %d]: %s, want %s", tc.from, tc.to, got, tc.want)
		}
	}
	if got := LongestGap(nil, at(0), at(100)); got != 0 {
		t.Errorf("no beats: %s, want 0", got)
	}
}

// The members a primary must stream to: one leader per other cluster that
// exists, and its own in-site replicas (an operator's object's instances
// less one; none counted for a Patroni site's cluster).
func TestFewerSenders(t *testing.T) {
	primary := func(instances int, flavor string, streaming ...string) snapshot.ClusterState {
		c := snapshot.ClusterState{Name: "orders-east", Exists: true, PG: &snapshot.PGState{},
			Object: &snapshot.Object{Spec: snapshot.Spec{Instances: instances, Flavor: flavor}}}
		for _, s := range streaming {
			c.PG.Replication = append(c.PG.Replication, snapshot.ReplicationPeer{ApplicationName: s, State: "streaming"})
		}
		return c
	}
	standby := func(name string, exists bool) snapshot.ClusterState {
		return snapshot.ClusterState{Name: name, Exists: exists, PG: &snapshot.PGState{InRecovery: true}}
	}
	for _, tc := range []struct {
		name     string
		clusters []snapshot.ClusterState
		want     string
	}{
		{"two standbys, one streaming", []snapshot.ClusterState{primary(1, "", "orders-west"), standby("orders-west", true), standby("orders-north", true)},
			"orders-east streams to 1 of the 2 members expected (orders-west)"},
		{"two standbys, both streaming", []snapshot.ClusterState{primary(1, "", "orders-west", "orders-north"), standby("orders-west", true), standby("orders-north", true)}, ""},
		{"a standby not created yet is not waited for", []snapshot.ClusterState{primary(1, "", "orders-west"), standby("orders-west", true), standby("orders-north", false)}, ""},
		{"an in-site replica not streaming", []snapshot.ClusterState{primary(3, "", "orders-west", "orders-east-1"), standby("orders-west", true)},
			"orders-east streams to 2 of the 3 members expected (orders-west, orders-east-1)"},
		{"a Patroni site's primary: its replicas are Patroni's", []snapshot.ClusterState{primary(3, snapshot.FlavorPatroni, "orders-west"), standby("orders-west", true)}, ""},
		{"none streaming", []snapshot.ClusterState{primary(1, ""), standby("orders-west", true)}, "orders-east streams to 0 of the 1 members expected (none)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fewerSenders(&snapshot.Snapshot{Clusters: tc.clusters}); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
