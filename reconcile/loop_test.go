package reconcile

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// These are narrow tests of the loop's bookkeeping with fake parts; the
// loop against a real repository and the lab is e2e.TestGitOpsEndToEnd.

type fakeSource struct {
	in  *Input
	err error
}

func (s fakeSource) Load(context.Context) (*Input, error) { return s.in, s.err }

type fakeObserver struct{ reachable bool }

func (o fakeObserver) Observe(_ context.Context, d *topology.Desired) (*snapshot.Snapshot, error) {
	snap := &snapshot.Snapshot{Topology: d.Name}
	for _, s := range d.Sites() {
		st := snapshot.SiteState{Name: s.Name, Context: s.Context, Reachable: o.reachable, NodeIPs: []string{"127.0.0.1"}}
		if !o.reachable {
			st.Error = "site " + s.Name + " unreachable: connection refused"
		}
		snap.Sites = append(snap.Sites, st)
	}
	for _, c := range d.Clusters {
		snap.Clusters = append(snap.Clusters, snapshot.ClusterState{Name: c.Name, Site: c.Site.Name, Namespace: c.Namespace})
	}
	return snap, nil
}

func input(t *testing.T) *Input {
	t.Helper()
	v, err := schema.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	in, err := (&FileSource{Path: "../examples/topologies/lab-two-sites.yaml", Validator: v}).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	in.Revision = strings.Repeat("c", 40)
	return in
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func TestLoopOutcomes(t *testing.T) {
	rev := strings.Repeat("c", 40)
	applied := func(_ context.Context, d *topology.Desired, _ plan.Plan, seen *snapshot.Snapshot, opt plan.Options) (*apply.Result, error) {
		if seen == nil {
			t.Error("apply got no look at the world: it would look again before its first step")
		}
		if opt.Revision != rev {
			t.Errorf("apply got revision %q, want %q", opt.Revision, rev)
		}
		return &apply.Result{Completed: completed(plan.ActionEnsurePrimary, plan.ActionCreateStandby, plan.ActionRecord, plan.ActionRecord)}, nil
	}
	cases := []struct {
		name    string
		source  Source
		obs     Observer
		apply   Applier
		want    Outcome
		metrics []string
	}{
		{name: "source fails", source: fakeSource{err: errors.New("repo: fetch: connection refused")}, obs: fakeObserver{true},
			want: OutcomeError, metrics: []string{`pgtopo_cycles_total{result="error",topology="orders.yaml"} 1`, `pgtopo_in_sync{topology="orders.yaml"} 0`}},
		{name: "site unreachable", source: fakeSource{in: input(t)}, obs: fakeObserver{false},
			want: OutcomeRefused, metrics: []string{`pgtopo_cycles_total{result="refused",topology="orders"} 1`, `pgtopo_refusals_total{topology="orders"} 2`}},
		{name: "bring-up applied", source: fakeSource{in: input(t)}, obs: fakeObserver{true}, apply: applied,
			want: OutcomeApplied, metrics: []string{
				`pgtopo_cycles_total{result="applied",topology="orders"} 1`, `pgtopo_steps_applied_total{action="record",topology="orders"} 2`,
				`pgtopo_steps_applied_total{action="create-standby",topology="orders"} 1`, `pgtopo_last_applied_revision_info{revision="` + rev + `",topology="orders"} 1`,
				`pgtopo_in_sync{topology="orders"} 1`}},
		{name: "another run's Lease: busy, not refused", source: fakeSource{in: input(t)}, obs: leasedObserver{fakeObserver{false}, time.Now()},
			want: OutcomeBusy, metrics: []string{`pgtopo_cycles_total{result="busy",topology="orders"} 1`, `pgtopo_refusals_total{topology="orders"} 0`, `pgtopo_cycles_total{result="refused",topology="orders"} 0`}},
		{name: "a stale Lease is no one's: refused", source: fakeSource{in: input(t)}, obs: leasedObserver{fakeObserver{false}, time.Now().Add(-time.Hour)},
			want: OutcomeRefused, metrics: []string{`pgtopo_refusals_total{topology="orders"} 2`}},
		{name: "the Lease held past the lock timeout: busy", source: fakeSource{in: input(t)}, obs: fakeObserver{true},
			apply: func(context.Context, *topology.Desired, plan.Plan, *snapshot.Snapshot, plan.Options) (*apply.Result, error) {
				return &apply.Result{}, &apply.LockHeldError{Lease: "pgtopo-orders", Namespace: "db", Site: "east", Holder: "ci-7"}
			},
			want: OutcomeBusy, metrics: []string{`pgtopo_cycles_total{result="busy",topology="orders"} 1`, `pgtopo_refusals_total{topology="orders"} 0`}},
		{name: "no switchover slot free: busy", source: fakeSource{in: input(t)}, obs: fakeObserver{true},
			apply: func(context.Context, *topology.Desired, plan.Plan, *snapshot.Snapshot, plan.Options) (*apply.Result, error) {
				return nil, &BusyError{Why: "no switchover slot free in its sites within 5s"}
			},
			want: OutcomeBusy, metrics: []string{`pgtopo_cycles_total{result="busy",topology="orders"} 1`, `pgtopo_refusals_total{topology="orders"} 0`}},
		{name: "drained between steps", source: fakeSource{in: input(t)}, obs: fakeObserver{true},
			apply: func(context.Context, *topology.Desired, plan.Plan, *snapshot.Snapshot, plan.Options) (*apply.Result, error) {
				return &apply.Result{Completed: completed(plan.ActionEnsurePrimary)}, apply.ErrDrained
			},
			want: OutcomeStopped, metrics: []string{`pgtopo_cycles_total{result="stopped",topology="orders"} 1`, `pgtopo_steps_applied_total{action="ensure-primary",topology="orders"} 1`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			l := &Loop{Name: "orders.yaml", Source: c.source, Observer: c.obs, Apply: c.apply, Interval: time.Hour,
				Log: slog.New(slog.NewTextHandler(&logs, nil)), Metrics: NewMetrics()}
			got := l.Once(context.Background())
			if got.Outcome != c.want {
				t.Fatalf("outcome %s (%v), want %s", got.Outcome, got.Err, c.want)
			}
			m := scrape(t, l.Metrics)
			for _, w := range c.metrics {
				if !strings.Contains(m, w+"\n") {
					t.Errorf("metrics lack %q", w)
				}
			}
			l.logCycle(got)
			if !strings.Contains(logs.String(), "result="+string(c.want)) {
				t.Errorf("log line lacks the result: %s", logs.String())
			}
			if strings.HasPrefix(c.name, "no switchover slot") && !strings.Contains(logs.String(), `retry="no switchover slot free`) {
				t.Errorf("log line lacks why it retries: %s", logs.String())
			}
		})
	}
}

// TestRunStopsOnDrain: a loop whose apply is drained returns at once, and a
// loop waiting for its next interval returns when drain closes.
func TestRunStopsOnDrain(t *testing.T) {
	var logs bytes.Buffer
	drain := make(chan struct{})
	l := &Loop{Source: fakeSource{err: errors.New("no repo")}, Observer: fakeObserver{true}, Interval: time.Hour,
		Log: slog.New(slog.NewTextHandler(&logs, nil))}
	done := make(chan struct{})
	go func() { l.Run(context.Background(), drain); close(done) }()
	time.Sleep(50 * time.Millisecond)
	close(drain)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after drain")
	}
	if !strings.Contains(logs.String(), `msg=stopped reason="shutdown requested"`) {
		t.Fatalf("no stop line:\n%s", logs.String())
	}
	if ok, _ := l.Healthy(time.Now(), time.Minute); !ok {
		t.Fatal("a loop that just cycled is not healthy")
	}
	if ok, _ := l.Healthy(time.Now().Add(2*time.Minute), time.Minute); ok {
		t.Fatal("a loop idle for longer than maxAge is healthy")
	}
}

