package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/pgtopo/pgtopo/snapshot"
)

// world is a fake of every site at once, for unit tests of the executors'
// logic: a snapshot that writes change the way the operator and Patroni
// would (react), and a log of every write and statement in order. The
// executors against the real operator stand-in, Patroni and PostgreSQL are
// e2e's.
type world struct {
	mu   sync.Mutex
	snap snapshot.Snapshot
	log  []string
	// react changes the world after a write; nil leaves it as written.
	react func(w *world, what string, cluster string)
	// fail makes the named operation fail ("spec orders-west", "sql CHECKPOINT", ...).
	fail map[string]error
	// endOfWAL is what the fence's query returns per cluster.
	endOfWAL map[string]snapshot.LSN
	// history is each server's timeline history file, by "cluster/timeline".
	history map[string]string
	secrets map[string]*corev1.Secret
	leases  map[string]*coordinationv1.Lease
	// observed counts snapshots taken; onObserve, when set, changes the
	// world before each (an operator acting in its own time).
	observed  int
	onObserve func(w *world)
	// keepOrphans: a deleted orphan's object stays (an operator that does
	// not act).
	keepOrphans bool
	// settings are the servers' settings in effect, by "cluster/name".
	settings map[string]string
	// walInspect is the schema of pg_walinspect ("" when not created);
	// shutdownEnd the end of the old primary's shutdown checkpoint, which
	// pg_walinspect finds at a target that replayed up to it.
	walInspect  string
	shutdownEnd snapshot.LSN
}

func newWorld(clusters ...snapshot.ClusterState) *world {
	w := &world{fail: map[string]error{}, endOfWAL: map[string]snapshot.LSN{}, history: map[string]string{}, secrets: map[string]*corev1.Secret{}, leases: map[string]*coordinationv1.Lease{}}
	sites := map[string]bool{}
	for _, c := range clusters {
		if !sites[c.Site] {
			sites[c.Site] = true
			w.snap.Sites = append(w.snap.Sites, snapshot.SiteState{Name: c.Site, Reachable: true})
		}
	}
	w.snap.Clusters = clusters
	return w
}

func (w *world) record(format string, args ...any) {
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

func (w *world) cluster(name string) *snapshot.ClusterState {
	c, ok := w.snap.Cluster(name)
	if !ok {
		panic("no cluster " + name)
	}
	return c
}

// Observe returns a deep copy, so executors cannot change the world but by
// writing.
func (w *world) Observe(context.Context) *snapshot.Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.observed++
	if w.onObserve != nil {
		w.onObserve(w)
	}
	b, _ := json.Marshal(w.snap)
	var s snapshot.Snapshot
	_ = json.Unmarshal(b, &s)
	return &s
}

func (w *world) writes() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]string(nil), w.log...)
	// A journal phase is written on both ends at once: the two writes of
	// one phase, next to each other, are listed by cluster name.
	sameWrite := func(a, b string) bool {
		fa, fb := strings.Fields(a), strings.Fields(b)
		return len(fa) > 2 && len(fb) > 2 && fa[0] == "marks" && fb[0] == "marks" && slices.Equal(fa[2:], fb[2:])
	}
	for i := 0; i+1 < len(out); i++ {
		if sameWrite(out[i], out[i+1]) && out[i] > out[i+1] {
			out[i], out[i+1] = out[i+1], out[i]
		}
	}
	return out
}

// Sites opens every site of the world.
func (w *world) Sites(site string) (SiteWriter, error) {
	if err := w.fail["site "+site]; err != nil {
		return nil, err
	}
	return &fakeSite{w: w, site: site}, nil
}

type fakeSite struct {
	w    *world
	site string
}

func (s *fakeSite) WriteSpec(_ context.Context, ns, name string, spec snapshot.Spec) error {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.fail["spec "+name]; err != nil {
		return err
	}
	b, _ := json.Marshal(spec)
	w.record("spec %s %s", name, b)
	c, ok := w.snap.Cluster(name)
	if !ok {
		w.snap.Clusters = append(w.snap.Clusters, snapshot.ClusterState{Name: name, Site: s.site, Namespace: ns})
		c = &w.snap.Clusters[len(w.snap.Clusters)-1]
	}
	if !c.Exists {
		c.Exists, c.Object = true, &snapshot.Object{}
	}
	c.Object.Spec = spec
	if w.react != nil {
		w.react(w, "spec", name)
	}
	return nil
}

