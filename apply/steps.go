package apply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// stepRun executes one step; it implements plan.Executor. Every executor
// reads its step's payload and live state, never the topology.
type stepRun struct {
	r        *Runner
	step     plan.Step
	n, total int
	// last is the snapshot that satisfied the latest wait (or the one the
	// preconditions were checked on): fresh enough to act on without
	// observing again.
	last *snapshot.Snapshot
	// outage, while set, bounds every wait by the switchover's
	// write-outage budget and ends waits that stall.
	outage *outage
}

var _ plan.Executor = (*stepRun)(nil)

func (x *stepRun) emit(e Event) {
	e.Step, e.Steps, e.Action = x.n, x.total, x.step.Action
	if e.Subject == "" {
		e.Subject = x.step.Subject.Cluster
	}
	x.r.emit(e)
}

func (x *stepRun) say(phase EventType, format string, args ...any) {
	x.emit(Event{Type: phase, Message: fmt.Sprintf(format, args...)})
}

// cluster is a cluster's state in the latest snapshot.
func (x *stepRun) cluster(name string) *snapshot.ClusterState {
	if c, ok := x.last.Cluster(name); ok {
		return c
	}
	return &snapshot.ClusterState{Name: name}
}

func (x *stepRun) writer(site string) (SiteWriter, error) {
	w, err := x.r.Sites(site)
	if err != nil {
		return nil, fmt.Errorf("site %s: %w", site, err)
	}
	return w, nil
}

// writeSpec writes a cluster's owned spec.
func (x *stepRun) writeSpec(ctx context.Context, s plan.Subject, spec snapshot.Spec) error {
	w, err := x.writer(s.Site)
	if err != nil {
		return err
	}
	if err := w.WriteSpec(ctx, s.Namespace, s.Cluster, spec); err != nil {
		return fmt.Errorf("write %s/%s: %w", s.Namespace, s.Cluster, err)
	}
	x.say(EventWrite, "wrote %s (%s/%s)", s.Cluster, s.Site, s.Namespace)
	return nil
}

// writeMarks writes a cluster's marks.
func (x *stepRun) writeMarks(ctx context.Context, s plan.Subject, m snapshot.Marks) error {
	w, err := x.writer(s.Site)
	if err != nil {
		return err
	}
	if err := w.WriteMarks(ctx, s.Namespace, s.Cluster, m); err != nil {
		return fmt.Errorf("mark %s/%s: %w", s.Namespace, s.Cluster, err)
	}
	return nil
}

// marksOf is a cluster's marks as last observed.
func (x *stepRun) marksOf(name string) snapshot.Marks {
	if c := x.cluster(name); c.Exists && c.Object != nil {
		return c.Object.Marks
	}
	return snapshot.Marks{}
}

// Lock takes the step's Leases (idempotent: a run holding them already
// takes nothing).
func (x *stepRun) Lock(ctx context.Context, _ plan.Subject, p *plan.Lock) error {
	if len(x.r.held) > 0 {
		return nil
	}
	if h := x.r.Held; h != nil {
		if h.lease != p.Lease {
			return fmt.Errorf("lock: this run holds Lease %s, and the plan's lock is %s", h.lease, p.Lease)
		}
		return h.locks.err()
	}
	held, err := x.r.acquire(ctx, p, x)
	if err != nil {
		return err
	}
	x.r.held = held
	return nil
}

// EnsurePrimary writes the primary's spec and waits until it is ready and
// writable.
func (x *stepRun) EnsurePrimary(ctx context.Context, at plan.Subject, p *plan.EnsurePrimary) error {
	if err := x.writeSpec(ctx, at, p.Spec); err != nil {
		return err
	}
	name := at.Cluster
	if p.Existing {
		return x.wait(ctx, name+" writable", []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
			cs, _ := snap.Cluster(name)
			return cs.Exists && cs.Writable(), statusWords(cs)
		})
	}
	return x.wait(ctx, name+" Running and writable", []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		return cs.Exists && cs.Object.Ready && cs.Writable(), statusWords(cs)
	})
}

