package operator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/proc"
)

// Operator runs one site of a lab.
type Operator struct {
	state    *lab.State
	site     lab.SiteState
	addrs    lab.SiteAddrs
	kube     kubernetes.Interface
	dyn      dynamic.Interface
	log      *slog.Logger
	patroni  patroniClient
	proxies  *proxies
	clusters map[string]*cluster
	// clustersMu guards clusters while a pass's workers run.
	clustersMu sync.Mutex
	objects    *objects
	ips        *ipAllocator
	// cut says whether the site is partitioned (pglab partition).
	cut *lab.Cutoff
}

// cluster is what the operator knows of one CR between passes.
type cluster struct {
	uid        string
	spec       crSpec
	dir        string
	members    map[int]memberView
	leaderIP   string
	replicaIPs []string
	// routes is what the proxies read, from their own goroutines.
	routes     atomic.Pointer[routes]
	deaths     map[int]int
	ran        map[int]bool // members this operator process saw running
	registered string       // the peer endpoint this standby registered at
	// cascading: born a standby of a peer in recovery (a standby of a
	// standby, as an isolated drill's clone is). It cannot register in its
	// primary's catalogue through a standby, so it streams without a slot.
	cascading bool
	// serviceHosts are the addresses its Services are reached at, which
	// its members' certificates name.
	serviceHosts []string
	// session is held to the leader of a primary between passes, for the
	// catalogue; catalogued says what the catalogue last took from this
	// operator (see catalogue).
	session    *pgx.Conn
	sessionTo  string
	catalogued catalogued
}

// catalogued is the leader and endpoint a primary's own registration and
// the observer role were last written for, and when.
type catalogued struct {
	leader, endpoint string
	at               time.Time
}

// cataloguedFor is how long a written registration and observer role are
// taken as still there: written every pass, each primary's operator
// committed a catalog change (and hashed a password) every second.
const cataloguedFor = time.Minute

type memberView struct {
	ip     string
	status memberStatus
	err    error
}

// New connects an operator to its site.
func New(dir, site string, log *slog.Logger) (*Operator, error) {
	st, err := lab.Load(dir)
	if err != nil {
		return nil, err
	}
	s, ok := st.Site(site)
	if !ok {
		return nil, fmt.Errorf("lab %s has no site %q", dir, site)
	}
	cfg, err := lab.InternalRESTConfig(dir, site)
	if err != nil {
		return nil, err
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Operator{
		state: st, site: s, addrs: st.Addrs(s), kube: kc, dyn: dc, log: log,
		patroni: newPatroniClient(), proxies: newProxies(log), clusters: map[string]*cluster{}, objects: &objects{kube: kc},
		ips: &ipAllocator{path: filepath.Join(lab.Paths{Dir: dir}.Site(site), "ips.json"), addrs: st.Addrs(s)},
	}, nil
}

// Run reconciles when a CR's spec changes, as an informer-driven operator
// does, and every second besides, to follow Patroni. Members keep running
// when the operator stops, like pods when the real operator restarts.
func (o *Operator) Run(ctx context.Context) error {
	defer o.proxies.closeAll()
	o.cut = lab.WatchCutoff(ctx, o.state.Dir, o.site.Name)
	o.proxies.cut = o.cut
	o.log.Info("operator started", "site", o.site.Name, "node", o.addrs.NodeIP())
	o.objects = startObjects(ctx, o.kube)
	// Made here, once, before a pass's workers could each make their own.
	if _, err := lab.ObserverCredentials(o.state.Dir); err != nil {
		o.log.Warn("observer credentials", "err", err)
	}
	changed := make(chan struct{}, 1)
	go o.watchSpecs(ctx, changed)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		began := time.Now()
		o.pass(ctx)
		// A slow pass delays every cluster's next change (a switchover's
		// demotion waits behind it): said, for the logs a failure keeps.
		if took := time.Since(began); took > 3*time.Second {
			o.log.Info("slow pass", "took", took.Round(time.Millisecond).String(), "clusters", len(o.clusters))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-changed:
		}
	}
}

// watchSpecs signals changed when a CR is added, deleted or has a new spec
// (a new generation); status and annotation writes do not count, so the
// operator's own status updates do not wake it.
func (o *Operator) watchSpecs(ctx context.Context, changed chan<- struct{}) {
	generations := map[types.UID]int64{}
	for ctx.Err() == nil {
		w, err := o.dyn.Resource(GVR).Namespace("").Watch(ctx, metav1.ListOptions{})
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for ev := range w.ResultChan() {
			cr, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if ev.Type == watch.Modified && generations[cr.GetUID()] == cr.GetGeneration() {
				continue
			}
			generations[cr.GetUID()] = cr.GetGeneration()
			select {
			case changed <- struct{}{}:
			default:
			}
		}
		w.Stop()
	}
}

// passWorkers is how many clusters a pass reconciles at once (the
// Zalando operator's default workers).
const passWorkers = 8