func (s *fakeSite) EnsurePermanentSlot(_ context.Context, _, name, slot string) error {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.fail["slot "+name]; err != nil {
		return err
	}
	w.record("slot %s %s", name, slot)
	c := w.cluster(name)
	if !slices.Contains(c.Object.PermanentSlots, slot) {
		c.Object.PermanentSlots = append(c.Object.PermanentSlots, slot)
	}
	if w.react != nil {
		w.react(w, "slot", name)
	}
	return nil
}

func (s *fakeSite) DropPermanentSlot(_ context.Context, _, name, slot string) error {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	w.record("unslot %s %s", name, slot)
	c := w.cluster(name)
	c.Object.PermanentSlots = slices.DeleteFunc(c.Object.PermanentSlots, func(x string) bool { return x == slot })
	return nil
}

func (s *fakeSite) WriteMarks(_ context.Context, _, name string, m snapshot.Marks) error {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.fail["marks "+name]; err != nil {
		return err
	}
	phase := "-"
	if m.Journal != nil {
		phase = m.Journal.Phase
		if m.Journal.GateLSN != "" {
			phase += " " + m.Journal.GateLSN
		}
	}
	line := fmt.Sprintf("marks %s digest=%s revision=%s journal=%s", name, m.Digest, m.Revision, phase)
	if m.Rebuild != nil {
		line += " rebuild=" + m.Rebuild.Cluster
	}
	if f := m.Failover; f != nil {
		line += fmt.Sprintf(" failover=%d:%s", f.Epoch, f.Phase)
		if r := f.Returned; r != nil {
			line += fmt.Sprintf(" returned=%s:%d:%v", r.Rejoin, r.Diverged, r.Done)
		}
	}
	w.record("%s", line)
	c := w.cluster(name)
	c.Object.Marks = m
	return nil
}

func (s *fakeSite) GetSecret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	sec, ok := s.w.secrets[s.site+"/"+ns+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
	}
	return sec.DeepCopy(), nil
}

func (s *fakeSite) ApplySecret(_ context.Context, sec *corev1.Secret) error {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.record("secret %s/%s/%s type=%s", s.site, sec.Namespace, sec.Name, sec.Type)
	s.w.secrets[s.site+"/"+sec.Namespace+"/"+sec.Name] = sec.DeepCopy()
	return nil
}

func (s *fakeSite) RestartPending(_ context.Context, ns, name string) error {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.record("restart pending %s/%s/%s", s.site, ns, name)
	if s.w.react != nil {
		s.w.react(s.w, "restart", name)
	}
	return nil
}

func (s *fakeSite) DeleteSecret(_ context.Context, ns, name string) error {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.record("delete secret %s/%s/%s", s.site, ns, name)
	delete(s.w.secrets, s.site+"/"+ns+"/"+name)
	return nil
}

func (s *fakeSite) GetLease(_ context.Context, ns, name string) (*coordinationv1.Lease, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	l, ok := s.w.leases[s.site+"/"+ns+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "leases"}, name)
	}
	return l.DeepCopy(), nil
}

func (s *fakeSite) CreateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.record("lease %s/%s/%s create", s.site, l.Namespace, l.Name)
	s.w.leases[s.site+"/"+l.Namespace+"/"+l.Name] = l.DeepCopy()
	return l, nil
}

func (s *fakeSite) UpdateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.leases[s.site+"/"+l.Namespace+"/"+l.Name] = l.DeepCopy()
	return l, nil
}

// Open is the fake Database: a session records its statements.
func (w *world) Open(_ context.Context, c *snapshot.ClusterState) (Session, error) {
	if err := w.fail["open "+c.Name]; err != nil {
		return nil, err
	}
	if c.Endpoint == nil {
		return nil, errors.New("no endpoint")
	}
	return &fakeSession{w: w, cluster: c.Name}, nil
}

type fakeSession struct {
	w       *world
	cluster string
}

func (s *fakeSession) Exec(_ context.Context, sql string, args ...any) error {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	short := sqlName(sql)
	if err := w.fail["sql "+short]; err != nil {
		if w.react != nil {
			w.react(w, "failed sql "+short, s.cluster)
		}
		return err
	}
	if short == "create-extension" {
		w.walInspect = "pgtopo"
	}
	if len(args) > 0 {
		w.record("sql %s %s %v", s.cluster, short, args)
	} else {
		w.record("sql %s %s", s.cluster, short)
	}
	// ALTER SYSTEM on default_transaction_read_only, as PostgreSQL shows it
	// after the reload.
	if c, ok := w.snap.Cluster(s.cluster); ok && c.PG != nil && (short == "fence-on" || short == "fence-off") {
		c.PG.ReadOnlyDefault = short == "fence-on"
	}
	if w.react != nil {
		w.react(w, "sql "+short, s.cluster)
	}
	return nil
}

