package drill

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pgtopo/pgtopo/health"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// CloneLabel marks an isolated drill's clone (snapshot.DrillCloneLabel).
const CloneLabel = snapshot.DrillCloneLabel

// Clone is an isolated drill's temporary cluster: a cascading standby of
// a standby, in that standby's site and namespace.
type Clone struct {
	Site, Namespace, Name string
}

func (c Clone) String() string { return c.Site + "/" + c.Namespace + "/" + c.Name }

// CloneName names the clone of a standby.
func CloneName(of string) string { return of + "-drill" }

// CloneWorld is what an isolated failover drill acts through, beyond the
// sites and databases a switchover drill uses.
type CloneWorld interface {
	World
	// LeftClones lists the clones earlier drills of the topology left.
	LeftClones(ctx context.Context) ([]Clone, error)
	// CreateClone creates c as a standby of of, streaming from of's
	// address inside the site and reachable only there.
	CreateClone(ctx context.Context, c Clone, of *snapshot.ClusterState) error
	// PromoteClone cuts c loose: it stops following and becomes primary.
	PromoteClone(ctx context.Context, c Clone) error
	// DeleteClone deletes c and returns once its object is gone.
	DeleteClone(ctx context.Context, c Clone) error
	// OpenClone opens an admin session to c inside its site.
	OpenClone(ctx context.Context, c Clone) (Session, error)
}

// PatroniSiteError: the standby to clone is in a Patroni site, where
// pgtopo has no operator to create a cluster with.
type PatroniSiteError struct{ Cluster, Site string }

func (e *PatroniSiteError) Error() string {
	return fmt.Sprintf("drill refused: %s is in Patroni site %s, where pgtopo cannot create a clone (no operator there to ask for one); "+
		"name a standby in a Kubernetes site with --from, rehearse %s with pgtopo drill switchover --to %s, "+
		"or build a standby cluster of it by hand (Patroni's standby_cluster) and promote that", e.Cluster, e.Site, e.Cluster, e.Cluster)
}

// Isolated is a failover rehearsal that leaves production alone: a clone
// of the DR standby, promoted on its own, checked and deleted.
type Isolated struct {
	World   CloneWorld
	Desired *topology.Desired
	// From is the standby to clone; empty, the DR verdict's readiest.
	From string
	// Beat is how often the heartbeat writes (default 100 ms).
	Beat time.Duration
	// StreamTimeout bounds the clone's creation until it streams
	// (default 10 min: a base backup of the whole database).
	StreamTimeout time.Duration
	// PromoteTimeout bounds the wait for the cut clone to take writes
	// (default 2 min).
	PromoteTimeout time.Duration
	// Settle bounds the wait for production to hold still before the
	// drill (default 2 min); Steady is how long it must (default 1 s).
	Settle, Steady time.Duration
	// CheckTimeout bounds each check (default 30 s).
	CheckTimeout time.Duration
	// Poll is how often the clone is looked at (default 100 ms).
	Poll time.Duration
	// Progress hears what the drill does, as it does it.
	Progress func(string)
}

// Check is one of the file's drill checks as it ran on the clone.
type Check struct {
	Name   string `json:"name"`
	Passed bool   `json:"passed"`
	Error  string `json:"error,omitempty"`
}

// Isolation is what an isolated drill measured on its clone.
type Isolation struct {
	From  string `json:"from"`
	Clone string `json:"clone"`
	// StreamingAfter is how long the clone took from its creation until it
	// replayed the heartbeat written when it first streamed.
	StreamingAfter float64 `json:"streamingAfterSeconds"`
	// ReplayedAtCut is the newest heartbeat the clone had replayed when
	// it was cut loose; KeptAfterPromotion the newest it holds as primary.
	ReplayedAtCut      int64 `json:"replayedAtCut"`
	KeptAfterPromotion int64 `json:"keptAfterPromotion"`
	// RTO is from the cut to the clone taking a write.
	RTO float64 `json:"rtoSeconds"`
	// RPO is the span of the heartbeats acknowledged before the cut that
	// the promoted clone lacks (0 when it has them all); LostHeartbeats
	// how many they are.
	RPO            float64 `json:"rpoSeconds"`
	LostHeartbeats int     `json:"lostHeartbeats"`
	Checks         []Check `json:"checks"`
	// Production says whether production's objects and replication are
	// as they were before the drill; Changes lists what differs.
	Production string   `json:"production"`
	Changes    []string `json:"changes,omitempty"`
	// StatusOnly lists objects whose resource version moved with nothing
	// pgtopo owns or marks changed: their operator's status updates.
	StatusOnly []string `json:"statusOnly,omitempty"`
	// Removed lists clones earlier drills left, removed before this one.
	Removed []string `json:"removedLeftovers,omitempty"`
}