func (o *Operator) pass(ctx context.Context) {
	list, err := o.dyn.Resource(GVR).Namespace("").List(ctx, metav1.ListOptions{})
	if err != nil {
		o.log.Warn("list postgresqls", "err", err)
		return
	}
	seen := map[string]bool{}
	for i := range list.Items {
		seen[list.Items[i].GetNamespace()+"/"+list.Items[i].GetName()] = true
	}
	// Clusters are reconciled side by side, as the real operator's
	// workers do: one after the other, a switchover's role flip waited
	// behind every other cluster's pass (registrations at peers not
	// writable yet, the catalogue), and five flips at once behind each
	// other.
	var mu sync.Mutex
	wantProxies := map[string]bool{}
	work := make(chan *unstructured.Unstructured)
	var wg sync.WaitGroup
	for range min(passWorkers, len(list.Items)) {
		wg.Go(func() {
			for cr := range work {
				addrs, err := o.reconcile(ctx, cr)
				mu.Lock()
				for _, a := range addrs {
					wantProxies[a] = true
				}
				mu.Unlock()
				if err != nil {
					o.log.Warn("reconcile", "cluster", cr.GetNamespace()+"/"+cr.GetName(), "err", err)
				}
			}
		})
	}
	for i := range list.Items {
		work <- &list.Items[i]
	}
	close(work)
	wg.Wait()
	for key, c := range o.clusters {
		if !seen[key] {
			o.teardown(ctx, c)
			delete(o.clusters, key)
		}
	}
	// Clusters on disk that no CR names any more, deleted while this
	// operator was down: torn down as if it had seen the deletion.
	dirs, _ := filepath.Glob(o.clusterDir("*", "*"))
	for _, dir := range dirs {
		ns, name := filepath.Base(filepath.Dir(dir)), filepath.Base(dir)
		if !seen[ns+"/"+name] {
			o.teardown(ctx, &cluster{spec: crSpec{Namespace: ns, Name: name}, dir: dir, members: map[int]memberView{}})
		}
	}
	o.proxies.keep(wantProxies)
}

// reconcile makes one CR real and returns the proxy addresses it serves.
func (o *Operator) reconcile(ctx context.Context, cr *unstructured.Unstructured) ([]string, error) {
	spec, err := parseSpec(cr)
	if err != nil {
		o.setStatus(ctx, cr, StatusFailed, err.Error())
		return nil, err
	}
	o.clustersMu.Lock()
	c := o.clusters[spec.key()]
	o.clustersMu.Unlock()
	if c != nil && c.uid != string(cr.GetUID()) {
		// Deleted and created again between two passes: a new cluster.
		o.teardown(ctx, c)
		c = nil
	}
	if c == nil {
		c = &cluster{uid: string(cr.GetUID()), members: map[int]memberView{}, deaths: map[int]int{}, ran: map[int]bool{},
			dir: o.clusterDir(spec.Namespace, spec.Name)}
		// What is on disk under this name belongs to this CR only if it
		// says so: a CR deleted and created again while this operator was
		// down (a failed site) must not start on the old one's data.
		if owner, err := os.ReadFile(filepath.Join(c.dir, "uid")); err == nil && string(owner) != c.uid ||
			err != nil && !os.IsNotExist(err) {
			o.teardown(ctx, &cluster{spec: spec, dir: c.dir, members: map[int]memberView{}})
		}
		if err := os.MkdirAll(c.dir, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(c.dir, "uid"), []byte(c.uid), 0o644); err != nil {
			return nil, err
		}
		_, err := os.Stat(filepath.Join(c.dir, "cascading"))
		c.cascading = err == nil
		o.clustersMu.Lock()
		o.clusters[spec.key()] = c
		o.clustersMu.Unlock()
	}
	c.spec = spec

	svcAddrs, endpoint, err := o.ensureServices(ctx, c)
	if err != nil {
		return svcAddrs, err
	}
	c.serviceHosts = c.serviceHosts[:0]
	for _, a := range svcAddrs {
		host, _ := splitHostPort(a)
		c.serviceHosts = append(c.serviceHosts, host)
	}
	if err := o.ensureCABundle(ctx, spec.Namespace); err != nil {
		o.log.Warn("CA bundle ConfigMap", "namespace", spec.Namespace, "err", err)
	}
	if err := o.ensureObserverSecret(ctx, spec.Namespace); err != nil {
		o.log.Warn("observer Secret", "namespace", spec.Namespace, "err", err)
	}
	password, err := o.ensureCredentials(ctx, c)
	if err != nil {
		o.setStatus(ctx, cr, StatusCreating, err.Error())
		return svcAddrs, err
	}
	register := func() {
		if err := o.register(ctx, c, endpoint, password); err != nil {
			o.log.Info("standby registration pending", "cluster", spec.key(), "err", err)
		}
	}
	// A standby with no data yet registers before its members are made:
	// that is where it learns it cascades (its peer in recovery), which
	// decides the slot it streams through.
	standby := spec.Replication.Enabled && spec.Replication.IsReplica
	registerFirst := standby && !o.hasData(c)
	if registerFirst {
		register()
	}
	if err := o.ensureMembers(ctx, c, password); err != nil {
		o.setStatus(ctx, cr, StatusFailed, err.Error())
		return svcAddrs, err
	}
	o.renewCertificates(c)
	o.observeMembers(ctx, c)
	// A role flip goes to Patroni before anything that connects to a
	// database: the standby's registration at its peer and the catalogue
	// read on a new primary need the very databases the flip makes ready,
	// and before it they only fail, inside the switchover's write window.
	if c.rolePending() {
		if err := o.ensureDynamicConfig(ctx, c, nil); err != nil {
			o.log.Info("role flip pending", "cluster", spec.key(), "err", err)
		}
	}
	if standby && !registerFirst {
		register()
	}
	// Scale down only once Patroni's role matches the CR: removing the
	// leader of a primary that is being demoted would fail over inside the
	// old cluster and promote a member on a new timeline.
	if o.roleSettled(c) {
		o.scaleDown(ctx, c)
	}
	if err := o.ensurePods(ctx, c); err != nil {
		o.log.Warn("pods", "cluster", spec.key(), "err", err)
	}
	var slots []string // nil: unknown, leave Patroni's slots alone
	if spec.Replication.Enabled && !spec.Replication.IsReplica && c.leaderIP != "" {
		// Bounded: a held session to a server that stopped answering
		// must not stall the pass for every other cluster.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		slots, err = o.catalogue(cctx, c, endpoint, password)
		cancel()
		if err != nil {
			o.log.Info("catalogue pending", "cluster", spec.key(), "err", err)
		}
	} else {
		o.dropSession(c) // a standby now, or no leader: nothing to keep
	}
	if err := o.ensureDynamicConfig(ctx, c, slots); err != nil {
		o.log.Info("dynamic config pending", "cluster", spec.key(), "err", err)
	}
	o.restartPending(ctx, c)
	status, msg := o.clusterStatus(c)
	o.setStatus(ctx, cr, status, msg)
	return svcAddrs, nil
}

