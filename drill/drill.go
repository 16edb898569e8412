// Package drill rehearses disaster recovery on a live topology and reports
// what an application saw: a switchover round trip (to a standby, a hold,
// and back) within the same budgets and back-outs as any switchover, with
// a heartbeat written through whichever cluster takes writes, so the
// report gives the longest write gap each way and the heartbeats
// acknowledged and missing. Side effects go through the interfaces below;
// cli wires them to the sites and databases.
package drill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/health"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Schema is the drill's own schema in the primary's database, created
// and dropped by the drill (a killed drill's is dropped by the next one):
// never a user schema.
const Schema = "pgtopo_drill"

var (
	createSQL = []string{
		"DROP SCHEMA IF EXISTS " + Schema + " CASCADE",
		"CREATE SCHEMA " + Schema,
		"CREATE TABLE " + Schema + ".heartbeat (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
	}
	dropSQL  = "DROP SCHEMA IF EXISTS " + Schema + " CASCADE"
	beatSQL  = "INSERT INTO " + Schema + ".heartbeat (id) VALUES ($1)"
	countSQL = "SELECT count(*) FROM " + Schema + ".heartbeat WHERE id = ANY($1)"
)

// Session is one database session.
type Session interface {
	Exec(ctx context.Context, sql string, args ...any) error
	QueryRow(ctx context.Context, sql string, args ...any) interface{ Scan(dest ...any) error }
	Close(ctx context.Context) error
}

// World is what a drill acts through.
type World interface {
	// Observe looks at every site of d.
	Observe(ctx context.Context, d *topology.Desired) *snapshot.Snapshot
	// Apply plans d against what it sees and applies it: a switchover
	// when d's primary is another cluster.
	Apply(ctx context.Context, d *topology.Desired) error
	// Open opens an admin session to a cluster, through its endpoint.
	Open(ctx context.Context, c *snapshot.ClusterState) (Session, error)
}

// Switchover is a switchover round trip.
type Switchover struct {
	World World
	// Desired is the topology as the file says it; WithPrimary the same
	// with another primary.
	Desired     *topology.Desired
	WithPrimary func(primary string) (*topology.Desired, error)
	// To is the standby to move to; empty, the DR verdict's readiest.
	To string
	// Hold is how long the primary stays moved.
	Hold time.Duration
	// Beat is how often the heartbeat writes (default 100 ms).
	Beat time.Duration
	// Settle bounds the wait for every standby to stream again (default 2 min).
	Settle time.Duration
	// Progress hears what the drill does, as it does it.
	Progress func(string)
}

// Report is what a drill measured.
type Report struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Drill      string    `json:"drill"`
	Topology   string    `json:"topology"`
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished"`
	// Result is "passed", "backed out" (a move backed out: the primary
	// stayed), or "failed".
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Ready is the DR verdict the drill started from.
	Ready string `json:"ready"`
	Moves []Move `json:"moves"`
	Hold  string `json:"hold"`
	// Heartbeats written and acknowledged, and of those, missing from the
	// primary afterwards.
	Acknowledged int `json:"acknowledged"`
	Missing      int `json:"missing"`
	// StreamingAfter is how long after the last move every standby
	// streamed again, within maxLagBytes (the DR verdict ready).
	StreamingAfter float64 `json:"streamingAfterSeconds,omitempty"`
	// Isolation is what an isolated failover drill measured.
	Isolation *Isolation `json:"isolation,omitempty"`
}

// Move is one switchover of the drill.
type Move struct {
	From string `json:"from"`
	To   string `json:"to"`
	// LagBytes is how far the target was behind when the move began.
	LagBytes int64 `json:"lagBytes"`
	// Seconds is how long the move's apply took.
	Seconds float64 `json:"seconds"`
	// LongestGap is the longest time between two acknowledged heartbeats
	// during the move: the write outage an application saw.
	LongestGap float64 `json:"longestGapSeconds"`
	Error      string  `json:"error,omitempty"`
	began, end time.Time
}

// NotReadyError: the DR verdict is not ready, and a drill would measure a
// topology already failing.
type NotReadyError struct{ Verdict string }

func (e *NotReadyError) Error() string {
	return "drill refused: " + e.Verdict + "; a drill starts only from a ready topology (pgtopo status says why)"
}

