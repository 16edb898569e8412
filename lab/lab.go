package lab

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/lab/ports"
	"github.com/pgtopo/pgtopo/lab/proc"
)

//go:embed crd.yaml
var crdYAML []byte

// Binaries the lab runs, and how to get each.
const (
	EtcdBinary      = "/usr/bin/etcd"
	PatroniBinary   = "/usr/bin/patroni"
	PostgresBinDir  = "/usr/lib/postgresql/15/bin"
	PostgresUser    = "postgres"
	installPackages = "apt-get install -y etcd-server patroni postgresql-15 (or: make deps)"
)

// Config of a lab to bring up.
type Config struct {
	Dir   string
	Sites []string
	// PatroniSites are sites of Patroni clusters outside Kubernetes, as
	// on VMs: no apiserver, one Patroni cluster each (PatroniCluster).
	PatroniSites []string
	// PatroniStandbyOf starts a Patroni site's cluster as a standby
	// cluster of another Patroni site's endpoint, with no slot, as a DBA
	// might by hand: the multi-DC bootstrap pitfall, for drills. Keyed by
	// the standby's site.
	PatroniStandbyOf map[string]string
	// Namespaces created in every site (default: db).
	Namespaces []string
	// Netns puts every Kubernetes site in a network namespace of its own
	// (root only; no Patroni sites): a partition cuts its link, both ways.
	Netns bool
	// BinDir holds kube-apiserver and pglab (default: the repository's bin/).
	BinDir string
	// Progress receives one line per stage; nil discards.
	Progress io.Writer
}

// State is what a running lab records in DIR/state.json.
type State struct {
	Dir            string      `json:"dir"`
	Slot           int         `json:"slot"`
	EtcdClientPort int         `json:"etcdClientPort"`
	EtcdPeerPort   int         `json:"etcdPeerPort"`
	BinDir         string      `json:"binDir"`
	Sites          []SiteState `json:"sites"`
	Started        time.Time   `json:"started"`
	// Netns: each Kubernetes site lives in a network namespace (netns.go).
	Netns bool `json:"netns,omitempty"`
}

// SiteState is one site of a running lab.
type SiteState struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	// Patroni: a site of Patroni clusters outside Kubernetes (VMs); it
	// has no context and no apiserver.
	Patroni bool `json:"patroni,omitempty"`
	// StandbyOf names the Patroni site whose endpoint this site's cluster
	// bootstrapped from as a standby, without a slot.
	StandbyOf string `json:"standbyOf,omitempty"`
	Context   string `json:"context,omitempty"`
	// APIServerPort is the site's gateway, which the kubeconfig names;
	// APIServerInternalPort the apiserver itself, for the site's own
	// operator (see Cutoff).
	APIServerPort         int `json:"apiServerPort"`
	APIServerInternalPort int `json:"apiServerInternalPort"`
}

// Addrs returns the site's address block.
func (s State) Addrs(site SiteState) SiteAddrs {
	return SiteAddrs{Slot: s.Slot, Index: site.Index, Routed: s.Netns}
}

// EtcdEndpoint is host:port of the shared etcd.
func (s State) EtcdEndpoint() string { return fmt.Sprintf("127.0.0.1:%d", s.EtcdClientPort) }

// SiteEtcdEndpoint is the etcd a Kubernetes site's apiserver and operator
// use, as seen from inside the site: its own in a lab with namespaces,
// the shared one otherwise.
func (s State) SiteEtcdEndpoint() string {
	if s.Netns {
		return fmt.Sprintf("127.0.0.1:%d", siteEtcdPort)
	}
	return s.EtcdEndpoint()
}

// GatewayAddr is where a site's apiserver gateway listens: the node's
// address in a lab with namespaces (routed to from outside), loopback
// otherwise.
func (s State) GatewayAddr(site SiteState) string {
	if s.Netns {
		return fmt.Sprintf("%s:%d", s.Addrs(site).NodeIP(), site.APIServerPort)
	}
	return fmt.Sprintf("127.0.0.1:%d", site.APIServerPort)
}