// clusterDir holds a cluster's members in this site.
func (o *Operator) clusterDir(ns, name string) string {
	return filepath.Join(lab.Paths{Dir: o.state.Dir}.Site(o.site.Name), "clusters", ns, name)
}

// ensureServices creates the master and replica Services, assigns
// LoadBalancer addresses, and returns the proxy addresses and the cluster's
// own endpoint as a peer would reach it.
func (o *Operator) ensureServices(ctx context.Context, c *cluster) ([]string, string, error) {
	spec := c.spec
	var addrs []string
	var endpoint string
	for _, role := range []string{"master", "replica"} {
		name := spec.Name
		if role == "replica" {
			name += "-repl"
		}
		svcType := corev1.ServiceType(spec.Replication.ServiceType)
		svc, err := o.objects.service(ctx, spec.Namespace, name)
		if err == nil && (svc.Spec.Type != svcType || svcType == corev1.ServiceTypeLoadBalancer && len(svc.Status.LoadBalancer.Ingress) == 0) {
			// To be written: from the API server, not a cache that may
			// not hold this operator's last write yet.
			svc, err = o.kube.CoreV1().Services(spec.Namespace).Get(ctx, name, metav1.GetOptions{})
		}
		if apierrors.IsNotFound(err) {
			svc, err = o.kube.CoreV1().Services(spec.Namespace).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"cluster-name": spec.Name, "spilo-role": role, "application": "spilo"}},
				Spec: corev1.ServiceSpec{Type: svcType, Ports: []corev1.ServicePort{{Name: "postgresql", Port: 5432, TargetPort: intstr.FromInt32(5432)}},
					Selector: map[string]string{"cluster-name": spec.Name, "spilo-role": role}},
			}, metav1.CreateOptions{})
		} else if err == nil && svc.Spec.Type != svcType {
			svc.Spec.Type = svcType
			if svcType == corev1.ServiceTypeClusterIP {
				for i := range svc.Spec.Ports {
					svc.Spec.Ports[i].NodePort = 0
				}
			}
			svc, err = o.kube.CoreV1().Services(spec.Namespace).Update(ctx, svc, metav1.UpdateOptions{})
		}
		if err != nil {
			return addrs, "", fmt.Errorf("service %s: %w", name, err)
		}
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && len(svc.Status.LoadBalancer.Ingress) == 0 {
			ip, err := o.ips.loadBalancer(spec.Namespace + "/" + name)
			if err != nil {
				return addrs, "", err
			}
			svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
			if svc, err = o.kube.CoreV1().Services(spec.Namespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
				return addrs, "", fmt.Errorf("service %s: load balancer status: %w", name, err)
			}
		}
		target := func() string { return c.leaderAddr() }
		if role == "replica" {
			target = func() string { return c.replicaAddr() }
		}
		var listen []string
		if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != "None" {
			listen = append(listen, svc.Spec.ClusterIP+":5432")
		}
		nodePort := 0
		if len(svc.Spec.Ports) > 0 {
			nodePort = int(svc.Spec.Ports[0].NodePort)
		}
		if nodePort != 0 {
			listen = append(listen, fmt.Sprintf("%s:%d", o.addrs.NodeIP(), nodePort))
		}
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP != "" && svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
				listen = append(listen, ing.IP+":5432")
			}
		}
		for _, a := range listen {
			if err := o.proxies.ensure(a, target); err != nil {
				return addrs, "", fmt.Errorf("service %s: proxy %s: %w", name, a, err)
			}
			addrs = append(addrs, a)
		}
		if role == "master" {
			switch svc.Spec.Type {
			case corev1.ServiceTypeNodePort:
				endpoint = fmt.Sprintf("%s:%d", o.addrs.NodeIP(), nodePort)
			case corev1.ServiceTypeLoadBalancer:
				if len(svc.Status.LoadBalancer.Ingress) > 0 {
					endpoint = svc.Status.LoadBalancer.Ingress[0].IP + ":5432"
				}
			default:
				endpoint = svc.Spec.ClusterIP + ":5432"
			}
		}
	}
	return addrs, endpoint, nil
}

type routes struct {
	leader   string
	replicas []string
}

func (c *cluster) leaderAddr() string {
	r := c.routes.Load()
	if r == nil || r.leader == "" {
		return ""
	}
	return r.leader + ":5432"
}

func (c *cluster) replicaAddr() string {
	r := c.routes.Load()
	if r == nil || len(r.replicas) == 0 {
		return ""
	}
	return r.replicas[time.Now().Nanosecond()%len(r.replicas)] + ":5432"
}

// ensureCredentials returns the admin password, creating the credentials
// Secret when missing: a copy of the bootstrap secret for a cluster born a
// standby (its data, and so its passwords, are the primary's), a fresh
// random password otherwise.
func (o *Operator) ensureCredentials(ctx context.Context, c *cluster) (string, error) {
	spec := c.spec
	name := CredentialsSecret(spec.Name)
	sec, err := o.objects.secret(ctx, spec.Namespace, name)
	if err == nil {
		return string(sec.Data["password"]), nil
	}
	if !apierrors.IsNotFound(err) {
		return "", err
	}
	user, password := "postgres", ""
	if spec.Replication.IsReplica {
		if spec.Replication.BootstrapSecret == "" {
			return "", fmt.Errorf("standby needs clusterReplication.bootstrapSecret")
		}
		bs, err := o.objects.secret(ctx, spec.Namespace, spec.Replication.BootstrapSecret)
		if err != nil {
			return "", fmt.Errorf("bootstrap secret %s: %w", spec.Replication.BootstrapSecret, err)
		}
		user, password = string(bs.Data["username"]), string(bs.Data["password"])
		if user == "" || password == "" {
			return "", fmt.Errorf("bootstrap secret %s: needs username and password", spec.Replication.BootstrapSecret)
		}
	} else {
		raw := make([]byte, 16)
		if _, err := rand.Read(raw); err != nil {
			return "", err
		}
		password = hex.EncodeToString(raw)
	}
	_, err = o.kube.CoreV1().Secrets(spec.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"cluster-name": spec.Name, "application": "spilo"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"username": []byte(user), "password": []byte(password)},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("secret %s: %w", name, err)
	}
	return password, nil
}