// Run runs the drill. A report comes back whenever the drill began, with
// its error too when it did not pass; a drill that could not begin
// returns only the error.
func (d *Isolated) Run(ctx context.Context) (*Report, error) {
	say := sayer(d.Progress)
	rep := &Report{APIVersion: "pgtopo.dev/v1alpha1", Kind: "DrillReport", Drill: KindIsolated, Topology: d.Desired.Name, Started: time.Now()}
	if err := d.cloneable(d.From); err != nil {
		return nil, err
	}
	snap := d.World.Observe(ctx, d.Desired)
	verdict := health.DR(d.Desired, snap)
	if !verdict.Healthy {
		return nil, &NotReadyError{Verdict: verdict.Message}
	}
	rep.Ready = verdict.Message
	primary := health.LivePrimary(snap)
	from, err := Target(d.Desired, snap, d.From)
	if err != nil {
		return nil, fmt.Errorf("drill refused: %s", strings.Replace(err.Error(), "--to", "--from", 1))
	}
	if err := d.cloneable(from); err != nil {
		return nil, err
	}
	src, _ := snap.Cluster(from)
	if src.Service == nil || src.Service.ClusterIP == "" || src.Service.ClusterIP == "None" {
		return nil, fmt.Errorf("drill refused: %s has no Service address inside site %s for a clone to stream from", from, src.Site)
	}
	clone := Clone{Site: src.Site, Namespace: src.Namespace, Name: CloneName(from)}
	iso := &Isolation{From: from, Clone: clone.String(), Production: "not checked"}
	rep.Isolation = iso

	// What a killed drill left goes first: a clone, and the heartbeat's
	// schema (dropped by createSQL).
	left, err := d.World.LeftClones(ctx)
	if err != nil {
		return nil, fmt.Errorf("drill refused: looking for clones earlier drills left: %w", err)
	}
	for _, c := range left {
		say("removing %s, a clone an earlier drill left", c)
		if err := d.World.DeleteClone(ctx, c); err != nil {
			return nil, fmt.Errorf("drill refused: removing %s, a clone an earlier drill left: %w", c, err)
		}
		iso.Removed = append(iso.Removed, c.String())
	}
	before, err := d.settled(ctx, primary)
	if err != nil {
		return nil, fmt.Errorf("drill refused: %w", err)
	}

	// On the primary alone: production does not move.
	beats, stopBeats, err := startHeartbeat(ctx, d.World, primary, []snapshot.ClusterState{*primary}, d.Beat, say)
	if err != nil {
		return nil, err
	}

	asked, runErr := d.rehearse(ctx, iso, clone, src, beats, say)

	// Whatever happened: the clone goes, the heartbeat's table goes, and
	// production must be as it was.
	stopBeats()
	cleanup := context.WithoutCancel(ctx)
	rep.Acknowledged = len(beats.acked())
	if asked {
		say("deleting %s", clone)
		if err := d.World.DeleteClone(cleanup, clone); err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("%s not deleted (the next drill removes it): %w", clone, err))
		}
	}
	missing, msg := countAndDrop(cleanup, d.World, d.Desired, beats.acked())
	rep.Missing = missing
	if msg != "" {
		rep.Error = joinErr(rep.Error, msg)
	}
	if after, err := d.fingerprint(cleanup, d.World.Observe(cleanup, d.Desired), primary); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("reading production after the drill: %w", err))
	} else if iso.Changes, iso.StatusOnly = compareFingerprints(before, after); len(iso.Changes) > 0 {
		iso.Production = "changed"
		runErr = errors.Join(runErr, fmt.Errorf("production changed during the drill: %s", strings.Join(iso.Changes, "; ")))
	} else {
		iso.Production = "unchanged"
	}
	rep.Finished = time.Now()
	if runErr != nil {
		rep.Result = "failed"
		rep.Error = joinErr(runErr.Error(), rep.Error)
		return rep, runErr
	}
	rep.Result = "passed"
	return rep, nil
}

// cloneable refuses a standby in a Patroni site, where no operator makes
// a clone: said before anything is looked at when --from names one.
func (d *Isolated) cloneable(name string) error {
	if dc, ok := d.Desired.Cluster(name); ok && dc.Site.Patroni() {
		return &PatroniSiteError{Cluster: name, Site: dc.Site.Name}
	}
	return nil
}

