package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/proc"
)

// VMSite supervises a lab site of Patroni outside Kubernetes, as VMs with
// systemd and HAProxy would: it starts the cluster's members (member 0
// bootstraps it as a new primary), restarts a member that dies, and keeps
// the cluster's endpoint pointed at the member Patroni reports as leader.
// It never touches Patroni's dynamic configuration: on VMs, that is
// pgtopo's (or a DBA's) to change through the REST API.
type VMSite struct {
	state   *lab.State
	site    lab.SiteState
	cluster lab.PatroniCluster
	creds   map[string]string
	log     *slog.Logger
	patroni patroniClient
	proxies *proxies
	leader  atomic.Pointer[string]
}

// NewVMSite prepares the supervisor of a lab's Patroni site.
func NewVMSite(dir, site string, log *slog.Logger) (*VMSite, error) {
	st, err := lab.Load(dir)
	if err != nil {
		return nil, err
	}
	s, ok := st.Site(site)
	if !ok || !s.Patroni {
		return nil, fmt.Errorf("lab %s has no Patroni site %q", dir, site)
	}
	c, err := st.PatroniCluster(s)
	if err != nil {
		return nil, err
	}
	creds, err := lab.PatroniCredentials(st.Dir)
	if err != nil {
		return nil, err
	}
	return &VMSite{state: st, site: s, cluster: c, creds: creds, log: log, patroni: newPatroniClient(), proxies: newProxies(log)}, nil
}

// Run supervises until ctx ends; the members keep running after it, as
// VMs outlive a monitoring agent.
func (v *VMSite) Run(ctx context.Context) error {
	defer v.proxies.closeAll()
	v.proxies.cut = lab.WatchCutoff(ctx, v.state.Dir, v.site.Name)
	if err := v.proxies.ensure(v.cluster.Endpoint, v.leaderAddr); err != nil {
		return fmt.Errorf("endpoint %s: %w", v.cluster.Endpoint, err)
	}
	v.log.Info("patroni site started", "cluster", v.cluster.Name, "endpoint", v.cluster.Endpoint)
	deaths := map[int]int{}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		v.pass(ctx, deaths)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (v *VMSite) leaderAddr() string {
	if l := v.leader.Load(); l != nil && *l != "" {
		return *l + ":5432"
	}
	return ""
}

// pass starts members in order (each once the one before it runs) and
// routes the endpoint to the leader. A leader that restarts as a standby
// leader keeps the route, as HAProxy's /primary check would drop it only
// once another member leads.
func (v *VMSite) pass(ctx context.Context, deaths map[int]int) {
	leader := ""
	prevRunning := true
	for i, ip := range v.cluster.Members {
		dir := v.memberDir(i)
		pid := proc.ReadPid(filepath.Join(dir, "patroni.pid"))
		if !proc.Alive(pid) && prevRunning {
			if pid != 0 {
				deaths[i]++
				v.log.Warn("member died; restarting", "member", v.memberName(i), "deaths", deaths[i])
			}
			if err := v.startMember(i, ip); err != nil {
				v.log.Warn("start member", "member", v.memberName(i), "err", err)
			}
		}
		st, err := v.patroni.status(ctx, ip)
		prevRunning = err == nil && st.State == "running"
		if prevRunning && st.IsLeader() {
			leader = ip
		}
	}
	if cur := v.leader.Load(); leader != "" && (cur == nil || *cur != leader) {
		v.log.Info("endpoint follows the leader", "leader", leader)
		v.leader.Store(&leader)
	}
}

func (v *VMSite) memberName(i int) string { return fmt.Sprintf("%s-%d", v.cluster.Name, i) }

func (v *VMSite) memberDir(i int) string {
	return lab.Paths{Dir: v.state.Dir}.PatroniMemberDir(v.site.Name, v.cluster.Name, i)
}

func (v *VMSite) startMember(i int, ip string) error {
	dir := v.memberDir(i)
	sock := filepath.Join(lab.SocketRoot(v.state.Slot), ip)
	if err := memberDirs(dir, sock); err != nil {
		return err
	}
	endpointHost, _, _ := strings.Cut(v.cluster.Endpoint, ":")
	if _, err := ensureServing(v.state.Dir, v.site.Name, dir, v.memberName(i), []string{ip, endpointHost}); err != nil {
		return fmt.Errorf("member %s: certificate: %w", v.memberName(i), err)
	}
	mc := memberConfig{
		TLS:   memberTLS(dir),
		Scope: v.cluster.Name, Namespace: v.state.PatroniDCSNamespace(v.site.Name), Name: v.memberName(i), IP: ip,
		Etcd: v.state.EtcdEndpoint(), DataDir: filepath.Join(dir, "data"), PgPass: filepath.Join(dir, "pgpass"), SocketDir: sock,
		User: v.creds[lab.EnvPGUser], Password: v.creds[lab.EnvPGPassword],
		RESTUser: v.creds[lab.EnvRESTUser], RESTPassword: v.creds[lab.EnvRESTPassword],
		// The drills read the last commit's time on a returned primary.
		Parameters: map[string]string{"track_commit_timestamp": "on"},
	}
	if b, err := os.ReadFile(lab.Paths{Dir: v.state.Dir}.PatroniBootstrapFile(v.site.Name)); err == nil {
		// Rebuilt by hand as a standby cluster: the bootstrap a DBA put
		// into patroni.yml from pgtopo render patroni-bootstrap.
		if err := json.Unmarshal(b, &mc.Standby); err != nil {
			return fmt.Errorf("%s: %w", lab.Paths{Dir: v.state.Dir}.PatroniBootstrapFile(v.site.Name), err)
		}
	} else if of := v.site.StandbyOf; of != "" {
		// By hand, as in the pitfall: a standby of the other site's
		// endpoint, bootstrapped by base backup, with no slot.
		other, _ := v.state.Site(of)
		oc, err := v.state.PatroniCluster(other)
		if err != nil {
			return err
		}
		host, port, _ := strings.Cut(oc.Endpoint, ":")
		p, _ := strconv.Atoi(port)
		mc.Standby = standbyConfig(host, p, "")
	}
	err := startPatroni(mc, dir, v.state.BinDir, false)
	if err == nil {
		v.log.Info("member started", "member", mc.Name, "ip", ip)
	}
	return err
}