// register records a standby in its primary's catalogue, through the peer
// endpoint with the bootstrap credentials. For a LoadBalancer standby the
// external IP is left empty, as the real operator sometimes does.
func (o *Operator) register(ctx context.Context, c *cluster, endpoint, password string) error {
	r := c.spec.Replication
	peer := fmt.Sprintf("%s:%d", r.PeerHost, r.PeerPort)
	if c.registered == peer {
		return nil
	}
	if o.cut.Cut() {
		return fmt.Errorf("site partitioned: peer %s unreachable", peer)
	}
	conn, err := connect(ctx, o.state.Dir, r.PeerHost, r.PeerPort, "postgres", password)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return err
	}
	if inRecovery {
		// A cluster born against a standby cascades from it. One that
		// ran before (a demoted primary pointed at a target not yet
		// promoted) waits to register, keeping its slot name.
		if c.cascading || !o.hasData(c) {
			if !c.cascading {
				o.log.Info("cascading standby: its peer is in recovery; it streams without a slot", "cluster", c.spec.key(), "peer", peer)
				// Kept on disk: an operator restarted while it runs
				// must not give it a slot its peer does not have.
				if err := os.WriteFile(filepath.Join(c.dir, "cascading"), nil, 0o644); err != nil {
					return err
				}
			}
			c.cascading = true
			return nil
		}
		return fmt.Errorf("peer %s is not writable yet", peer)
	}
	if c.cascading {
		c.cascading = false
		_ = os.Remove(filepath.Join(c.dir, "cascading"))
	}
	reg := registration{Cluster: c.spec.Name, ServiceType: r.ServiceType, Slot: SlotName(c.spec.Name)}
	host, port := splitHostPort(endpoint)
	reg.ExternalPort = port
	if r.ServiceType != string(corev1.ServiceTypeLoadBalancer) {
		reg.ExternalIP = host
	}
	if err := upsertRegistration(ctx, conn, reg); err != nil {
		return err
	}
	c.registered = peer
	o.log.Info("registered standby", "cluster", c.spec.key(), "peer", peer)
	return nil
}

// catalogue keeps the primary's own row and returns the slots its standbys
// need.
func (o *Operator) catalogue(ctx context.Context, c *cluster, endpoint, password string) ([]string, error) {
	conn, err := o.leaderSession(ctx, c, password)
	if err != nil {
		return nil, err
	}
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		o.dropSession(c)
		return nil, fmt.Errorf("leader not writable yet")
	}
	if w := c.catalogued; w.leader != c.leaderIP || w.endpoint != endpoint || time.Since(w.at) > cataloguedFor {
		host, port := splitHostPort(endpoint)
		if err := upsertRegistration(ctx, conn, registration{Cluster: c.spec.Name, ExternalIP: host, ExternalPort: port,
			ServiceType: c.spec.Replication.ServiceType, Slot: SlotName(c.spec.Name)}); err != nil {
			o.dropSession(c)
			return nil, err
		}
		if err := o.ensureObserverRole(ctx, conn); err != nil {
			o.log.Warn("observer role", "cluster", c.spec.key(), "err", err)
		} else {
			c.catalogued = catalogued{leader: c.leaderIP, endpoint: endpoint, at: time.Now()}
		}
	}
	rows, err := listRegistrations(ctx, conn)
	if err != nil {
		o.dropSession(c)
		return nil, err
	}
	slots := []string{}
	for _, r := range rows {
		if r.Cluster != c.spec.Name {
			slots = append(slots, SlotName(r.Cluster))
		}
	}
	return slots, nil
}

// leaderSession is the session held to the cluster's leader, made anew
// when the leader moved or the last use failed.
func (o *Operator) leaderSession(ctx context.Context, c *cluster, password string) (*pgx.Conn, error) {
	if c.session != nil && (c.sessionTo != c.leaderIP || c.session.IsClosed()) {
		o.dropSession(c)
	}
	if c.session == nil {
		conn, err := connect(ctx, o.state.Dir, c.leaderIP, 5432, "postgres", password)
		if err != nil {
			return nil, err
		}
		c.session, c.sessionTo = conn, c.leaderIP
	}
	return c.session, nil
}

func (o *Operator) dropSession(c *cluster) {
	if c.session != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.session.Close(ctx)
		cancel()
		c.session, c.sessionTo = nil, ""
	}
}

// ensureDynamicConfig makes Patroni's dynamic configuration follow the CR:
// standby_cluster set to the peer or removed (the isReplica flip), the
// permanent slots of a primary, and the CR's parameters.
func (o *Operator) ensureDynamicConfig(ctx context.Context, c *cluster, slots []string) error {
	if c.leaderIP == "" {
		return fmt.Errorf("no leader yet")
	}
	cur, err := o.patroni.config(ctx, c.leaderIP)
	if err != nil {
		return err
	}
	patch := configPatch(cur, c.spec, slots, c.standbySlot())
	if _, ok := patch["standby_cluster"]; ok {
		// From the spec: the patch holds a typed nil map to remove it.
		r := c.spec.Replication
		o.log.Info("standby_cluster", "cluster", c.spec.key(), "isReplica", r.IsReplica, "peer", fmt.Sprintf("%s:%d", r.PeerHost, r.PeerPort))
	}
	if len(patch) == 0 {
		return nil
	}
	return o.patroni.patchConfig(ctx, c.leaderIP, patch)
}

