package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/pgtopo/pgtopo/flavor"
	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

const fourSites = `apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata: {name: bench}
spec:
  postgres: {version: "15", parameters: {max_slot_wal_keep_size: 10GB}, tls: {ca: {configMap: {name: pglab-postgres-ca}}}}
  replication: {serviceType: NodePort}
  sites:
    - {name: s1, context: lab-s1}
    - {name: s2, context: lab-s2}
    - {name: s3, context: lab-s3}
    - {name: s4, context: lab-s4}
  clusters:
    - {name: bench-s1, site: s1, namespace: db, volume: {size: 1Gi}, instances: 1}
    - {name: bench-s2, site: s2, namespace: db, volume: {size: 1Gi}, instances: 1}
    - {name: bench-s3, site: s3, namespace: db, volume: {size: 1Gi}, instances: 1}
    - {name: bench-s4, site: s4, namespace: db, volume: {size: 1Gi}, instances: 1}
  primary: bench-s1
`

// BenchmarkObserve measures one snapshot of a converged four-site topology
// taken in parallel and one site after another, side by side in the same
// run, and reports their ratio (goal: parallel under 0.4 of sequential).
//
// It measures twice. On the lab as it is, every site is on this machine and
// a snapshot is CPU work of the apiservers, etcd, PostgreSQL and pgtopo, so
// the core count bounds the ratio; the bench prints where that CPU goes.
// Then with an emulated distance to each site (wanRTT added to every API
// request and every database round trip), which is what sites in several
// clusters, often in several regions, look like to pgtopo.
func BenchmarkObserve(b *testing.B) {
	h := newHarness(b, "s1", "s2", "s3", "s4")
	file := filepath.Join(h.dir, "bench.yaml")
	if err := os.WriteFile(file, []byte(fourSites), 0o644); err != nil {
		b.Fatal(err)
	}
	if r := h.pgtopo("apply", "-f", file); r.code != 0 {
		b.Fatalf("apply: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	v, _ := schema.NewValidator()
	top, _, err := v.Load(file, []byte(fourSites))
	if err != nil || top == nil {
		b.Fatal(err)
	}
	d, err := top.Desired()
	if err != nil {
		b.Fatal(err)
	}
	// Clients and database sessions are reused across snapshots, as pgtopo
	// does within a run.
	obs := func(sequential bool, rtt time.Duration) *live.Observer {
		sites := &kube.Sites{Loader: kube.Loader{Kubeconfig: lab.Paths{Dir: h.lab.Dir}.Kubeconfig()}}
		keep := &live.Conns{}
		b.Cleanup(keep.Close)
		op, err := flavor.Lookup(d.Flavor)
		if err != nil {
			b.Fatal(err)
		}
		o := &live.Observer{Prober: distantProber{live.PgxProber{Keep: keep, Catalogue: op.Catalogue}, rtt}, Names: op.Names, Connect: func(site topology.Site) (live.SiteAPI, error) {
			c := site.Context
			s, err := sites.Connect(c)
			if err != nil {
				return nil, err
			}
			return distantSite{flavor.Site{Site: s, Op: op}, rtt}, nil
		}}
		if sequential {
			o.Run = inTurn
		}
		return o
	}
	var parBusy, seqBusy machineTime
	parByProc := processTime{}
	measure := func(o *live.Observer, busy *machineTime, byProc processTime) time.Duration {
		before, procsBefore := readMachineTime(b), readProcessTime()
		start := time.Now()
		snap := o.Observe(context.Background(), d)
		took := time.Since(start)
		if busy != nil {
			busy.add(readMachineTime(b).since(before))
		}
		if byProc != nil {
			byProc.add(readProcessTime().since(procsBefore))
		}
		for _, c := range snap.Clusters {
			if c.PG == nil {
				b.Fatalf("%s not observed: %s", c.Name, c.PGError)
			}
		}
		return took
	}
	const wanRTT = 20 * time.Millisecond
	parallel, sequential := obs(false, 0), obs(true, 0)
	wanParallel, wanSequential := obs(false, wanRTT), obs(true, wanRTT)
	for _, o := range []*live.Observer{parallel, sequential, wanParallel, wanSequential} {
		measure(o, nil, nil) // build the clients and sessions outside the measurement
	}
	b.ResetTimer()
	var par, seq, wanPar, wanSeq time.Duration
	for i := 0; i < b.N; i++ {
		for j := 0; j < 5; j++ {
			par += measure(parallel, &parBusy, parByProc)
			seq += measure(sequential, &seqBusy, nil)
			wanPar += measure(wanParallel, nil, nil)
			wanSeq += measure(wanSequential, nil, nil)
		}
	}
	n := time.Duration(5 * b.N)
	ratio, wanRatio := float64(par)/float64(seq), float64(wanPar)/float64(wanSeq)
	b.ReportMetric(float64((par/n).Microseconds())/1000, "ms/parallel")
	b.ReportMetric(float64((seq/n).Microseconds())/1000, "ms/sequential")
	b.ReportMetric(ratio, "parallel/sequential")
	b.ReportMetric(wanRatio, "parallel/sequential@20ms")
	fmt.Printf("observe 4 sites on this machine: parallel %s, sequential %s per snapshot, ratio %.2f\n",
		(par / n).Round(100*time.Microsecond), (seq / n).Round(100*time.Microsecond), ratio)
	// Whether the machine, not the code, is the limit: with every core busy,
	// parallel cannot beat sequential by more than the core count allows.
	fmt.Printf("  machine busy %.0f%% while parallel, %.0f%% while sequential (%d CPUs); CPU per parallel snapshot by process: %s\n",
		parBusy.percent(), seqBusy.percent(), runtime.NumCPU(), parByProc.per(int(n)))
	fmt.Printf("observe 4 sites %s away (emulated round trip per API request and database round trip): parallel %s, sequential %s per snapshot, ratio %.2f (goal < 0.40)\n",
		wanRTT, (wanPar / n).Round(100*time.Microsecond), (wanSeq / n).Round(100*time.Microsecond), wanRatio)

	// Sixteen sites 20 ms away. The lab stops at nine sites and two cores
	// run four here, so each of the four serves four virtual sites: a
	// virtual site's cluster bench-sK-vNN is the real bench-sK under
	// another name (every read and probe still goes to a real apiserver
	// and PostgreSQL).
	d16 := virtualSites(b, d, 16)
	virtual := func(sequential bool) *live.Observer {
		o := obs(sequential, wanRTT)
		connect := o.Connect
		o.Connect = func(site topology.Site) (live.SiteAPI, error) {
			api, err := connect(site)
			return renamed{api}, err
		}
		return o
	}
	par16, seq16 := virtual(false), virtual(true)
	measure16 := func(o *live.Observer) time.Duration {
		start := time.Now()
		snap := o.Observe(context.Background(), d16)
		took := time.Since(start)
		for _, c := range snap.Clusters {
			if c.PG == nil {
				b.Fatalf("%s not observed: %s %s", c.Name, c.Error, c.PGError)
			}
		}
		return took
	}
	measure16(par16)
	measure16(seq16)
	var p16, s16 time.Duration
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			p16 += measure16(par16)
			s16 += measure16(seq16)
		}
	}
	n16 := time.Duration(3 * b.N)
	ratio16 := float64(p16) / float64(s16)
	b.ReportMetric(ratio16, "parallel/sequential@20ms,16sites")
	fmt.Printf("observe 16 sites %s away: parallel %s, sequential %s per snapshot, ratio %.3f (goal <= 0.15)\n",
		wanRTT, (p16 / n16).Round(100*time.Microsecond), (s16 / n16).Round(100*time.Microsecond), ratio16)
}