// Target is the standby a drill moves to: the one named, or the ready
// standby least behind the live primary, in another site first.
func Target(d *topology.Desired, snap *snapshot.Snapshot, named string) (string, error) {
	primary := health.LivePrimary(snap)
	if primary == nil {
		return "", fmt.Errorf("no one cluster takes writes")
	}
	if named != "" {
		c, ok := snap.Cluster(named)
		switch {
		case !ok:
			return "", fmt.Errorf("--to %s: not a cluster of topology %s", named, d.Name)
		case named == primary.Name:
			return "", fmt.Errorf("--to %s: it is the primary already", named)
		case c.PG == nil || !c.PG.InRecovery:
			return "", fmt.Errorf("--to %s: not a standby that answers", named)
		}
		return named, nil
	}
	best, bestLag, bestOther := "", int64(0), false
	for _, c := range snap.Clusters {
		if c.Name == primary.Name || c.PG == nil || !c.PG.InRecovery || c.PG.WalReceiver == nil || c.PG.WalReceiver.Status != "streaming" {
			continue
		}
		lag, other := snapshot.Lag(primary.PG, c.PG), c.Site != primary.Site
		if best == "" || (other && !bestOther) || (other == bestOther && lag < bestLag) {
			best, bestLag, bestOther = c.Name, lag, other
		}
	}
	if best == "" {
		return "", fmt.Errorf("no standby streams from %s", primary.Name)
	}
	return best, nil
}

// Run runs the drill. A report comes back whenever the drill began, with
// its error too when it did not pass; a drill that could not begin returns
// only the error.
func (s *Switchover) Run(ctx context.Context) (*Report, error) {
	say := sayer(s.Progress)
	rep := &Report{APIVersion: "pgtopo.dev/v1alpha1", Kind: "DrillReport", Drill: "switchover", Topology: s.Desired.Name, Started: time.Now(), Hold: s.Hold.String()}
	snap := s.World.Observe(ctx, s.Desired)
	verdict := health.DR(s.Desired, snap)
	if !verdict.Healthy {
		return nil, &NotReadyError{Verdict: verdict.Message}
	}
	rep.Ready = verdict.Message
	home := health.LivePrimary(snap).Name
	if home != s.Desired.Primary().Name {
		return nil, fmt.Errorf("drill refused: %s is primary and the file says %s; apply the file first", home, s.Desired.Primary().Name)
	}
	to, err := Target(s.Desired, snap, s.To)
	if err != nil {
		return nil, fmt.Errorf("drill refused: %w", err)
	}
	away, err := s.WithPrimary(to)
	if err != nil {
		return nil, err
	}
	// Through whichever cluster takes writes, as they move.
	primary, _ := snap.Cluster(home)
	beats, stop, err := startHeartbeat(ctx, s.World, primary, snap.Clusters, s.Beat, say)
	if err != nil {
		return nil, err
	}

	finish := func(err error) (*Report, error) {
		stop()
		rep.Acknowledged = len(beats.acked())
		s.account(ctx, rep, beats)
		rep.Finished = time.Now()
		if err != nil {
			rep.Error = err.Error()
			if rep.Result == "" {
				rep.Result = "failed"
			}
			return rep, err
		}
		rep.Result = "passed"
		return rep, nil
	}
	// Let the heartbeat find its primary before the first move.
	if err := beats.waitFirst(ctx, 10*time.Second); err != nil {
		return finish(err)
	}
	if err := s.settled(ctx, s.Desired, "before the first move"); err != nil {
		return finish(err)
	}
	if err := s.move(ctx, rep, away, home, to); err != nil {
		return finish(err)
	}
	say("hold: %s is primary for %s", to, s.Hold)
	select {
	case <-time.After(s.Hold):
	case <-ctx.Done():
		return finish(ctx.Err())
	}
	// The way back starts as the first move did: from a DR-ready
	// topology, the old primary streaming within maxLagBytes (it may
	// still be catching up with the promotion's WAL after a short hold).
	if err := s.settled(ctx, away, "before moving back"); err != nil {
		return finish(err)
	}
	if err := s.move(ctx, rep, s.Desired, to, home); err != nil {
		return finish(err)
	}
	// Every standby streaming again, within maxLagBytes.
	if err := s.settled(ctx, s.Desired, "after the drill"); err != nil {
		return finish(err)
	}
	rep.StreamingAfter = time.Since(rep.Moves[len(rep.Moves)-1].end).Seconds()
	return finish(nil)
}