// configPatch is the merge patch that makes Patroni's dynamic config cur
// what the CR asks for: the standby_cluster section, the permanent slots
// (when slots is known) and the parameters, a parameter the CR no longer
// sets going back to the lab's base value or away.
func configPatch(cur map[string]any, spec crSpec, slots []string, standbySlot string) map[string]any {
	patch := map[string]any{}
	r := spec.Replication
	var wantStandby map[string]any
	if r.IsReplica {
		wantStandby = standbyConfig(r.PeerHost, r.PeerPort, standbySlot)
	}
	if !sameJSON(cur["standby_cluster"], wantStandby) {
		patch["standby_cluster"] = wantStandby
	}
	// Permanent slots follow the catalogue while the cluster is primary.
	// A demoted cluster keeps them: its standbys still stream through them
	// (cascading) until the new primary takes over, and the switchover gate
	// depends on that.
	if !r.IsReplica && slots != nil {
		wantSlots := map[string]any{}
		for _, s := range slots {
			wantSlots[s] = map[string]any{"type": "physical"}
		}
		if len(wantSlots) == 0 {
			wantSlots = nil
		}
		if !sameJSON(cur["slots"], wantSlots) {
			// A merge patch keeps keys it does not name: a slot whose
			// catalogue row went is removed by naming it null.
			p := map[string]any{}
			if have, ok := cur["slots"].(map[string]any); ok {
				for k := range have {
					p[k] = nil
				}
			}
			maps.Copy(p, wantSlots)
			patch["slots"] = p
		}
	}
	curParams, _ := nested(cur, "postgresql", "parameters").(map[string]any)
	changed := map[string]any{}
	for _, k := range slices.Sorted(maps.Keys(spec.Parameters)) {
		if fmt.Sprint(curParams[k]) != spec.Parameters[k] {
			changed[k] = spec.Parameters[k]
		}
	}
	// A parameter the CR dropped (a fence on return lifted with the
	// demotion) goes, as a real operator syncs the whole set.
	for _, k := range slices.Sorted(maps.Keys(curParams)) {
		if _, kept := spec.Parameters[k]; kept {
			continue
		}
		if base, ok := baseParameters[k]; !ok {
			changed[k] = nil
		} else if fmt.Sprint(curParams[k]) != base {
			changed[k] = base
		}
	}
	if len(changed) > 0 {
		patch["postgresql"] = map[string]any{"parameters": changed}
	}
	return patch
}

func nested(m map[string]any, keys ...string) any {
	var cur any = m
	for _, k := range keys {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[k]
	}
	return cur
}