// EnsureSlot makes the primary keep a slot for a cluster and waits until
// it does: a Patroni primary's permanent slot, which its leader creates
// with WAL reserved from then on; or a row in an operator primary's
// catalogue, which its operator reads to keep the cluster's slot.
func (x *stepRun) EnsureSlot(ctx context.Context, at plan.Subject, e *plan.EnsureSlot) error {
	switch e.Via {
	case plan.SlotViaPatroni:
		w, err := x.writer(at.Site)
		if err != nil {
			return err
		}
		if err := w.EnsurePermanentSlot(ctx, at.Namespace, e.Primary, e.Slot); err != nil {
			return fmt.Errorf("slot %s on %s: %w", e.Slot, e.Primary, err)
		}
		x.say(EventWrite, "permanent slot %s on %s for %s", e.Slot, e.Primary, e.For)
		return x.wait(ctx, fmt.Sprintf("slot %s on %s reserving WAL", e.Slot, e.Primary), []string{e.Primary}, func(snap *snapshot.Snapshot) (bool, string) {
			c, _ := snap.Cluster(e.Primary)
			if c.PG == nil {
				return false, statusWords(c)
			}
			for _, sl := range c.PG.Slots {
				if sl.Name == e.Slot {
					return sl.RestartLSN != 0, fmt.Sprintf("slot %s restart_lsn %s", sl.Name, sl.RestartLSN)
				}
			}
			return false, "no slot " + e.Slot + " yet"
		})
	case plan.SlotViaCatalogue:
		cat, err := x.catalogue()
		if err != nil {
			return err
		}
		err = x.session(ctx, x.cluster(e.Primary), func(ss Session) error {
			return cat.Register(ctx, ss.Exec, e.For, e.Host, e.Port, e.Slot)
		})
		if err != nil {
			return err
		}
		x.say(EventWrite, "%s listed in %s's multi_cluster_info (slot %s)", e.For, e.Primary, e.Slot)
		return x.wait(ctx, fmt.Sprintf("%s in %s's multi_cluster_info", e.For, e.Primary), []string{e.Primary}, func(snap *snapshot.Snapshot) (bool, string) {
			c, _ := snap.Cluster(e.Primary)
			if c.PG == nil {
				return false, statusWords(c)
			}
			for _, r := range c.PG.MultiCluster {
				if r.Cluster == e.For {
					return true, "row present"
				}
			}
			return false, "no row yet"
		})
	}
	return fmt.Errorf("ensure-slot: unknown way %q", e.Via)
}

// catalogue is the operator's standby list, for a step that writes it.
func (x *stepRun) catalogue() (Catalogue, error) {
	if x.r.Catalogue == nil {
		return nil, fmt.Errorf("the plan writes an operator's catalogue of standbys, and this run was given none (the topology's flavor keeps none)")
	}
	return x.r.Catalogue, nil
}

// Checkpoint runs CHECKPOINT on the subject.
func (x *stepRun) Checkpoint(ctx context.Context, at plan.Subject, _ *plan.Checkpoint) error {
	return x.sql(ctx, x.cluster(at.Cluster), "CHECKPOINT")
}

// sql runs statements on a cluster as its admin user, in one session.
func (x *stepRun) sql(ctx context.Context, c *snapshot.ClusterState, stmt string, args ...any) error {
	return x.session(ctx, c, func(s Session) error { return s.Exec(ctx, stmt, args...) })
}

// session runs fn on one session to a cluster.
func (x *stepRun) session(ctx context.Context, c *snapshot.ClusterState, fn func(Session) error) error {
	s, err := x.r.Database.Open(ctx, c)
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	defer func() { _ = s.Close(context.Background()) }()
	if err := fn(s); err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	return nil
}

// BootstrapSecret copies the primary's admin credentials into the standby's
// namespace as a basic-auth Secret. The values pass from one API server to
// the other and are never printed.
func (x *stepRun) BootstrapSecret(ctx context.Context, at plan.Subject, p *plan.BootstrapSecret) error {
	return x.copySecret(ctx, at, plan.CredentialsCopy(*p))
}