// sqlName shortens a statement for the log: its first words.
func sqlName(sql string) string {
	switch {
	case strings.HasPrefix(sql, "ALTER SYSTEM SET default_transaction_read_only"):
		return "fence-on"
	case strings.HasPrefix(sql, "ALTER SYSTEM RESET default_transaction_read_only"):
		return "fence-off"
	case strings.HasPrefix(sql, "SELECT pg_reload_conf"):
		return "reload"
	case strings.Contains(sql, "pg_terminate_backend"):
		return "terminate"
	case strings.HasPrefix(sql, "UPDATE sys_operator.multi_cluster_info"):
		return "fill-external-ip"
	case strings.HasPrefix(sql, "CREATE SCHEMA IF NOT EXISTS sys_operator"):
		return "catalogue-schema"
	case strings.HasPrefix(sql, "INSERT INTO sys_operator.multi_cluster_info"):
		return "catalogue-row"
	case strings.HasPrefix(sql, "CREATE SCHEMA IF NOT EXISTS pgtopo"):
		return "create-schema"
	case strings.HasPrefix(sql, "CREATE EXTENSION IF NOT EXISTS pg_walinspect"):
		return "create-extension"
	}
	return sql
}

func (s *fakeSession) QueryRow(_ context.Context, sql string, args ...any) Row {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if sqlName(sql) == "terminate" {
		s.w.record("sql %s terminate", s.cluster)
		return fakeRow{vals: []any{3}}
	}
	if err := s.w.fail["query "+s.cluster]; err != nil {
		return fakeRow{err: err}
	}
	if strings.Contains(sql, ".history") {
		if err := s.w.fail["history "+s.cluster]; err != nil {
			delete(s.w.fail, "history "+s.cluster) // once: a server restarting
			return fakeRow{err: err}
		}
		return fakeRow{vals: []any{s.w.history[fmt.Sprintf("%s/%v", s.cluster, args[0])]}}
	}
	if strings.Contains(sql, "current_setting($1) = $2") {
		return fakeRow{vals: []any{s.w.settings[s.cluster+"/"+args[0].(string)] == args[1]}}
	}
	if strings.Contains(sql, "pg_last_committed_xact") {
		return fakeRow{vals: []any{"2026-12-02T12:03:40.000Z"}}
	}
	c := s.w.cluster(s.cluster)
	switch {
	case sql == walInspectFindSQL && s.w.walInspect == "":
		return fakeRow{err: errors.New("no rows in result set")}
	case sql == walInspectFindSQL:
		return fakeRow{vals: []any{s.w.walInspect}}
	case strings.Contains(sql, "pg_get_wal_records_info"):
		s.w.record("sql %s shutdown-checkpoint? %v", s.cluster, args)
		found := 0
		if s.w.shutdownEnd != 0 && args[1] == s.w.shutdownEnd.String() {
			found = 1
		}
		return fakeRow{vals: []any{found}}
	case strings.HasPrefix(sql, "SELECT pg_last_wal_replay_lsn()"):
		return fakeRow{vals: []any{c.PG.ReplayLSN.String()}}
	}
	end, ok := s.w.endOfWAL[s.cluster]
	if !ok && c.PG != nil {
		end = c.PG.CurrentLSN
	}
	inRecovery := c.PG != nil && c.PG.InRecovery
	return fakeRow{vals: []any{inRecovery, end.String()}}
}

func (s *fakeSession) Close(context.Context) error { return nil }

type fakeRow struct {
	vals []any
	err  error
}

func (r fakeRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	for i, d := range dest {
		switch p := d.(type) {
		case *bool:
			*p = r.vals[i].(bool)
		case *string:
			*p = r.vals[i].(string)
		case *int:
			*p = r.vals[i].(int)
		}
	}
	return nil
}

// Clusters of the fake worlds.

const sysID = "7710640626635289495"

func endpoint(host string, port int) *snapshot.Endpoint {
	return &snapshot.Endpoint{Host: host, Port: port}
}