func sameJSON(a any, b map[string]any) bool {
	if b == nil {
		return a == nil
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	var x, y any
	_ = json.Unmarshal(ja, &x)
	_ = json.Unmarshal(jb, &y)
	return reflect.DeepEqual(x, y)
}

// ensureMembers starts members 0..n-1 and removes the ones beyond.
// ensureMembers starts missing members in order, each only once the one
// before it runs, as a StatefulSet's OrderedReady pod management does. So
// member 0 bootstraps and leads a new cluster; started together, members
// race for the leader lock and a later scale-down could remove the leader.
func (o *Operator) ensureMembers(ctx context.Context, c *cluster, password string) error {
	spec := c.spec
	if !o.anyMemberRunning(c) {
		if err := syncConfigBeforeStart(ctx, o.state.SiteEtcdEndpoint(), o.dcsNamespace(spec)+spec.Name+"/config", spec, c.standbySlot()); err != nil {
			return fmt.Errorf("members not started: %w", err)
		}
	}
	for i := 0; i < spec.Instances; i++ {
		// A member is first started once the one before it runs, as a
		// StatefulSet creates its pods in order; one this operator saw run
		// is started again at once, as a kubelet restarts a dead container in
		// its pod whatever the others do (the soak killed a leader's
		// Patroni while the member before it could not catch up: left
		// for that one, the cluster had no leader for good).
		if i > 0 && !c.ran[i] && !o.memberRunning(c, i) && c.members[i-1].status.State != "running" {
			return nil // the next pass starts it, once member i-1 runs
		}
		if err := o.ensureMember(c, i, password); err != nil {
			return err
		}
	}
	return nil
}

func (o *Operator) anyMemberRunning(c *cluster) bool {
	entries, _ := os.ReadDir(c.dir)
	for _, e := range entries {
		if i, err := strconv.Atoi(e.Name()); err == nil && o.memberRunning(c, i) {
			return true
		}
	}
	return false
}

func (o *Operator) memberRunning(c *cluster, i int) bool {
	return proc.Alive(proc.ReadPid(filepath.Join(c.dir, strconv.Itoa(i), "patroni.pid")))
}

// roleSettled reports whether the leader's role is the one the CR asks for.
func (o *Operator) roleSettled(c *cluster) bool {
	for _, m := range c.members {
		if m.err == nil && m.ip == c.leaderIP {
			return (m.status.Role == "standby_leader") == c.spec.Replication.IsReplica
		}
	}
	return false
}

// scaleDown removes the members beyond numberOfInstances.
func (o *Operator) scaleDown(ctx context.Context, c *cluster) {
	entries, _ := os.ReadDir(c.dir)
	for _, e := range entries {
		i, err := strconv.Atoi(e.Name())
		if err != nil || i < c.spec.Instances {
			continue
		}
		if m, ok := c.members[i]; ok && m.ip != "" && m.ip == c.leaderIP {
			// Removing the leader would fail over to a member that may not
			// have caught up; keep it until leadership moves.
			o.log.Info("scale-down waits: member leads the cluster", "member", o.memberName(c, i))
			continue
		}
		o.removeMember(ctx, c, i)
	}
}

// dcsNamespace is Patroni's namespace in etcd for a cluster's namespace.
func (o *Operator) dcsNamespace(s crSpec) string {
	return fmt.Sprintf("/pglab-%d/%s/%s/", o.state.Slot, o.site.Name, s.Namespace)
}

func (o *Operator) memberName(c *cluster, i int) string { return fmt.Sprintf("%s-%d", c.spec.Name, i) }

func (o *Operator) ensureMember(c *cluster, i int, password string) error {
	dir := filepath.Join(c.dir, strconv.Itoa(i))
	pidFile := filepath.Join(dir, "patroni.pid")
	if proc.Alive(proc.ReadPid(pidFile)) {
		c.ran[i] = true
		return o.followPassword(c, i, password)
	}
	if proc.ReadPid(pidFile) != 0 {
		c.deaths[i]++
		o.log.Warn("member died; restarting", "member", o.memberName(c, i), "deaths", c.deaths[i])
	}
	mc, err := o.memberConfig(c, i, password)
	if err != nil {
		return err
	}
	if err := memberDirs(dir, mc.SocketDir); err != nil {
		return err
	}
	if _, err := ensureServing(o.state.Dir, o.site.Name, dir, mc.Name, o.servingHosts(c, mc.IP)); err != nil {
		return fmt.Errorf("member %s: certificate: %w", mc.Name, err)
	}
	err = startPatroni(mc, dir, o.state.BinDir, true)
	if err == nil {
		o.log.Info("member started", "member", mc.Name, "ip", mc.IP, "standby", mc.Standby != nil)
	}
	return err
}

// memberConfig is member i's Patroni configuration.
func (o *Operator) memberConfig(c *cluster, i int, password string) (memberConfig, error) {
	dir := filepath.Join(c.dir, strconv.Itoa(i))
	ip, err := o.ips.pod(c.spec.key() + "/" + strconv.Itoa(i))
	if err != nil {
		return memberConfig{}, err
	}
	mc := memberConfig{
		TLS:        memberTLS(dir),
		Scope:      c.spec.Name,
		Namespace:  o.dcsNamespace(c.spec),
		Name:       o.memberName(c, i),
		IP:         ip,
		Etcd:       o.state.SiteEtcdEndpoint(),
		DataDir:    filepath.Join(dir, "data"),
		PgPass:     filepath.Join(dir, "pgpass"),
		SocketDir:  filepath.Join(lab.SocketRoot(o.state.Slot), ip),
		Password:   password,
		Parameters: c.spec.Parameters,
		Routed:     o.state.RoutedBlock(),
	}
	if r := c.spec.Replication; r.IsReplica {
		mc.Standby = standbyConfig(r.PeerHost, r.PeerPort, c.standbySlot())
	}
	return mc, nil
}

// standbySlot is the slot a standby streams through on its peer: none
// when it cascades from a standby.
func (c *cluster) standbySlot() string {
	if c.cascading {
		return ""
	}
	return SlotName(c.spec.Name)
}

// hasData reports whether any member of c has a data directory: a
// cluster that ran before, as opposed to one being born.
func (o *Operator) hasData(c *cluster) bool {
	entries, _ := os.ReadDir(c.dir)
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(c.dir, e.Name(), "data", "PG_VERSION")); err == nil {
			return true
		}
	}
	return false
}

// followPassword gives a running member the password of its cluster's
// credentials Secret when that changed (a rotation, or pgtopo refreshing a
// standby's from its primary's), and has Patroni reload it, as Spilo's
// pods follow their Secret: Patroni's own sessions, its replication and
// rewind connections sign in with it.
func (o *Operator) followPassword(c *cluster, i int, password string) error {
	dir := filepath.Join(c.dir, strconv.Itoa(i))
	var cur struct {
		PostgreSQL struct {
			Authentication struct {
				Superuser struct {
					Password string `json:"password"`
				} `json:"superuser"`
			} `json:"authentication"`
		} `json:"postgresql"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "patroni.yml"))
	if err != nil || yaml.Unmarshal(b, &cur) != nil || cur.PostgreSQL.Authentication.Superuser.Password == password {
		return nil
	}
	mc, err := o.memberConfig(c, i, password)
	if err != nil {
		return err
	}
	if _, err := writePatroniConfig(mc, dir); err != nil {
		return err
	}
	if pid := proc.ReadPid(filepath.Join(dir, "patroni.pid")); pid > 0 {
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			return fmt.Errorf("member %s: reload: %w", mc.Name, err)
		}
	}
	o.log.Info("member follows its credentials Secret's new password", "member", mc.Name)
	return nil
}

// restartPending restarts the members whose settings wait for a restart,
// replicas before the leader, as Zalando's operator does after it syncs a
// cluster's configuration: the order across clusters is pgtopo's.
func (o *Operator) restartPending(ctx context.Context, c *cluster) {
	var replicas, leader []string
	for _, m := range c.members {
		if m.err != nil || !m.status.PendingRestart || m.status.State != "running" {
			continue
		}
		if m.ip == c.leaderIP {
			leader = append(leader, m.ip)
		} else {
			replicas = append(replicas, m.ip)
		}
	}
	todo := replicas
	if len(todo) == 0 {
		todo = leader
	}
	for _, ip := range todo {
		if err := o.patroni.restart(ctx, ip); err != nil {
			o.log.Info("restart pending", "cluster", c.spec.key(), "member", ip, "err", err)
			continue
		}
		o.log.Info("member restarted for settings pending a restart", "cluster", c.spec.key(), "member", ip)
	}
}

// servingHosts are what a member's certificate names: its pod address,
// the node's (NodePort), its cluster's Service addresses and DNS names.
func (o *Operator) servingHosts(c *cluster, podIP string) []string {
	hosts := append([]string{podIP, o.addrs.NodeIP().String()}, c.serviceHosts...)
	for _, svc := range []string{c.spec.Name, c.spec.Name + "-repl"} {
		hosts = append(hosts, svc+"."+c.spec.Namespace+".svc", svc+"."+c.spec.Namespace+".svc.cluster.local")
	}
	return hosts
}

// renewCertificates issues running members a new certificate when their
// cluster's addresses changed (a Service of another type, a new load
// balancer address), and has PostgreSQL load it, as cert-manager renews
// a Secret a pod mounts.
func (o *Operator) renewCertificates(c *cluster) {
	for i, m := range c.members {
		if m.ip == "" || !o.memberRunning(c, i) {
			continue
		}
		dir := filepath.Join(c.dir, strconv.Itoa(i))
		renewed, err := ensureServing(o.state.Dir, o.site.Name, dir, o.memberName(c, i), o.servingHosts(c, m.ip))
		if err != nil {
			o.log.Warn("certificate", "member", o.memberName(c, i), "err", err)
			continue
		}
		if renewed {
			o.log.Info("certificate renewed", "member", o.memberName(c, i))
			reloadPostgres(filepath.Join(dir, "data"))
		}
	}
}

// ensureObserverRole keeps the lab's read-only login on a primary, which
// its standbys replicate: what a DBA creates once for pgtopo's pull-request
// plans (pgtopo --observer-secret), as docs say.
func (o *Operator) ensureObserverRole(ctx context.Context, conn *pgx.Conn) error {
	creds, err := lab.ObserverCredentials(o.state.Dir)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %[1]s) THEN
    CREATE ROLE %[2]s LOGIN IN ROLE pg_monitor;
  END IF;
END $$;
ALTER ROLE %[2]s PASSWORD %[3]s;
GRANT USAGE ON SCHEMA sys_operator TO %[2]s;
GRANT SELECT ON sys_operator.multi_cluster_info TO %[2]s`,
		quoteLiteral(creds.User), pgx.Identifier{creds.User}.Sanitize(), quoteLiteral(creds.Password)))
	return err
}