// KindIsolated is the isolated failover drill's kind in reports and
// metrics.
const KindIsolated = "failover-isolated"

// rehearse creates the clone, waits for it to stream, cuts it loose,
// measures it and runs the checks.
//
// asked says whether the clone was asked for (and so is to be deleted):
// not when an object of its name is someone else's.
func (d *Isolated) rehearse(ctx context.Context, iso *Isolation, clone Clone, src *snapshot.ClusterState, beats *heartbeat, say func(string, ...any)) (asked bool, _ error) {
	if err := beats.waitFirst(ctx, 10*time.Second); err != nil {
		return false, err
	}
	say("creating %s: a standby of %s inside site %s, reachable only there", clone, src.Name, clone.Site)
	created := time.Now()
	if err := d.World.CreateClone(ctx, clone, src); err != nil {
		var foreign *ForeignObjectError
		return !errors.As(err, &foreign), fmt.Errorf("creating %s: %w", clone, err)
	}
	return true, d.measure(ctx, iso, clone, src, beats, created, say)
}

// ForeignObjectError: an object of the clone's name exists and is not a
// clone of this topology's drill; the drill leaves it alone.
type ForeignObjectError struct{ Clone, Topology string }

func (e *ForeignObjectError) Error() string {
	return fmt.Sprintf("%s exists and is not a clone of a %s drill (no label %s=%s): left alone; rename it or name another standby with --from", e.Clone, e.Topology, CloneLabel, e.Topology)
}

// measure waits for the clone to stream, cuts it loose, measures it and
// runs the checks.
func (d *Isolated) measure(ctx context.Context, iso *Isolation, clone Clone, src *snapshot.ClusterState, beats *heartbeat, created time.Time, say func(string, ...any)) error {
	// Streaming, and caught up: it replayed a heartbeat acknowledged after
	// it first streamed, so what it holds at the cut is what streaming
	// brought it, not its base backup.
	var mark int64
	err := d.poll(ctx, or(d.StreamTimeout, 10*time.Minute), clone.Name+" streaming from "+src.Name+" and replaying the heartbeat", clone, func(st cloneState) (bool, string) {
		if !st.inRecovery {
			return false, "not a standby (it should not take writes before the cut)"
		}
		if st.receiver != "streaming" {
			return false, "WAL receiver " + or(st.receiver, "not running")
		}
		if mark == 0 {
			if a := beats.acked(); len(a) > 0 {
				mark = a[len(a)-1].id
			}
		}
		return mark > 0 && st.replayed >= mark, fmt.Sprintf("replayed heartbeat %d, waiting for %d", st.replayed, mark)
	})
	if err != nil {
		return err
	}
	iso.StreamingAfter = time.Since(created).Seconds()
	say("%s streams (%.1fs after its creation); cutting it loose", clone.Name, iso.StreamingAfter)

	st, err := d.look(ctx, clone)
	if err != nil {
		return fmt.Errorf("%s before the cut: %w", clone.Name, err)
	}
	iso.ReplayedAtCut = st.replayed
	cut := time.Now()
	ackedAtCut := beats.acked()
	if err := d.World.PromoteClone(ctx, clone); err != nil {
		return fmt.Errorf("cutting %s loose: %w", clone.Name, err)
	}
	if err := d.poll(ctx, or(d.PromoteTimeout, 2*time.Minute), clone.Name+" taking a write after the cut", clone, func(st cloneState) (bool, string) {
		if st.inRecovery {
			return false, "still in recovery"
		}
		return st.wrote, "promoted; " + or(st.writeErr, "no write yet")
	}); err != nil {
		return err
	}
	iso.RTO = time.Since(cut).Seconds()
	if st, err = d.look(ctx, clone); err != nil {
		return fmt.Errorf("%s after the cut: %w", clone.Name, err)
	}
	iso.KeptAfterPromotion = st.replayed
	iso.LostHeartbeats, iso.RPO = lostBefore(ackedAtCut, st.replayed, cut)
	say("%s takes writes %.2fs after the cut; it lacks %d heartbeat(s) acknowledged before it (RPO %.2fs)", clone.Name, iso.RTO, iso.LostHeartbeats, iso.RPO)

	var failed []string
	for _, c := range d.Desired.DrillChecks {
		res := d.check(ctx, clone, c)
		iso.Checks = append(iso.Checks, res)
		if res.Passed {
			say("check %s: passed", c.Name)
			continue
		}
		say("check %s: failed: %s", c.Name, res.Error)
		failed = append(failed, c.Name)
	}
	if len(failed) > 0 {
		return fmt.Errorf("check(s) failed on the promoted clone: %s", strings.Join(failed, ", "))
	}
	return nil
}