// Site returns the named site.
func (s State) Site(name string) (SiteState, bool) {
	for _, x := range s.Sites {
		if x.Name == name {
			return x, true
		}
	}
	return SiteState{}, false
}

// KubeSites lists the lab's Kubernetes sites.
func (s State) KubeSites() []SiteState {
	var out []SiteState
	for _, x := range s.Sites {
		if !x.Patroni {
			out = append(out, x)
		}
	}
	return out
}

// ContextName is the kubeconfig context of a lab site.
func ContextName(site string) string { return "lab-" + site }

// Load reads a lab's state.
func Load(dir string) (*State, error) {
	b, err := os.ReadFile(Paths{dir}.State())
	if err != nil {
		return nil, fmt.Errorf("lab %s: no state (is it up?): %w", dir, err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab %s: state: %w", dir, err)
	}
	return &s, nil
}

// Preflight checks every dependency and says how to install what is missing.
func Preflight(binDir string) error {
	var missing []string
	for _, f := range []struct{ path, fix string }{
		{EtcdBinary, installPackages},
		{PatroniBinary, installPackages},
		{filepath.Join(PostgresBinDir, "postgres"), installPackages},
		{filepath.Join(binDir, "kube-apiserver"), "make lab-bin"},
		{filepath.Join(binDir, "pglab"), "make build"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			missing = append(missing, fmt.Sprintf("%s (install: %s)", f.path, f.fix))
		}
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup(PostgresUser); err != nil {
			missing = append(missing, "user postgres (install: "+installPackages+")")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("lab dependencies missing:\n  %s", strings.Join(missing, "\n  "))
	}
	return nil
}

// Up starts a lab and returns its state once every site serves.
func Up(ctx context.Context, cfg Config) (st *State, err error) {
	if len(cfg.Sites) == 0 || len(cfg.Sites)+len(cfg.PatroniSites) > MaxSites {
		return nil, fmt.Errorf("lab: need 1 to %d sites, at least one of them a Kubernetes site; got %d and %d Patroni sites", MaxSites, len(cfg.Sites), len(cfg.PatroniSites))
	}
	if len(cfg.Namespaces) == 0 {
		cfg.Namespaces = []string{"db"}
	}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
		return nil, err
	}
	if cfg.BinDir, err = filepath.Abs(cfg.BinDir); err != nil {
		return nil, err
	}
	if err := Preflight(cfg.BinDir); err != nil {
		return nil, err
	}
	if cfg.Netns {
		if err := netnsPreflight(); err != nil {
			return nil, err
		}
		if len(cfg.PatroniSites) > 0 {
			return nil, fmt.Errorf("lab: network namespaces are for Kubernetes sites only; leave out the Patroni sites (%s)", strings.Join(cfg.PatroniSites, ", "))
		}
	}
	p := Paths{cfg.Dir}
	if old, err := Load(cfg.Dir); err == nil && proc.Alive(proc.ReadPid(p.Pid("etcd"))) {
		return nil, fmt.Errorf("lab %s is already up (slot %d); run pglab down --dir %s first", cfg.Dir, old.Slot, cfg.Dir)
	}
	for _, d := range []string{cfg.Dir, p.Logs(), p.Pids(), p.Etcd()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := reachableByPostgres(cfg.Dir); err != nil {
		return nil, err
	}
	slot, err := claimSlot(slotDir, cfg.Dir)
	if err != nil {
		return nil, err
	}
	started := time.Now()
	st = &State{Dir: cfg.Dir, Slot: slot, BinDir: cfg.BinDir, Started: started, Netns: cfg.Netns}
	defer func() {
		if err != nil {
			_ = Down(cfg.Dir)
		}
	}()
	for i, name := range cfg.Sites {
		st.Sites = append(st.Sites, SiteState{Name: name, Index: i, Context: ContextName(name)})
	}
	for i, name := range cfg.PatroniSites {
		st.Sites = append(st.Sites, SiteState{Name: name, Index: len(cfg.Sites) + i, Patroni: true, StandbyOf: cfg.PatroniStandbyOf[name]})
	}
	for standby, of := range cfg.PatroniStandbyOf {
		if !slices.Contains(cfg.PatroniSites, standby) || !slices.Contains(cfg.PatroniSites, of) || standby == of {
			return nil, fmt.Errorf("lab: --patroni-standby %s=%s: both must be Patroni sites, and differ", standby, of)
		}
	}
	if _, err := PatroniCredentials(cfg.Dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(p.PKI(), 0o700); err != nil {
		return nil, err
	}
	if err := ensurePostgresCAs(p, st.Sites); err != nil {
		return nil, fmt.Errorf("lab: PostgreSQL CAs: %w", err)
	}
	if _, err := ObserverCredentials(cfg.Dir); err != nil { // once, before the operators read it
		return nil, fmt.Errorf("lab: observer login: %w", err)
	}
	picked, err := ports.Free(2 + 2*len(cfg.Sites))
	if err != nil {
		return nil, err
	}
	st.EtcdClientPort, st.EtcdPeerPort = picked[0], picked[1]
	for i := range cfg.Sites {
		st.Sites[i].APIServerPort, st.Sites[i].APIServerInternalPort = picked[2+2*i], picked[3+2*i]
	}
	if err := writeState(st); err != nil {
		return nil, err
	}
	k := pki{dir: p.PKI()}
	var nodes []string
	for _, s := range st.KubeSites() {
		nodes = append(nodes, st.Addrs(s).NodeIP().String())
	}
	if err := k.ensure(nodes); err != nil {
		return nil, err
	}
	if st.Netns {
		if err := setUpNetwork(st); err != nil {
			return nil, err
		}
	}
	token, err := adminToken(p)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.AuditPolicy(), []byte(auditPolicy), 0o644); err != nil {
		return nil, err
	}

	fmt.Fprintf(progress, "lab: etcd on %s\n", st.EtcdEndpoint())
	if err := startEtcd(st); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, fmt.Sprintf("http://%s/health", st.EtcdEndpoint()), nil, "", 30*time.Second); err != nil {
		return nil, fmt.Errorf("etcd: %w (log: %s)", err, p.Log("etcd"))
	}
	caPEM, err := os.ReadFile(k.caCert())
	if err != nil {
		return nil, err
	}
	if err := writeKubeconfig(st, caPEM, token); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(st.Sites))
	for i, site := range st.Sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = startSite(ctx, st, site, k, caPEM, token, cfg.Namespaces, progress)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "lab: up in %.1fs: %d sites (%s)\n", time.Since(started).Seconds(), len(st.Sites), strings.Join(slices.Concat(cfg.Sites, cfg.PatroniSites), ", "))
	return st, nil
}