// ensureObserverSecret keeps the observer login's Secret in a namespace.
func (o *Operator) ensureObserverSecret(ctx context.Context, ns string) error {
	creds, err := lab.ObserverCredentials(o.state.Dir)
	if err != nil {
		return err
	}
	want := map[string][]byte{"username": []byte(creds.User), "password": []byte(creds.Password)}
	secrets := o.kube.CoreV1().Secrets(ns)
	sec, err := o.objects.secret(ctx, ns, lab.ObserverSecret)
	switch {
	case apierrors.IsNotFound(err):
		_, err = secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: lab.ObserverSecret}, Data: want}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // another worker's cluster in this namespace made it
		}
		return err
	case err != nil:
		return err
	case string(sec.Data["password"]) != creds.Password || string(sec.Data["username"]) != creds.User:
		sec.Data = want
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		return err
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// ensureCABundle keeps the bundle of the lab's PostgreSQL CAs in a
// namespace, as trust-manager distributes one: what a topology's
// spec.postgres.tls.ca names.
func (o *Operator) ensureCABundle(ctx context.Context, ns string) error {
	bundle, err := os.ReadFile(lab.Paths{Dir: o.state.Dir}.PostgresCABundle())
	if err != nil {
		return err
	}
	cms := o.kube.CoreV1().ConfigMaps(ns)
	cm, err := o.objects.configMap(ctx, ns, lab.PostgresCAConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: lab.PostgresCAConfigMap},
			Data: map[string]string{"ca.crt": string(bundle)}}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // another worker's cluster in this namespace made it
		}
		return err
	case err != nil:
		return err
	case cm.Data["ca.crt"] != string(bundle):
		cm.Data = map[string]string{"ca.crt": string(bundle)}
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	}
	return nil
}