// RefreshCredentials copies the primary's admin username and password into
// the standby's own credentials Secret, leaving the rest of that Secret
// (its type, labels, owner: the operator's) alone, then waits until the
// standby's database takes them. The values are never printed.
func (x *stepRun) RefreshCredentials(ctx context.Context, at plan.Subject, p *plan.RefreshCredentials) error {
	c := plan.CredentialsCopy(*p)
	user, password, err := x.sourceCredentials(ctx, c)
	if err != nil {
		return err
	}
	to, err := x.writer(at.Site)
	if err != nil {
		return err
	}
	ns := at.Namespace
	userKey, passwordKey := x.r.Keys.CredentialKeys()
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: c.Name, Namespace: ns},
		Data: map[string][]byte{userKey: user, passwordKey: password}}
	if err := to.ApplySecret(ctx, sec); err != nil {
		return fmt.Errorf("secret %s/%s: %w", ns, c.Name, err)
	}
	x.say(EventSecret, "secret %s/%s in site %s: username and password of %s", ns, c.Name, at.Site, c.FromName)
	return x.wait(ctx, at.Cluster+" authenticating with its refreshed credentials", []string{at.Cluster}, func(snap *snapshot.Snapshot) (bool, string) {
		sb, ok := snap.Cluster(at.Cluster)
		if !ok || sb.PG == nil {
			return false, statusWords(sb)
		}
		return true, "database answers"
	})
}

// sourceCredentials reads the login of the credentials Secret a copy is
// made from; one without a username or password is copied nowhere.
func (x *stepRun) sourceCredentials(ctx context.Context, c plan.CredentialsCopy) (user, password []byte, err error) {
	if x.r.Keys == nil {
		return nil, nil, fmt.Errorf("credentials %s/%s: this run was given no credentials keys to read them by", c.From.Namespace, c.FromName)
	}
	from, err := x.writer(c.From.Site)
	if err != nil {
		return nil, nil, err
	}
	src, err := from.GetSecret(ctx, c.From.Namespace, c.FromName)
	if err != nil {
		return nil, nil, fmt.Errorf("credentials %s/%s: %w", c.From.Namespace, c.FromName, err)
	}
	userKey, passwordKey := x.r.Keys.CredentialKeys()
	user, password = src.Data[userKey], src.Data[passwordKey]
	if len(user) == 0 || len(password) == 0 {
		return nil, nil, fmt.Errorf("credentials %s/%s: no %s or %s", c.From.Namespace, c.FromName, userKey, passwordKey)
	}
	return user, password, nil
}

// copySecret copies a cluster's admin credentials into subject's namespace
// as a basic-auth Secret.
func (x *stepRun) copySecret(ctx context.Context, subject plan.Subject, c plan.CredentialsCopy) error {
	user, password, err := x.sourceCredentials(ctx, c)
	if err != nil {
		return err
	}
	to, err := x.writer(subject.Site)
	if err != nil {
		return err
	}
	ns := subject.Namespace
	if cur, err := to.GetSecret(ctx, ns, c.Name); err == nil && cur.Type != corev1.SecretTypeBasicAuth {
		// The type of a Secret cannot change in place.
		if err := to.DeleteSecret(ctx, ns, c.Name); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replace secret %s/%s: %w", ns, c.Name, err)
		}
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: c.Name, Namespace: ns, Labels: map[string]string{snapshot.TopologyLabel: c.Topology}},
		Type:       corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{
			corev1.BasicAuthUsernameKey: user,
			corev1.BasicAuthPasswordKey: password,
		},
	}
	if err := to.ApplySecret(ctx, sec); err != nil {
		return fmt.Errorf("secret %s/%s: %w", ns, c.Name, err)
	}
	x.say(EventSecret, "secret %s/%s in site %s: copy of %s", ns, c.Name, subject.Site, c.FromName)
	return nil
}

// CreateStandby writes the standby's spec, its peer filled in from the
// primary's endpoint when the plan could not know it, and waits until it
// streams from the primary with the same system identifier.
func (x *stepRun) CreateStandby(ctx context.Context, at plan.Subject, p *plan.CreateStandby) error {
	spec, err := x.resolvePeer(at, plan.StandbySpec(*p))
	if err != nil {
		return err
	}
	if err := x.writeSpec(ctx, at, spec); err != nil {
		return err
	}
	return x.waitStreaming(ctx, at.Cluster, p.Follows)
}