func completed(actions ...plan.Action) []apply.CompletedStep {
	var out []apply.CompletedStep
	for _, a := range actions {
		out = append(out, apply.CompletedStep{Step: plan.Step{Action: a}})
	}
	return out
}

// leasedObserver shows the topology's Lease held by another run, renewed at
// renewed.
type leasedObserver struct {
	fakeObserver
	renewed time.Time
}

func (o leasedObserver) Observe(ctx context.Context, d *topology.Desired) (*snapshot.Snapshot, error) {
	snap, err := o.fakeObserver.Observe(ctx, d)
	for i := range snap.Sites {
		snap.Sites[i].Lease = &snapshot.LeaseInfo{Holder: "ci-runner-7", RenewedAt: o.renewed.UTC().Format(time.RFC3339), Seconds: 15}
	}
	return snap, err
}

// The loop looks again soon while a failed-over primary is away or back
// but not rejoined, and at its interval otherwise.
func TestLostAway(t *testing.T) {
	rec := &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west", Phase: snapshot.FailoverDone}
	world := func(eastSiteUp bool, east snapshot.ClusterState) *snapshot.Snapshot {
		west := snapshot.ClusterState{Name: "orders-west", Site: "west", Exists: true, Object: &snapshot.Object{Marks: snapshot.Marks{Failover: rec}}}
		east.Name, east.Site = "orders-east", "east"
		return &snapshot.Snapshot{Sites: []snapshot.SiteState{{Name: "east", Reachable: eastSiteUp}, {Name: "west", Reachable: true}},
			Clusters: []snapshot.ClusterState{east, west}}
	}
	done := *rec
	done.Returned = &snapshot.Returned{Done: true}
	for _, tc := range []struct {
		name string
		snap *snapshot.Snapshot
		want bool
	}{
		{"no failover", &snapshot.Snapshot{}, false},
		{"its site away", world(false, snapshot.ClusterState{}), true},
		{"back, not fenced yet", world(true, snapshot.ClusterState{Exists: true, Object: &snapshot.Object{}, PG: &snapshot.PGState{}}), true},
		{"rejoined and recorded", world(true, snapshot.ClusterState{Exists: true, Object: &snapshot.Object{Marks: snapshot.Marks{Failover: &done}}}), false},
		{"a streaming standby again", world(true, snapshot.ClusterState{Exists: true, Object: &snapshot.Object{},
			PG: &snapshot.PGState{InRecovery: true, WalReceiver: &snapshot.WalReceiver{Status: "streaming"}}}), false},
	} {
		if got := lostAway(tc.snap); got != tc.want {
			t.Errorf("%s: lostAway %v, want %v", tc.name, got, tc.want)
		}
	}
}