// auditPolicy records, at Metadata level, every request of a service
// account (the identity an in-cluster pgtopo Job uses) and nothing else, so
// tests can compare what was called with the RBAC that allowed it.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
`

func startSite(ctx context.Context, st *State, site SiteState, k pki, caPEM []byte, token string, namespaces []string, progress io.Writer) error {
	p := Paths{st.Dir}
	if err := os.MkdirAll(p.Site(site.Name), 0o755); err != nil {
		return err
	}
	addrs := st.Addrs(site)
	if site.Patroni {
		return startPatroniSite(ctx, st, site, progress)
	}
	fmt.Fprintf(progress, "lab: site %s: kube-apiserver on %s (gateway), services in %s, node %s\n",
		site.Name, st.GatewayAddr(site), addrs.ServiceCIDR(), addrs.NodeIP())
	if st.Netns {
		if err := setUpSite(st, site); err != nil {
			return err
		}
		if err := startSiteEtcd(st, site); err != nil {
			return err
		}
		url := fmt.Sprintf("http://%s:%d/health", addrs.NodeIP(), siteEtcdPort)
		if err := waitHTTP(ctx, url, nil, "", 30*time.Second); err != nil {
			return fmt.Errorf("site %s: etcd: %w (log: %s)", site.Name, err, p.Log("etcd-"+site.Name))
		}
	}
	if err := startAPIServer(ctx, st, site, k, caPEM, token); err != nil {
		return err
	}
	cfg, err := RESTConfig(st.Dir, site.Name)
	if err != nil {
		return err
	}
	if err := installCRD(ctx, cfg); err != nil {
		return fmt.Errorf("site %s: %w", site.Name, err)
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if err := ensureNode(ctx, kc, site, addrs); err != nil {
		return fmt.Errorf("site %s: node: %w", site.Name, err)
	}
	for _, ns := range namespaces {
		_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("site %s: namespace %s: %w", site.Name, ns, err)
		}
	}
	return startOperator(st, site)
}

// startAPIServer starts a site's kube-apiserver on its internal port and
// the gateway in front of it, and waits until both serve.
func startAPIServer(ctx context.Context, st *State, site SiteState, k pki, caPEM []byte, token string) error {
	p := Paths{st.Dir}
	addrs := st.Addrs(site)
	args := []string{
		"--etcd-servers=http://" + st.SiteEtcdEndpoint(),
		fmt.Sprintf("--etcd-prefix=/pglab-%d/%s", st.Slot, site.Name),
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", site.APIServerInternalPort),
		"--advertise-address=" + addrs.NodeIP().String(),
		"--tls-cert-file=" + k.serverCert(),
		"--tls-private-key-file=" + k.serverKey(),
		"--client-ca-file=" + k.caCert(),
		"--service-account-issuer=https://pglab.invalid/" + site.Name,
		"--service-account-key-file=" + k.serviceAccountKey(),
		"--service-account-signing-key-file=" + k.serviceAccountKey(),
		"--token-auth-file=" + filepath.Join(p.PKI(), "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=" + addrs.ServiceCIDR().String(),
		"--service-node-port-range=30000-32767",
		// No controller-manager runs, so nothing creates default service
		// accounts; the lab operator's pods carry none.
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--cert-dir=" + p.SiteCerts(site.Name),
		"--audit-policy-file=" + p.AuditPolicy(),
		"--audit-log-path=" + p.AuditLog(site.Name),
		"--audit-log-format=json",
	}
	name := "apiserver-" + site.Name
	path, args := st.InSite(site, filepath.Join(st.BinDir, "kube-apiserver"), args...)
	if _, err := startProc(name, path, args, p.Log(name), p.Pid(name), nil); err != nil {
		return err
	}
	// In a namespace the internal port is the site's alone: the gateway
	// is waited for instead, for as long.
	gatewayWait := 90 * time.Second
	if !st.Netns {
		url := fmt.Sprintf("https://127.0.0.1:%d/readyz", site.APIServerInternalPort)
		if err := waitHTTP(ctx, url, caPEM, token, 90*time.Second); err != nil {
			return fmt.Errorf("site %s: kube-apiserver: %w (log: %s)", site.Name, err, p.Log(name))
		}
		gatewayWait = 30 * time.Second
	}
	gw := "gateway-" + site.Name
	path, args = st.InSite(site, filepath.Join(st.BinDir, "pglab"), "gateway", "--dir", st.Dir, "--site", site.Name)
	if _, err := startProc(gw, path, args, p.Log(gw), p.Pid(gw), nil); err != nil {
		return err
	}
	url := fmt.Sprintf("https://%s/readyz", st.GatewayAddr(site))
	if err := waitHTTP(ctx, url, caPEM, token, gatewayWait); err != nil {
		return fmt.Errorf("site %s: gateway: %w (logs: %s, %s)", site.Name, err, p.Log(gw), p.Log(name))
	}
	return nil
}

// startProc starts a lab process, detached, with its log and pid file.
func startProc(name, path string, args []string, log, pid string, env []string) (int, error) {
	return proc.Start(proc.Spec{Name: name, Path: path, Args: args, LogFile: log, PidFile: pid, Env: env})
}

func startOperator(st *State, site SiteState) error {
	p := Paths{st.Dir}
	opName := "operator-" + site.Name
	path, args := st.InSite(site, filepath.Join(st.BinDir, "pglab"), "operator", "--dir", st.Dir, "--site", site.Name)
	_, err := startProc(opName, path, args, p.Log(opName), p.Pid(opName), nil)
	return err
}

// NodeName of a site's one Node.
func NodeName(site string) string { return "lab-" + site + "-node" }

func ensureNode(ctx context.Context, kc kubernetes.Interface, site SiteState, addrs SiteAddrs) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName(site.Name),
		Labels: map[string]string{"kubernetes.io/hostname": NodeName(site.Name), "topology.kubernetes.io/zone": site.Name}}}
	n, err := kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		n, err = kc.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	}
	if err != nil {
		return err
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addrs.NodeIP().String()},
		{Type: corev1.NodeHostName, Address: node.Name}}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "LabNode", Message: "pglab node", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	_, err = kc.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func installCRD(ctx context.Context, cfg *rest.Config) error {
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(crdYAML, &obj); err != nil {
		return fmt.Errorf("crd.yaml: %w", err)
	}
	u := &unstructured.Unstructured{Object: obj}
	if _, err := dc.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("install CRD %s: %w", u.GetName(), err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got, err := dc.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("CRD %s not established after 30s", u.GetName())
}

func startEtcd(st *State) error {
	p := Paths{st.Dir}
	client := fmt.Sprintf("http://127.0.0.1:%d", st.EtcdClientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", st.EtcdPeerPort)
	_, err := proc.Start(proc.Spec{Name: "etcd", Path: EtcdBinary, Args: []string{
		"--name=pglab", "--data-dir=" + p.Etcd(),
		"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=pglab=" + peer,
		"--quota-backend-bytes=2147483648", "--snapshot-count=10000",
	}, LogFile: p.Log("etcd"), PidFile: p.Pid("etcd"),
		// etcd 3.4 on amd64 needs no ETCD_UNSUPPORTED_ARCH; keep its logs terse.
		Env: []string{"ETCD_LOG_LEVEL=warn"}})
	return err
}

// adminToken creates (once) the static token of the lab's cluster admin.
func adminToken(p Paths) (string, error) {
	path := filepath.Join(p.PKI(), "tokens.csv")
	if b, err := os.ReadFile(path); err == nil {
		return strings.SplitN(string(b), ",", 2)[0], nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	token := hex.EncodeToString(raw)
	line := fmt.Sprintf("%s,pglab-admin,pglab-admin,\"system:masters\"\n", token)
	return token, os.WriteFile(path, []byte(line), 0o600)
}

func writeKubeconfig(st *State, caPEM []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	for _, s := range st.KubeSites() {
		cfg.Clusters[s.Context] = &clientcmdapi.Cluster{Server: "https://" + st.GatewayAddr(s), CertificateAuthorityData: caPEM}
		cfg.AuthInfos[s.Context] = &clientcmdapi.AuthInfo{Token: token}
		cfg.Contexts[s.Context] = &clientcmdapi.Context{Cluster: s.Context, AuthInfo: s.Context, Namespace: "db"}
	}
	if kube := st.KubeSites(); len(kube) > 0 {
		cfg.CurrentContext = kube[0].Context
	}
	return clientcmd.WriteToFile(*cfg, Paths{st.Dir}.Kubeconfig())
}

// RESTConfig returns a client config for one site of a lab.
func RESTConfig(dir, site string) (*rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: Paths{dir}.Kubeconfig()}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: ContextName(site)}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("lab site %s: %w", site, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

// InternalRESTConfig reaches a site's apiserver from inside the site,
// past its gateway: what the site's own operator uses, so that a partition
// cuts off only the outside. In a lab with namespaces only a process in
// the site's namespace reaches it (OutsideRESTConfig is for the others).
func InternalRESTConfig(dir, site string) (*rest.Config, error) {
	cfg, err := RESTConfig(dir, site)
	if err != nil {
		return nil, err
	}
	_, s, err := loadSite(dir, site)
	if err != nil {
		return nil, err
	}
	cfg.Host = fmt.Sprintf("https://127.0.0.1:%d", s.APIServerInternalPort)
	return cfg, nil
}

func writeState(st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := Paths{st.Dir}.State() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, Paths{st.Dir}.State())
}

func waitHTTP(ctx context.Context, url string, caPEM []byte, token string, timeout time.Duration) error {
	tr := &http.Transport{}
	if caPEM != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("not ready after %s: %v", timeout, last)
}

// slotDir records which lab holds which address slot.
const slotDir = "/tmp/pglab-slots"

// claimSlot takes the first address slot that no live lab holds. A slot
// file names the lab directory and the process that claimed it: until the
// lab's etcd runs, the claimer being alive is what keeps the slot, so two
// labs starting at once (test packages run in parallel) never share one.
func claimSlot(slots, dir string) (int, error) {
	if err := os.MkdirAll(slots, 0o755); err != nil {
		return 0, err
	}
	for s := 0; s < MaxSlots; s++ {
		path := filepath.Join(slots, strconv.Itoa(s))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, os.ErrExist) {
			if slotStale(path, dir) {
				_ = os.Remove(path)
				s--
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		_, err = fmt.Fprintf(f, "%s\n%d\n", dir, os.Getpid())
		f.Close()
		return s, err
	}
	return 0, fmt.Errorf("lab: all %d address slots are taken; run pglab down on labs you no longer need", MaxSlots)
}

// slotStale reports whether a slot file's lab is gone: neither its etcd nor
// the process that claimed it runs. A file still being written (empty and
// new) is not stale.
func slotStale(path, dir string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	owner, claimer := slotOwner(data)
	if owner == "" {
		info, err := os.Stat(path)
		return err == nil && time.Since(info.ModTime()) > 10*time.Second
	}
	if owner == dir || labAlive(owner) {
		return false
	}
	return claimer == 0 || !proc.Alive(claimer)
}

// slotOwner reads a slot file: the lab directory, then the claimer's pid.
func slotOwner(data []byte) (dir string, claimer int) {
	dir, pid, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	claimer, _ = strconv.Atoi(strings.TrimSpace(pid))
	return dir, claimer
}

func labAlive(dir string) bool {
	return dir != "" && proc.Alive(proc.ReadPid(Paths{dir}.Pid("etcd")))
}

func releaseSlot(st *State) {
	path := filepath.Join(slotDir, strconv.Itoa(st.Slot))
	data, _ := os.ReadFile(path)
	if owner, _ := slotOwner(data); owner == st.Dir {
		_ = os.Remove(path)
	}
}

// reachableByPostgres checks that PostgreSQL, running as postgres, can reach
// the lab directory: every parent must be searchable by others.
func reachableByPostgres(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("lab %s: the postgres user cannot enter %s; chmod o+x %s or choose another --dir", dir, d, d)
		}
		if d == "/" {
			return nil
		}
	}
}

// OutsideRESTConfig is how a lab's own tools outside the sites reach one:
// past the gateway on a lab without namespaces (a partition cuts only
// pgtopo off), through it with them (nothing outside reaches a cut site).
func OutsideRESTConfig(dir, site string) (*rest.Config, error) {
	st, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if st.Netns {
		return RESTConfig(dir, site)
	}
	return InternalRESTConfig(dir, site)
}