// resolvePeer is a standby's spec with a peer the plan left to be known.
func (x *stepRun) resolvePeer(at plan.Subject, s plan.StandbySpec) (snapshot.Spec, error) {
	spec := s.Spec
	if s.PeerOf == "" {
		return spec, nil
	}
	ep := x.cluster(s.PeerOf).Endpoint
	if ep == nil {
		return spec, fmt.Errorf("%s has no endpoint yet", s.PeerOf)
	}
	x.say(EventWrite, "peer of %s: %s, the endpoint of %s", at.Cluster, ep, s.PeerOf)
	return spec.WithPeer(*ep), nil
}

// waitStreaming waits until a standby streams from the primary with the
// same system identifier.
func (x *stepRun) waitStreaming(ctx context.Context, standby, primary string) error {
	return x.waitStreamingWith(ctx, standby, primary, nil)
}

// waitStreamingWith is waitStreaming that shows each snapshot in which the
// standby does not stream yet to onPoll (when not nil).
func (x *stepRun) waitStreamingWith(ctx context.Context, standby, primary string, onPoll func(*snapshot.Snapshot)) error {
	streams := func(snap *snapshot.Snapshot) (bool, string) {
		sb, _ := snap.Cluster(standby)
		pr, _ := snap.Cluster(primary)
		if sb.PG == nil || pr.PG == nil {
			return false, statusWords(sb)
		}
		if sb.PG.SystemID != pr.PG.SystemID {
			return false, fmt.Sprintf("system identifier %s, primary's %s", sb.PG.SystemID, pr.PG.SystemID)
		}
		if !sb.StreamsFrom(pr.Endpoint) {
			return false, "wal receiver " + sb.Receiver()
		}
		// A receiver says "streaming" from its start, before its sender took
		// it: START_REPLICATION can still fail (a slot not created yet).
		// The sender's side tells: the slot it asked for is in use.
		if slot := sb.PG.WalReceiver.Slot; slot != "" {
			if sl, ok := slotNamed(pr.PG.Slots, slot); !ok || !sl.Active {
				return false, fmt.Sprintf("wal receiver started, but %s has not taken it: slot %s is not in use there (missing, or the standby asks for WAL %s does not have)", primary, slot, primary)
			}
		}
		// Following a new primary, the receiver first streams the tail of
		// the old timeline, then restarts on the new one: only that is the
		// standby following it.
		if tli := sb.PG.WalReceiver.Timeline; tli != 0 && tli < pr.PG.Timeline {
			return false, fmt.Sprintf("wal receiver streams timeline %d, %s is on %d", tli, primary, pr.PG.Timeline)
		}
		return true, fmt.Sprintf("replay %s, %s behind", sb.PG.ReplayLSN, snapshot.HumanBytes(snapshot.Lag(pr.PG, sb.PG)))
	}
	return x.wait(ctx, fmt.Sprintf("%s streaming from %s", standby, primary), []string{standby, primary}, func(snap *snapshot.Snapshot) (bool, string) {
		ok, detail := streams(snap)
		if !ok && onPoll != nil {
			onPoll(snap)
		}
		return ok, detail
	})
}

func slotNamed(slots []snapshot.Slot, name string) (snapshot.Slot, bool) {
	i := slices.IndexFunc(slots, func(s snapshot.Slot) bool { return s.Name == name })
	if i < 0 {
		return snapshot.Slot{}, false
	}
	return slots[i], true
}

// Repoint writes the standby's spec with its new peer and waits until it
// streams from the primary, waking its WAL receiver as a switchover does.
func (x *stepRun) Repoint(ctx context.Context, at plan.Subject, p *plan.Repoint) error {
	if primary := x.cluster(p.Follows); !primary.Writable() {
		return fmt.Errorf("the primary %s is not writable", p.Follows)
	}
	if err := x.writeSpec(ctx, at, p.Spec); err != nil {
		return err
	}
	return x.followNewPrimary(ctx, at.Cluster, p.Follows)
}