func (o *Operator) removeMember(ctx context.Context, c *cluster, i int) {
	dir := filepath.Join(c.dir, strconv.Itoa(i))
	proc.Stop(proc.ReadPid(filepath.Join(dir, "patroni.pid")), 30*time.Second)
	_ = os.RemoveAll(dir)
	o.ips.release(c.spec.key() + "/" + strconv.Itoa(i))
	delete(c.members, i)
	err := o.kube.CoreV1().Pods(c.spec.Namespace).Delete(ctx, o.memberName(c, i), metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !apierrors.IsNotFound(err) {
		o.log.Warn("delete pod", "pod", o.memberName(c, i), "err", err)
	}
	o.log.Info("member removed", "member", o.memberName(c, i))
}

func (o *Operator) observeMembers(ctx context.Context, c *cluster) {
	c.leaderIP, c.replicaIPs = "", nil
	n := c.spec.Instances
	if entries, _ := os.ReadDir(c.dir); len(entries) > n {
		n = len(entries)
	}
	routeLeader := ""
	if r := c.routes.Load(); r != nil {
		routeLeader = r.leader
	}
	present := false
	for i := 0; i < n; i++ {
		ip, err := o.ips.pod(c.spec.key() + "/" + strconv.Itoa(i))
		if err != nil {
			continue
		}
		st, err := o.patroni.status(ctx, ip)
		c.members[i] = memberView{ip: ip, status: st, err: err}
		if ip == routeLeader && o.memberRunning(c, i) {
			present = true
		}
		if err != nil || st.State != "running" {
			continue
		}
		if st.IsLeader() {
			c.leaderIP = ip
		} else {
			c.replicaIPs = append(c.replicaIPs, ip)
		}
	}
	// The master Service follows the leader lock, as Patroni keeps the
	// Endpoints of the real one: a leader that restarts (a demotion to
	// standby leader) keeps its route, which moves only when another
	// member becomes leader or the member is gone.
	if c.leaderIP != "" || !present {
		routeLeader = c.leaderIP
	}
	c.routes.Store(&routes{leader: routeLeader, replicas: c.replicaIPs})
}

// rolePending says the leader runs in the other role than the CR asks:
// isReplica flipped, and Patroni not yet told.
func (c *cluster) rolePending() bool {
	for _, m := range c.members {
		if m.err == nil && m.ip == c.leaderIP && c.leaderIP != "" {
			return (m.status.Role == "standby_leader") != c.spec.Replication.IsReplica
		}
	}
	return false
}

func (o *Operator) clusterStatus(c *cluster) (string, string) {
	for i, n := range c.deaths {
		if n >= 5 && i < c.spec.Instances {
			return StatusFailed, fmt.Sprintf("member %s died %d times; see its patroni.log", o.memberName(c, i), n)
		}
	}
	if c.leaderIP == "" {
		return StatusCreating, "no leader yet"
	}
	for i := 0; i < c.spec.Instances; i++ {
		m := c.members[i]
		if m.err != nil || m.status.State != "running" {
			return StatusCreating, fmt.Sprintf("member %s not running yet", o.memberName(c, i))
		}
	}
	return StatusRunning, ""
}

// ensurePods keeps a pod object per member with the spilo-role label of
// what Patroni says the member is.
func (o *Operator) ensurePods(ctx context.Context, c *cluster) error {
	var errs []error
	for i := 0; i < c.spec.Instances; i++ {
		m, ok := c.members[i]
		if !ok {
			continue
		}
		role := "replica"
		if m.err == nil && m.status.IsLeader() {
			role = "master"
		}
		name := o.memberName(c, i)
		pods := o.kube.CoreV1().Pods(c.spec.Namespace)
		pod, err := o.objects.pod(ctx, c.spec.Namespace, name)
		if apierrors.IsNotFound(err) {
			pod, err = pods.Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"application": "spilo", "cluster-name": c.spec.Name, "spilo-role": role}},
				Spec: corev1.PodSpec{NodeName: lab.NodeName(o.site.Name), AutomountServiceAccountToken: new(bool),
					Containers: []corev1.Container{{Name: "postgres", Image: "pglab/patroni:15",
						Ports: []corev1.ContainerPort{{Name: "postgresql", ContainerPort: 5432}, {Name: "patroni", ContainerPort: 8008}}}}},
			}, metav1.CreateOptions{})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", name, err))
			continue
		}
		ready := corev1.ConditionFalse
		if m.err == nil && m.status.State == "running" {
			ready = corev1.ConditionTrue
		}
		stale := func(pod *corev1.Pod) bool {
			return pod.Status.PodIP != m.ip || pod.Status.Phase != corev1.PodRunning || len(pod.Status.Conditions) == 0 || pod.Status.Conditions[0].Status != ready
		}
		if pod.Labels["spilo-role"] != role || stale(pod) {
			// To be written: from the API server, not a cache that may
			// not hold this operator's last write yet.
			if pod, err = pods.Get(ctx, name, metav1.GetOptions{}); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", name, err))
				continue
			}
		}
		if pod.Labels["spilo-role"] != role {
			pod.Labels["spilo-role"] = role
			if pod, err = pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: label: %w", name, err))
				continue
			}
		}
		if stale(pod) {
			pod.Status.Phase = corev1.PodRunning
			pod.Status.PodIP = m.ip
			pod.Status.PodIPs = []corev1.PodIP{{IP: m.ip}}
			pod.Status.HostIP = o.addrs.NodeIP().String()
			pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: ready, LastTransitionTime: metav1.Now()}}
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "postgres", Image: "pglab/patroni:15", Ready: ready == corev1.ConditionTrue,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}
			if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: status: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (o *Operator) setStatus(ctx context.Context, cr *unstructured.Unstructured, status, msg string) {
	cur, _, _ := unstructured.NestedString(cr.Object, "status", "PostgresClusterStatus")
	curMsg, _, _ := unstructured.NestedString(cr.Object, "status", "message")
	if cur == status && curMsg == msg {
		return
	}
	u := cr.DeepCopy()
	_ = unstructured.SetNestedField(u.Object, status, "status", "PostgresClusterStatus")
	_ = unstructured.SetNestedField(u.Object, msg, "status", "message")
	if _, err := o.dyn.Resource(GVR).Namespace(cr.GetNamespace()).UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil {
		o.log.Warn("status", "cluster", cr.GetNamespace()+"/"+cr.GetName(), "err", err)
		return
	}
	o.log.Info("status", "cluster", cr.GetNamespace()+"/"+cr.GetName(), "status", status, "message", msg)
}

// teardown removes what a deleted CR had, as the real operator does.
func (o *Operator) teardown(ctx context.Context, c *cluster) {
	spec := c.spec
	o.log.Info("cluster deleted; tearing down", "cluster", spec.key())
	o.dropSession(c)
	entries, _ := os.ReadDir(c.dir)
	for _, e := range entries {
		if i, err := strconv.Atoi(e.Name()); err == nil {
			o.removeMember(ctx, c, i)
		}
	}
	_ = os.RemoveAll(c.dir)
	if err := lab.DeleteEtcdPrefix(ctx, o.state.SiteEtcdEndpoint(), o.dcsNamespace(spec)+spec.Name+"/"); err != nil {
		o.log.Warn("dcs", "cluster", spec.key(), "err", err)
	}
	for _, name := range []string{spec.Name, spec.Name + "-repl"} {
		_ = o.kube.CoreV1().Services(spec.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
		o.ips.release(spec.Namespace + "/" + name)
	}
	_ = o.kube.CoreV1().Secrets(spec.Namespace).Delete(ctx, CredentialsSecret(spec.Name), metav1.DeleteOptions{})
}

func splitHostPort(hp string) (string, int) {
	i := strings.LastIndexByte(hp, ':')
	if i < 0 {
		return hp, 0
	}
	p, _ := strconv.Atoi(hp[i+1:])
	return hp[:i], p
}

func chownPostgres(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup(lab.PostgresUser)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(path, uid, gid)
}