// awayObserver shows a failover done and the lost primary's site away; the
// site answers its SiteAnswers from back on.
type awayObserver struct {
	back     time.Time
	observed chan time.Time
}

func (o awayObserver) Observe(_ context.Context, d *topology.Desired) (*snapshot.Snapshot, error) {
	o.observed <- time.Now()
	rec := &snapshot.FailoverRecord{Epoch: 1, From: "orders-east", To: "orders-west", Phase: snapshot.FailoverDone}
	return &snapshot.Snapshot{Topology: d.Name,
		Sites: []snapshot.SiteState{{Name: "east", Error: "site east unreachable"}, {Name: "west", Reachable: true}},
		Clusters: []snapshot.ClusterState{{Name: "orders-east", Site: "east"},
			{Name: "orders-west", Site: "west", Exists: true, Object: &snapshot.Object{Marks: snapshot.Marks{Failover: rec}}}}}, nil
}

func (o awayObserver) SiteAnswers(_ context.Context, _ *topology.Desired, site string) error {
	if site != "east" {
		return errors.New("asked about site " + site)
	}
	if time.Now().Before(o.back) {
		return errors.New("connection refused")
	}
	return nil
}

// While a failed-over primary's site is away, a loop whose Observer can
// probe sites starts its next cycle (the one that fences the returned
// primary) as soon as the site answers, well before LostRetry.
func TestLoopLooksAgainWhenTheLostSiteAnswers(t *testing.T) {
	var logs syncBuffer // the loop writes while the test reads
	o := awayObserver{back: time.Now().Add(700 * time.Millisecond), observed: make(chan time.Time, 10)}
	l := &Loop{Source: fakeSource{in: input(t)}, Observer: o, Interval: time.Hour, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx, nil)
	<-o.observed
	select {
	case at := <-o.observed:
		if late := at.Sub(o.back); late > lostProbe+300*time.Millisecond {
			t.Fatalf("the next cycle came %v after the site answered", late)
		}
	case <-time.After(LostRetry - 500*time.Millisecond):
		t.Fatalf("no cycle within %v of the site answering:\n%s", LostRetry-500*time.Millisecond, logs.String())
	}
	if !strings.Contains(logs.String(), "site answers again") {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// A loop on its fleet's beats waits for the first beat at least half an
// interval away: the loops' regular cycles start together.
func TestUntilBeat(t *testing.T) {
	beat := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		after time.Duration // now - beat
		want  time.Duration
	}{
		{after: 0, want: 10 * time.Second},
		{after: 1 * time.Second, want: 9 * time.Second},
		{after: 5 * time.Second, want: 5 * time.Second},
		{after: 5*time.Second + time.Millisecond, want: 15*time.Second - time.Millisecond}, // the next beat is too near
		{after: 37 * time.Second, want: 13 * time.Second},
		{after: -3 * time.Second, want: 13 * time.Second}, // a beat ahead
	} {
		if got := untilBeat(beat.Add(tc.after), beat, 10*time.Second); got != tc.want {
			t.Errorf("%s after the beat: wait %s, want %s", tc.after, got, tc.want)
		}
	}
}