// Update writes the subject's spec and waits until the operator has it
// ready with the spec's instances.
func (x *stepRun) Update(ctx context.Context, at plan.Subject, p *plan.Update) error {
	if err := x.writeSpec(ctx, at, p.Spec); err != nil {
		return err
	}
	name, want := at.Cluster, p.Spec.Instances
	if err := x.wait(ctx, name+" Running", []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		return cs.Exists && cs.Object.Ready && cs.Object.Spec.Instances == want, statusWords(cs)
	}); err != nil {
		return err
	}
	if p.Restart == nil {
		return nil
	}
	return x.Restart(ctx, at, p.Restart)
}

// Restart has the cluster's servers restarted for the settings its step
// names and waits until none is pending and, for a standby, it streams
// from the primary again: only then is the next cluster's restart safe.
func (x *stepRun) Restart(ctx context.Context, at plan.Subject, r *plan.Restart) error {
	w, err := x.writer(at.Site)
	if err != nil {
		return err
	}
	name := at.Cluster
	params := strings.Join(r.Parameters, ", ")
	// The new values reach the server's configuration first (the
	// operator's or Patroni's next sync); only then is a restart pending.
	if err := x.wait(ctx, name+" seeing "+params+" pending a restart, or in effect", []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		if cs.PG == nil {
			return false, statusWords(cs)
		}
		return len(cs.PG.PendingRestart) > 0 || x.inEffect(ctx, cs, r), "pending: " + cmp.Or(strings.Join(cs.PG.PendingRestart, ", "), "-")
	}); err != nil {
		return err
	}
	// A standby restarts only once it has replayed what its primary wrote
	// until now: at startup it checks its settings against the primary's
	// as its last replayed WAL gives them, and a primary restarted just
	// before with a lowered max_connections has them in a record the
	// standby may not have yet, whose absence pauses its replay.
	if primary := r.Follows; primary != "" {
		var upTo snapshot.LSN
		if err := x.wait(ctx, name+" replaying what "+primary+" wrote before "+name+"'s restart", []string{name, primary}, func(snap *snapshot.Snapshot) (bool, string) {
			cs, _ := snap.Cluster(name)
			pr, _ := snap.Cluster(primary)
			if upTo == 0 && pr.PG != nil {
				upTo = pr.PG.EndOfWAL()
			}
			if upTo == 0 || cs.PG == nil {
				return false, statusWords(cs)
			}
			return cs.PG.ReplayLSN >= upTo, fmt.Sprintf("replayed %s of %s", cs.PG.ReplayLSN, upTo)
		}); err != nil {
			return fmt.Errorf("restart %s: %w", name, err)
		}
	}
	if err := w.RestartPending(ctx, at.Namespace, name); err != nil {
		return fmt.Errorf("restart %s: %w", name, err)
	}
	if r.Primary {
		x.say(EventRestart, "restarting the primary %s for %s: writes are refused until it is back", name, params)
	}
	primary := r.Follows
	on := []string{name}
	if primary != "" {
		on = append(on, primary)
	}
	return x.wait(ctx, name+" restarted with "+params+" in effect", on, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		if cs.PG == nil {
			return false, statusWords(cs)
		}
		if len(cs.PG.PendingRestart) > 0 {
			return false, "still pending a restart: " + strings.Join(cs.PG.PendingRestart, ", ")
		}
		// Streaming first: it is in the snapshot, while whether the value
		// is in effect takes a session of its own.
		if cs.PG.InRecovery && primary != "" {
			pr, _ := snap.Cluster(primary)
			if !cs.StreamsFrom(pr.Endpoint) {
				return false, "restarted; wal receiver " + cs.Receiver()
			}
		}
		if !x.inEffect(ctx, cs, r) {
			return false, "not in effect yet"
		}
		return true, "restarted"
	})
}

// inEffect reports whether the server runs with the values the restart
// brings into effect.
func (x *stepRun) inEffect(ctx context.Context, cs *snapshot.ClusterState, r *plan.Restart) bool {
	if len(r.Values) == 0 {
		return true // a restart for what is pending, whatever it is
	}
	ok := true
	err := x.session(ctx, cs, func(sess Session) error {
		for _, p := range r.Parameters {
			want, set := r.Values[p]
			if !set {
				continue
			}
			var same bool
			if err := sess.QueryRow(ctx, "SELECT current_setting($1) = $2 OR setting = $2 FROM pg_settings WHERE name = $1", p, want).Scan(&same); err != nil {
				return err
			}
			ok = ok && same
		}
		return nil
	})
	return err == nil && ok
}