// lostBefore counts the heartbeats acknowledged before cut that a clone
// holding ids up to kept lacks, and the span they cover up to the cut.
func lostBefore(acked []beat, kept int64, cut time.Time) (int, float64) {
	lost, oldest := 0, time.Time{}
	for _, b := range acked {
		if b.id > kept && !b.at.After(cut) {
			if lost == 0 {
				oldest = b.at
			}
			lost++
		}
	}
	if lost == 0 {
		return 0, 0
	}
	return lost, cut.Sub(oldest).Seconds()
}

// cloneState is one look at the clone.
type cloneState struct {
	inRecovery bool
	receiver   string
	replayed   int64 // the newest heartbeat it holds
	wrote      bool  // a write went through (only tried once it is primary)
	writeErr   string
}

const cloneStateSQL = "SELECT pg_is_in_recovery(), coalesce((SELECT status FROM pg_stat_wal_receiver), ''), " +
	"coalesce((SELECT max(id) FROM " + Schema + ".heartbeat WHERE id > 0), 0)"

// cloneWriteSQL is the write that proves the promoted clone takes
// writes; only the clone has it (its id is negative, never a beat's).
const cloneWriteSQL = "INSERT INTO " + Schema + ".heartbeat (id) VALUES (-1) ON CONFLICT (id) DO NOTHING"

func (d *Isolated) look(ctx context.Context, c Clone) (cloneState, error) {
	var st cloneState
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sess, err := d.World.OpenClone(ctx, c)
	if err != nil {
		return st, err
	}
	defer func() { _ = sess.Close(context.WithoutCancel(ctx)) }()
	if err := sess.QueryRow(ctx, cloneStateSQL).Scan(&st.inRecovery, &st.receiver, &st.replayed); err != nil {
		return st, err
	}
	if !st.inRecovery {
		if err := sess.Exec(ctx, cloneWriteSQL); err != nil {
			st.writeErr = err.Error()
		} else {
			st.wrote = true
		}
	}
	return st, nil
}

// poll looks at the clone until cond holds, for at most bound.
func (d *Isolated) poll(ctx context.Context, bound time.Duration, what string, c Clone, cond func(cloneState) (bool, string)) error {
	began, detail := time.Now(), "not looked at yet"
	for {
		st, err := d.look(ctx, c)
		if err != nil {
			detail = err.Error()
		} else {
			ok, why := cond(st)
			if ok {
				return nil
			}
			detail = why
		}
		if time.Since(began) > bound {
			return fmt.Errorf("waited %s for %s: %s", bound, what, detail)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(or(d.Poll, 100*time.Millisecond)):
		}
	}
}

// check runs one of the file's checks on the clone.
func (d *Isolated) check(ctx context.Context, c Clone, chk topology.DrillCheck) Check {
	res := Check{Name: chk.Name}
	ctx, cancel := context.WithTimeout(ctx, or(d.CheckTimeout, 30*time.Second))
	defer cancel()
	sess, err := d.World.OpenClone(ctx, c)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer func() { _ = sess.Close(context.WithoutCancel(ctx)) }()
	var ok *bool
	if err := sess.QueryRow(ctx, chk.SQL).Scan(&ok); err != nil {
		res.Error = err.Error()
		return res
	}
	switch {
	case ok == nil:
		res.Error = "returned NULL, not true"
	case !*ok:
		res.Error = "returned false"
	default:
		res.Passed = true
	}
	return res
}

// settled waits until production holds still (every object ready, the
// same fingerprint twice, Steady apart) and returns that fingerprint: the
// drill compares production before and after, and a topology still
// settling from an earlier change (a replica reconnecting, its operator
// updating a status) would be taken for the drill's doing.
func (d *Isolated) settled(ctx context.Context, primary *snapshot.ClusterState) (map[string]string, error) {
	bound, steady := or(d.Settle, 2*time.Minute), or(d.Steady, time.Second)
	began := time.Now()
	var last map[string]string
	why := "not looked at yet"
	for {
		snap := d.World.Observe(ctx, d.Desired)
		fp, err := d.fingerprint(ctx, snap, primary)
		busy := notReady(snap)
		switch {
		case err != nil:
			why, last = err.Error(), nil
		case busy != "":
			why, last = busy, nil
		case last != nil:
			changed, statusOnly := compareFingerprints(last, fp)
			if len(changed)+len(statusOnly) == 0 {
				return fp, nil
			}
			why = "production changed within " + steady.String() + ": " + strings.Join(append(changed, statusOnly...), "; ")
			last = fp
		default:
			last = fp
		}
		if time.Since(began) > bound {
			return nil, fmt.Errorf("production did not hold still for %s within %s (%s); a drill compares production before and after", steady, bound, why)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(steady):
		}
	}
}