// virtualSites is d spread over n sites: site vNN uses the context of d's
// site NN mod len, and holds the cluster <that site's cluster>-vNN.
func virtualSites(b *testing.B, d *topology.Desired, n int) *topology.Desired {
	sites := d.Sites()
	t := topology.Topology{APIVersion: topology.APIVersion, Kind: topology.Kind, Metadata: topology.Metadata{Name: d.Name},
		Spec: topology.Spec{Postgres: topology.Postgres{Version: "15"}, Replication: topology.Replication{ServiceType: d.ServiceType}}}
	for i := 1; i <= n; i++ {
		base := d.Clusters[(i-1)%len(d.Clusters)]
		site := sites[(i-1)%len(sites)]
		name := fmt.Sprintf("v%02d", i)
		t.Spec.Sites = append(t.Spec.Sites, topology.Site{Name: name, Context: site.Context})
		t.Spec.Clusters = append(t.Spec.Clusters, topology.Cluster{Name: base.Name + "-" + name, Site: name, Namespace: base.Namespace, Instances: 1})
	}
	t.Spec.Primary = t.Spec.Clusters[0].Name
	t.ApplyDefaults()
	out, err := t.Desired()
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// renamed serves a virtual site's names from the real cluster: a name
// with a -vNN suffix (in a Secret's name too) is read without it.
type renamed struct{ live.SiteAPI }

var virtualSuffix = regexp.MustCompile(`-v[0-9]{2}\b`)

func realName(name string) string { return virtualSuffix.ReplaceAllString(name, "") }

func (r renamed) ReadCluster(ctx context.Context, ns, name string) (*snapshot.Object, error) {
	return r.SiteAPI.ReadCluster(ctx, ns, realName(name))
}

func (r renamed) GetService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	return r.SiteAPI.GetService(ctx, ns, realName(name))
}

func (r renamed) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	return r.SiteAPI.GetSecret(ctx, ns, realName(name))
}

// ListClusters finds no orphans: the real clusters are not the virtual
// topology's.
func (r renamed) ListClusters(context.Context, string, string) ([]string, error) { return nil, nil }