// FillExternalIP completes the standby's row in the primary's
// multi_cluster_info.
func (x *stepRun) FillExternalIP(ctx context.Context, _ plan.Subject, e *plan.FillExternalIP) error {
	cat, err := x.catalogue()
	if err != nil {
		return err
	}
	return x.session(ctx, x.cluster(e.Primary), func(ss Session) error {
		return cat.FillExternalIP(ctx, ss.Exec, e.Cluster, e.Host)
	})
}

// Record writes the step's marks, keeping a journal if one is there.
func (x *stepRun) Record(ctx context.Context, at plan.Subject, p *plan.Record) error {
	c := x.cluster(at.Cluster)
	if !c.Exists {
		return fmt.Errorf("%s has no object to record on", c.Name)
	}
	// Record owns the digest and revision; the other marks stay.
	m := x.marksOf(c.Name)
	m.Digest, m.Revision = p.Marks.Digest, p.Marks.Revision
	return x.writeMarks(ctx, at, m)
}

// wait re-observes until cond holds, reporting every few seconds. A wait
// names the clusters cond looks at (on): each poll observes those alone,
// over the step's last full look; nil observes everything each time.
//
// It gives up once the site of a cluster it waits on has not answered for
// SiteAwayBound: what it waits for cannot be seen to come, and the run
// holds the topology's Lease meanwhile, which an automatic failover away
// from that very site needs (the soak found a loop's wait for a primary's
// readiness holding it for minutes after the primary's site was cut off).
// The switchover's own waits (the gate, the fenced stretch) have their
// bounds and back-outs and do not come through here.
func (x *stepRun) wait(ctx context.Context, what string, on []string, cond func(*snapshot.Snapshot) (bool, string)) error {
	away := map[string]time.Time{}
	return x.waitUntil(ctx, x.r.pollEvery(), what, on, func(snap *snapshot.Snapshot) (bool, string, error) {
		ok, detail := cond(snap)
		if ok {
			return true, detail, nil
		}
		return false, detail, x.r.siteAway(snap, on, away)
	})
}

// errWaitedOut is a wait that ran to its bound with its condition unmet,
// as opposed to one stopped from outside (a lost lock, a site away, a
// shutdown): only the first says something about what was waited for.
var errWaitedOut = errors.New("waited")

// DefaultSiteAwayBound is how long a step's wait goes on while a site it
// waits on does not answer: longer than a blip of the network, shorter
// than the shortest automatic failover's after plus its margin.
const DefaultSiteAwayBound = 15 * time.Second

// siteAway returns an error once the site of one of the clusters named
// has not answered for SiteAwayBound; away keeps since when each has not.
func (r *Runner) siteAway(snap *snapshot.Snapshot, clusters []string, away map[string]time.Time) error {
	bound := cmp.Or(r.SiteAwayBound, DefaultSiteAwayBound)
	for _, name := range clusters {
		cs, ok := snap.Cluster(name)
		if !ok {
			continue
		}
		site, ok := snap.Site(cs.Site)
		if !ok || site.Reachable {
			delete(away, cs.Site)
			continue
		}
		since, seen := away[cs.Site]
		if !seen {
			away[cs.Site] = time.Now()
			continue
		}
		if time.Since(since) >= bound {
			return fmt.Errorf("site %s has not answered for %s (%s): this run stops here and frees the topology's Lease; the next run looks again",
				cs.Site, bound, cmp.Or(site.Error, "unreachable"))
		}
	}
	return nil
}

func (x *stepRun) waitEvery(ctx context.Context, every time.Duration, what string, on []string, cond func(*snapshot.Snapshot) (bool, string)) error {
	return x.waitUntil(ctx, every, what, on, func(snap *snapshot.Snapshot) (bool, string, error) {
		ok, detail := cond(snap)
		return ok, detail, nil
	})
}