// primaryState is a running, writable primary at lsn on timeline tl.
func primaryState(name, site string, ep *snapshot.Endpoint, lsn snapshot.LSN, tl int) snapshot.ClusterState {
	return snapshot.ClusterState{Name: name, Site: site, Namespace: "db", Exists: true, Endpoint: ep,
		Object:      &snapshot.Object{Ready: true, Status: "Running", Spec: snapshot.Spec{Instances: 2, Replication: snapshot.Replication{Enabled: true}}},
		PG:          &snapshot.PGState{SystemID: sysID, Timeline: tl, CurrentLSN: lsn},
		Credentials: snapshot.SecretState{Name: "postgres." + name + ".credentials", Exists: true}}
}

// standbyState is a standby streaming from upstream, replayed up to lsn.
func standbyState(name, site string, ep, upstream *snapshot.Endpoint, lsn snapshot.LSN, tl int) snapshot.ClusterState {
	c := primaryState(name, site, ep, 0, tl)
	c.Object.Spec.Instances = 1
	c.Object.Spec.Replication.IsReplica = true
	c.PG = &snapshot.PGState{InRecovery: true, SystemID: sysID, Timeline: tl, ReplayLSN: lsn, ReceiveLSN: lsn}
	if upstream != nil {
		c.Object.Spec = c.Object.Spec.WithPeer(*upstream)
		c.PG.WalReceiver = &snapshot.WalReceiver{Status: "streaming", SenderHost: upstream.Host, SenderPort: upstream.Port, Timeline: tl}
	}
	return c
}

// follow makes a standby stream from upstream and replay all it has.
func (w *world) follow(standby, upstream string) {
	s, u := w.cluster(standby), w.cluster(upstream)
	s.PG.WalReceiver = &snapshot.WalReceiver{Status: "streaming", SenderHost: u.Endpoint.Host, SenderPort: u.Endpoint.Port, Timeline: u.PG.Timeline}
	s.PG.ReplayLSN = u.PG.EndOfWAL()
	s.PG.Timeline = u.PG.Timeline
}

// operator reacts as the lab's operator and Patroni do, at once: a spec
// with isReplica true makes a standby of the peer, false a primary on a new
// timeline; a target that is a standby of a fenced primary replays up to
// its end of WAL.
func operator(w *world, what, name string) {
	c := w.cluster(name)
	if what != "spec" {
		return
	}
	spec := c.Object.Spec
	c.Object.Ready, c.Object.Status = true, "Running"
	if c.PG == nil {
		c.PG = &snapshot.PGState{SystemID: sysID, Timeline: 1}
	}
	// The operator applies the object's parameters to the server.
	c.PG.ReadOnlyDefault = c.PG.ReadOnlyDefault || spec.Parameters[snapshot.FenceParameter] == "on"
	switch {
	case spec.Replication.IsReplica && !c.PG.InRecovery:
		c.PG.InRecovery, c.PG.ReplayLSN = true, c.PG.CurrentLSN
		c.PG.WalReceiver = nil
		if up := peerCluster(w, spec); up != "" && c.PG.ReplayLSN == 0 {
			w.follow(name, up) // a new standby: base backup, then streaming
		}
	case !spec.Replication.IsReplica && c.PG.InRecovery:
		c.PG.InRecovery, c.PG.Timeline, c.PG.CurrentLSN = false, c.PG.Timeline+1, c.PG.ReplayLSN+0x100
		c.PG.WalReceiver = nil
		// The other clusters follow the new primary at once.
		for i := range w.snap.Clusters {
			o := &w.snap.Clusters[i]
			if o.Name != name && o.PG != nil && o.PG.InRecovery {
				w.follow(o.Name, name)
			}
		}
	case spec.Replication.IsReplica:
		if up := peerCluster(w, spec); up != "" {
			w.follow(name, up)
		}
	}
}

// peerCluster is the cluster whose endpoint a spec's peer names.
func peerCluster(w *world, spec snapshot.Spec) string {
	for _, c := range w.snap.Clusters {
		if c.Endpoint != nil && c.Endpoint.String() == spec.Replication.Peer() {
			return c.Name
		}
	}
	return ""
}

func (s *fakeSite) DeleteCluster(_ context.Context, _, name string) error {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	w.record("delete %s", name)
	if c, ok := w.snap.Cluster(name); ok {
		*c = snapshot.ClusterState{Name: name, Site: c.Site, Namespace: c.Namespace}
	}
	if !w.keepOrphans {
		w.snap.Orphans = slices.DeleteFunc(w.snap.Orphans, func(o snapshot.OrphanCluster) bool { return o.Name == name })
	}
	return nil
}