// inTurn observes one site after another: the sequential side of the
// comparison.
func inTurn(fns []func()) {
	for _, fn := range fns {
		fn()
	}
}

// distantSite is a site's API as if the site were rtt away: each request
// (one round trip on the kept HTTP/2 connection) waits rtt before it goes.
type distantSite struct {
	live.SiteAPI
	rtt time.Duration
}

func (s distantSite) far() { time.Sleep(s.rtt) }

func (s distantSite) ReadCluster(ctx context.Context, ns, name string) (*snapshot.Object, error) {
	s.far()
	return s.SiteAPI.ReadCluster(ctx, ns, name)
}

func (s distantSite) ListClusters(ctx context.Context, ns, topology string) ([]string, error) {
	s.far()
	return s.SiteAPI.ListClusters(ctx, ns, topology)
}

func (s distantSite) GetService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	s.far()
	return s.SiteAPI.GetService(ctx, ns, name)
}

func (s distantSite) ListNodes(ctx context.Context) ([]corev1.Node, error) {
	s.far()
	return s.SiteAPI.ListNodes(ctx)
}

func (s distantSite) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	s.far()
	return s.SiteAPI.GetSecret(ctx, ns, name)
}

func (s distantSite) GetLease(ctx context.Context, ns, name string) (*coordinationv1.Lease, error) {
	s.far()
	return s.SiteAPI.GetLease(ctx, ns, name)
}

// distantProber probes as if the database were rtt away: a probe on a kept
// session is two round trips (the pipelined batch, multi_cluster_info).
type distantProber struct {
	live.Prober
	rtt time.Duration
}

func (p distantProber) Probe(ctx context.Context, ep snapshot.Endpoint, login live.Login) (*snapshot.PGState, error) {
	time.Sleep(2 * p.rtt)
	return p.Prober.Probe(ctx, ep, login)
}

// processTime is CPU time (user + system, in clock ticks) by process,
// counting children a process has reaped (PostgreSQL's short-lived
// backends show up under the postmaster).
type processTime map[int]procCPU

type procCPU struct {
	comm  string
	ticks int64
}

func readProcessTime() processTime {
	out := processTime{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// comm is in parentheses and may hold spaces; the fields after it
		// are numbered from state (field 3): utime 14, stime 15, cutime 16,
		// cstime 17.
		open, close := strings.IndexByte(string(data), '('), strings.LastIndexByte(string(data), ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(string(data[close+1:]))
		if len(f) < 15 {
			continue
		}
		var ticks int64
		for _, i := range []int{11, 12, 13, 14} {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
		comm := string(data[open+1 : close])
		if strings.HasPrefix(comm, "kworker") {
			comm = "kernel workers"
		}
		out[pid] = procCPU{comm: comm, ticks: ticks}
	}
	return out
}

// since is the CPU each process used between o and p; processes that
// started or exited in between are not counted (their parents count
// what they reaped).
func (p processTime) since(o processTime) processTime {
	d := processTime{}
	for pid, v := range p {
		if was, ok := o[pid]; ok && v.ticks > was.ticks {
			d[pid] = procCPU{comm: v.comm, ticks: v.ticks - was.ticks}
		}
	}
	return d
}

func (p processTime) add(o processTime) {
	for pid, v := range o {
		p[pid] = procCPU{comm: v.comm, ticks: p[pid].ticks + v.ticks}
	}
}

// per renders milliseconds of CPU per snapshot by command, the largest first.
func (p processTime) per(n int) string {
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	byComm := map[string]int64{}
	var total int64
	for _, v := range p {
		byComm[v.comm] += v.ticks
		total += v.ticks
	}
	names := make([]string, 0, len(byComm))
	for k := range byComm {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return byComm[names[i]] > byComm[names[j]] })
	var parts []string
	for _, k := range names {
		if d := time.Duration(byComm[k]) * tick / time.Duration(n); d >= time.Millisecond {
			parts = append(parts, fmt.Sprintf("%s %dms", k, d.Milliseconds()))
		}
	}
	return fmt.Sprintf("%dms in all: %s", (time.Duration(total) * tick / time.Duration(n)).Milliseconds(), strings.Join(parts, ", "))
}

// machineTime is busy and total CPU time of the whole machine, from
// /proc/stat, in clock ticks.
type machineTime struct{ busy, total int64 }

func readMachineTime(b *testing.B) machineTime {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	var m machineTime
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		m.total += v
		if i != 3 && i != 4 { // idle, iowait
			m.busy += v
		}
	}
	return m
}

func (m machineTime) since(o machineTime) machineTime {
	return machineTime{m.busy - o.busy, m.total - o.total}
}

func (m *machineTime) add(o machineTime) { m.busy += o.busy; m.total += o.total }

func (m machineTime) percent() float64 {
	if m.total == 0 {
		return 0
	}
	return 100 * float64(m.busy) / float64(m.total)
}