// fingerprint is what the drill must leave as it found it: the resource
// version of each of the topology's objects, and who streams from the
// primary and how.
func (d *Isolated) fingerprint(ctx context.Context, snap *snapshot.Snapshot, primary *snapshot.ClusterState) (map[string]string, error) {
	fp := map[string]string{}
	for _, c := range snap.Clusters {
		if c.Object != nil && c.Object.ResourceVersion != "" {
			fp["object "+c.Site+"/"+c.Namespace+"/"+c.Name] = objectPrint(c.Object)
		}
	}
	sess, err := d.World.Open(ctx, primary)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sess.Close(context.WithoutCancel(ctx)) }()
	var rows string
	if err := sess.QueryRow(ctx, replicationSQL).Scan(&rows); err != nil {
		return nil, fmt.Errorf("%s: pg_stat_replication: %w", primary.Name, err)
	}
	for _, r := range strings.Split(rows, "\n") {
		if name, state, ok := strings.Cut(r, "\t"); ok {
			fp["replication on "+primary.Name+" to "+name] = state
		}
	}
	slotRows := ""
	if err := sess.QueryRow(ctx, slotsSQL).Scan(&slotRows); err != nil {
		return nil, fmt.Errorf("%s: pg_replication_slots: %w", primary.Name, err)
	}
	for _, s := range strings.Split(slotRows, "\n") {
		if s != "" {
			fp["slot on "+primary.Name+" "+s] = "present"
		}
	}
	return fp, nil
}

// objectPrint is what the drill must leave unchanged of an object: the
// fields pgtopo owns and its marks, by digest, with the resource version
// after it. The resource version alone also moves when the operator
// updates its status (a member restarting somewhere, for a reason of its
// own), which a drill must not be failed for; compareFingerprints tells
// the two apart.
func objectPrint(o *snapshot.Object) string {
	b, _ := json.Marshal(struct {
		Spec  snapshot.Spec
		Marks snapshot.Marks
	}{o.Spec, o.Marks})
	sum := sha256.Sum256(b)
	return fmt.Sprintf("spec and marks %x%s%s", sum[:6], rvSep, o.ResourceVersion)
}

// rvSep parts an object's print from its resource version.
const rvSep = " at resourceVersion "

// replicationSQL lists the primary's walsenders by application name with
// their state, one per line.
const replicationSQL = "SELECT coalesce(string_agg(application_name || E'\\t' || state || ' ' || sync_state, E'\\n' ORDER BY application_name), '') FROM pg_stat_replication"

// slotsSQL lists the primary's replication slots.
const slotsSQL = "SELECT coalesce(string_agg(slot_name || ' (' || slot_type || ')', E'\\n' ORDER BY slot_name), '') FROM pg_replication_slots"

// compareFingerprints says what differs, in order; an object whose
// resource version alone moved (its operator's status) is in statusOnly.
func compareFingerprints(before, after map[string]string) (changed, statusOnly []string) {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(before)) {
		v, ok := after[k]
		switch {
		case !ok:
			out = append(out, k+": gone (was "+before[k]+")")
		case v == before[k]:
		case sameBeforeRV(v, before[k]):
			statusOnly = append(statusOnly, k+": resourceVersion "+rvOf(before[k])+" → "+rvOf(v)+", what pgtopo owns and its marks unchanged (its operator's status)")
		default:
			out = append(out, k+": "+before[k]+" → "+v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if _, ok := before[k]; !ok {
			out = append(out, k+": new ("+after[k]+")")
		}
	}
	return out, statusOnly
}

func sameBeforeRV(a, b string) bool {
	ia, ib := strings.Index(a, rvSep), strings.Index(b, rvSep)
	return ia >= 0 && ib >= 0 && a[:ia] == b[:ib]
}

func rvOf(v string) string {
	_, rv, _ := strings.Cut(v, rvSep)
	return rv
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