// poll is one look for a wait: the named clusters over the last full look
// when the observer can look at them alone, else a full look.
func (x *stepRun) poll(ctx context.Context, on []string) *snapshot.Snapshot {
	few, ok := x.r.Observer.(ClusterObserver)
	if len(on) == 0 || !ok || x.r.FullPolls {
		return x.r.Observer.Observe(ctx)
	}
	if x.last == nil {
		x.last = x.r.Observer.Observe(ctx)
		return x.last
	}
	return x.last.With(few.ObserveClusters(ctx, on))
}

// waitUntil is waitEvery for a condition that can also tell that what it
// waits for will never come: its error ends the wait at once.
func (x *stepRun) waitUntil(ctx context.Context, every time.Duration, what string, on []string, cond func(*snapshot.Snapshot) (bool, string, error)) error {
	timeout := x.r.StepTimeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	began := time.Now()
	var lastReport time.Time
	lastDetail, changed := "", began
	for {
		polled := time.Now()
		snap := x.poll(ctx, on)
		ok, detail, err := cond(snap)
		if err != nil {
			x.last = snap
			return err
		}
		if detail != lastDetail {
			lastDetail, changed = detail, time.Now()
		}
		if ok {
			x.last = snap
			x.emit(Event{Type: EventReached, Message: fmt.Sprintf("%s after %.1fs (%s)", what, time.Since(began).Seconds(), detail), Waited: time.Since(began).Seconds()})
			return nil
		}
		if time.Since(lastReport) > 2*time.Second {
			x.emit(Event{Type: EventWaiting, Message: fmt.Sprintf("waiting for %s: %s (%.0fs)", what, detail, time.Since(began).Seconds()), Waited: time.Since(began).Seconds()})
			lastReport = time.Now()
		}
		if time.Since(began) > timeout {
			return fmt.Errorf("%w %s for %s: %s", errWaitedOut, timeout, what, detail)
		}
		// A shutdown stops a wait at once, but not while writes are
		// refused: that stretch ends, bounded by the budget, with writes
		// back (promoted or backed out) and the journal resumable.
		if x.outage == nil && x.r.draining() {
			return fmt.Errorf("%w (while waiting for %s: %s)", ErrDrained, what, detail)
		}
		// A run that lost its lock stops waiting: another run (an
		// agent's failover, which takes the Lease of the sites it
		// reaches) may be changing the topology. While writes are
		// refused the wait ends as above, by the budget.
		if x.outage == nil {
			if err := x.r.lockLost(); err != nil {
				return fmt.Errorf("%w (while waiting for %s: %s)", err, what, detail)
			}
		}
		if o := x.outage; o != nil {
			if time.Since(o.began) > o.limit {
				return &errOutage{what: what, detail: detail, after: o.limit}
			}
			if time.Since(changed) > o.stall {
				return &errOutage{what: what, detail: detail, stalled: true, after: time.Since(changed)}
			}
		}
		// Polls start every interval, not an interval after the last
		// ended, but a slow look still leaves the servers a pause.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(max(every-time.Since(polled), every/4)):
		}
	}
}

func (r *Runner) pollEvery() time.Duration {
	if r.PollEvery > 0 {
		return r.PollEvery
	}
	return 300 * time.Millisecond
}

func (r *Runner) restoreSettle() time.Duration {
	if r.RestoreSettle > 0 {
		return r.RestoreSettle
	}
	return 5 * time.Second
}

// pollSwitchover is the poll interval of a switchover's waits: writes are
// refused while it waits, so it polls more often than the others.
func (r *Runner) pollSwitchover() time.Duration {
	if r.PollSwitchover > 0 {
		return r.PollSwitchover
	}
	return 40 * time.Millisecond
}

func statusWords(c *snapshot.ClusterState) string {
	switch {
	case c == nil || !c.Exists:
		return "no CR yet"
	case c.PG == nil:
		return fmt.Sprintf("status %q, database: %s", c.Object.Status, cmp.Or(c.PGError, "-"))
	case c.PG.InRecovery:
		return fmt.Sprintf("status %q, in recovery", c.Object.Status)
	}
	return fmt.Sprintf("status %q, writable, timeline %d", c.Object.Status, c.PG.Timeline)
}