// settled waits, at most Settle (default 2 min), until d's DR verdict is
// ready (every standby streaming within maxLagBytes) and every cluster's
// operator reports it ready: after a promotion the new primary's operator
// builds its in-site replicas again, and a base backup's end written after
// the next move's fence is WAL its target can never receive, which backs
// the move out.
func (s *Switchover) settled(ctx context.Context, d *topology.Desired, when string) error {
	began, bound := time.Now(), or(s.Settle, 2*time.Minute)
	for {
		snap := s.World.Observe(ctx, d)
		v := health.DR(d, snap)
		why := v.Message
		if v.Healthy {
			if why = notReady(snap); why == "" {
				return nil
			}
		}
		if time.Since(began) > bound {
			return fmt.Errorf("not ready within %s %s: %s", bound, when, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// notReady names a cluster whose operator does not report it ready, or a
// primary streaming to fewer members than its topology runs; "" when
// neither. An operator calls a replica ready once its server runs, which
// is before it streams: a replica that connects later is a change the
// drill did not make.
func notReady(snap *snapshot.Snapshot) string {
	for _, c := range snap.Clusters {
		if c.Object != nil && !c.Object.Ready {
			return fmt.Sprintf("%s's operator reports it %s, not ready", c.Name, or(c.Object.Status, "not ready"))
		}
	}
	return fewerSenders(snap)
}

// fewerSenders says when the primary streams to fewer members than
// expected: its in-site replicas (an operator's object runs Instances
// members) and one leader of each other cluster, "" when it does not.
func fewerSenders(snap *snapshot.Snapshot) string {
	p := health.LivePrimary(snap)
	if p == nil || p.PG == nil {
		return ""
	}
	want := 0
	for _, c := range snap.Clusters {
		if c.Exists && c.Name != p.Name {
			want++
		}
	}
	if p.Object != nil && p.Object.Spec.Flavor != snapshot.FlavorPatroni {
		want += max(p.Object.Spec.Instances-1, 0)
	}
	var streaming []string
	for _, r := range p.PG.Replication {
		if r.State == "streaming" {
			streaming = append(streaming, r.ApplicationName)
		}
	}
	if len(streaming) >= want {
		return ""
	}
	return fmt.Sprintf("%s streams to %d of the %d members expected (%s)", p.Name, len(streaming), want, or(strings.Join(streaming, ", "), "none"))
}

// move applies d (primary to) and measures it.
func (s *Switchover) move(ctx context.Context, rep *Report, d *topology.Desired, from, to string) error {
	snap := s.World.Observe(ctx, d)
	m := Move{From: from, To: to}
	if p, ok := snap.Cluster(from); ok && p.PG != nil {
		if t, ok := snap.Cluster(to); ok && t.PG != nil {
			m.LagBytes = snapshot.Lag(p.PG, t.PG)
		}
	}
	sayer(s.Progress)("move: %s → %s (%s behind)", from, to, snapshot.HumanBytes(m.LagBytes))
	m.began = time.Now()
	err := s.World.Apply(ctx, d)
	m.end = time.Now()
	m.Seconds = m.end.Sub(m.began).Seconds()
	if err != nil {
		m.Error = err.Error()
	}
	rep.Moves = append(rep.Moves, m)
	var backedOut *apply.BackedOutError
	if errors.As(err, &backedOut) {
		rep.Result = "backed out"
	}
	if err != nil {
		return fmt.Errorf("move %s → %s: %w", from, to, err)
	}
	return nil
}

// account fills the gaps and missing heartbeats, and drops the table.
func (s *Switchover) account(ctx context.Context, rep *Report, beats *heartbeat) {
	acked := beats.acked()
	for i := range rep.Moves {
		rep.Moves[i].LongestGap = LongestGap(acked, rep.Moves[i].began, rep.Moves[i].end).Seconds()
	}
	missing, msg := countAndDrop(context.WithoutCancel(ctx), s.World, s.Desired, acked)
	rep.Missing = missing
	if msg != "" {
		rep.Error = joinErr(rep.Error, msg)
	}
}

// countAndDrop counts the acknowledged heartbeats missing from the live
// primary and drops the drill's schema there; msg says what it could not
// do.
func countAndDrop(ctx context.Context, w World, d *topology.Desired, acked []beat) (missing int, msg string) {
	primary := health.LivePrimary(w.Observe(ctx, d))
	if primary == nil {
		return 0, "no one primary after the drill: the heartbeats were not counted and " + Schema + " was not dropped (the next drill drops it)"
	}
	ids := make([]int64, len(acked))
	for i, b := range acked {
		ids[i] = b.id
	}
	sess, err := w.Open(ctx, primary)
	if err != nil {
		return 0, fmt.Sprintf("heartbeats not counted on %s: %v", primary.Name, err)
	}
	defer func() { _ = sess.Close(ctx) }()
	var present int64
	if err := sess.QueryRow(ctx, countSQL, ids).Scan(&present); err != nil {
		msg = fmt.Sprintf("heartbeats not counted on %s: %v", primary.Name, err)
	} else {
		missing = len(ids) - int(present)
	}
	if err := sess.Exec(ctx, dropSQL); err != nil {
		msg = joinErr(msg, fmt.Sprintf("%s not dropped on %s: %v (the next drill drops it)", Schema, primary.Name, err))
	}
	return missing, msg
}

func joinErr(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// execOn runs sqls on a cluster in one session.
func execOn(ctx context.Context, w World, c *snapshot.ClusterState, sqls ...string) error {
	sess, err := w.Open(ctx, c)
	if err != nil {
		return err
	}
	defer func() { _ = sess.Close(ctx) }()
	for _, q := range sqls {
		if err := sess.Exec(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// sayer formats progress for a listener that may be absent.
func sayer(progress func(string)) func(string, ...any) {
	return func(format string, args ...any) {
		if progress != nil {
			progress(fmt.Sprintf(format, args...))
		}
	}
}

// startHeartbeat creates the heartbeat's table on primary and writes a
// beat every period (default 100 ms) through whichever of clusters takes
// writes, until stop.
func startHeartbeat(ctx context.Context, w World, primary *snapshot.ClusterState, clusters []snapshot.ClusterState, every time.Duration, say func(string, ...any)) (beats *heartbeat, stop func(), _ error) {
	if err := execOn(ctx, w, primary, createSQL...); err != nil {
		return nil, nil, fmt.Errorf("drill: heartbeat table on %s: %w", primary.Name, err)
	}
	beats = &heartbeat{world: w, clusters: clusters, every: or(every, 100*time.Millisecond)}
	say("heartbeat: %s.heartbeat on %s, a row every %s", Schema, primary.Name, beats.every)
	beatCtx, stopBeats := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); beats.run(beatCtx) }()
	return beats, func() { stopBeats(); <-done }, nil
}

// beat is one acknowledged heartbeat.
type beat struct {
	id int64
	at time.Time
}

// LongestGap is the longest time between consecutive acknowledged beats
// that overlaps [from, to]; a stretch from the last beat before to the
// first after counts whole, and one that has not ended by to counts up to
// to.
func LongestGap(acked []beat, from, to time.Time) time.Duration {
	var longest time.Duration
	for i := 1; i < len(acked); i++ {
		a, b := acked[i-1].at, acked[i].at
		if b.Before(from) || a.After(to) {
			continue
		}
		longest = max(longest, b.Sub(a))
	}
	if n := len(acked); n > 0 && acked[n-1].at.Before(to) {
		longest = max(longest, to.Sub(acked[n-1].at))
	}
	return longest
}

// heartbeat writes a row every beat through whichever cluster takes
// writes, as an application that reconnects would.
type heartbeat struct {
	world    World
	clusters []snapshot.ClusterState
	every    time.Duration

	mu   sync.Mutex
	done []beat
	next int64

	// probes hold a session per cluster between tries, as a pool would:
	// asking one costs a query, not a TLS handshake.
	probes []probe
}

type probe struct {
	sess   Session
	opened time.Time
}

func (h *heartbeat) acked() []beat {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.done)
}

func (h *heartbeat) waitFirst(ctx context.Context, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for len(h.acked()) == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("heartbeat: no row acknowledged within %s", bound)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (h *heartbeat) run(ctx context.Context) {
	var sess Session
	defer func() {
		if sess != nil {
			_ = sess.Close(context.WithoutCancel(ctx))
		}
		for _, p := range h.probes {
			if p.sess != nil {
				_ = p.sess.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	// A beat every h.every while writes go through; when one fails, the
	// next try comes sooner, as an application retrying would, so the gap
	// measured is the outage and not the beat's period.
	wait := h.every
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = retryEvery
		if sess == nil {
			sess = h.connect(ctx)
			if sess == nil {
				continue
			}
		}
		h.mu.Lock()
		h.next++
		id := h.next
		h.mu.Unlock()
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := sess.Exec(wctx, beatSQL, id)
		cancel()
		if err != nil {
			_ = sess.Close(context.WithoutCancel(ctx))
			sess = nil
			continue
		}
		h.mu.Lock()
		h.done = append(h.done, beat{id: id, at: time.Now()})
		h.mu.Unlock()
		wait = h.every
	}
}

// retryEvery is how soon the heartbeat tries again after a failed write:
// as often as the benchmarks' writer does, so the two measure alike.
const retryEvery = 10 * time.Millisecond

// connect finds a cluster that takes writes now, asking each through the
// session it holds there (opened when it has none). A session that says
// no is kept up to a second, so a Service that moved is followed.
func (h *heartbeat) connect(ctx context.Context) Session {
	if h.probes == nil {
		h.probes = make([]probe, len(h.clusters))
	}
	for i := range h.clusters {
		p := &h.probes[i]
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		if p.sess == nil {
			sess, err := h.world.Open(cctx, &h.clusters[i])
			if err != nil {
				cancel()
				continue
			}
			p.sess, p.opened = sess, time.Now()
		}
		var writable bool
		err := p.sess.QueryRow(cctx, "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'").Scan(&writable)
		cancel()
		if err == nil && writable {
			sess := p.sess
			p.sess = nil
			return sess
		}
		if err != nil || time.Since(p.opened) > time.Second {
			_ = p.sess.Close(context.WithoutCancel(ctx))
			p.sess = nil
		}
	}
	return nil
}
