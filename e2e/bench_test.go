package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/topology"
)

const fourSites = `apiVersion: pgtopo.dev/v1alpha1
kind: Topology
metadata: {name: bench}
spec:
  postgres: {version: "15", parameters: {max_slot_wal_keep_size: 10GB}}
  replication: {serviceType: NodePort}
  sites:
    - {name: s1, context: lab-s1}
    - {name: s2, context: lab-s2}
    - {name: s3, context: lab-s3}
    - {name: s4, context: lab-s4}
  clusters:
    - {name: bench-s1, site: s1, namespace: db, instances: 1}
    - {name: bench-s2, site: s2, namespace: db, instances: 1}
    - {name: bench-s3, site: s3, namespace: db, instances: 1}
    - {name: bench-s4, site: s4, namespace: db, instances: 1}
  primary: bench-s1
`

// BenchmarkObserve measures one snapshot of a converged four-site topology
// taken in parallel and one site after another, side by side in the same
// run, and reports their ratio (goal: parallel under 0.4 of sequential).
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
	// Clients are reused across snapshots, as pgtopo does within a run.
	obs := func(sequential bool) *live.Observer {
		sites := &kube.Sites{Loader: kube.Loader{Kubeconfig: lab.Paths{Dir: h.lab.Dir}.Kubeconfig()}}
		return &live.Observer{Prober: live.PgxProber{}, Sequential: sequential, Connect: func(c string) (live.SiteAPI, error) {
			s, err := sites.Connect(c)
			if err != nil {
				return nil, err
			}
			return s, nil
		}}
	}
	measure := func(o *live.Observer, d *topology.Desired) time.Duration {
		start := time.Now()
		snap := o.Observe(context.Background(), d)
		took := time.Since(start)
		for _, c := range snap.Clusters {
			if c.PG == nil {
				b.Fatalf("%s not observed: %s", c.Name, c.PGError)
			}
		}
		return took
	}
	parallel, sequential := obs(false), obs(true)
	measure(parallel, d) // build the clients outside the measurement
	measure(sequential, d)
	b.ResetTimer()
	var par, seq time.Duration
	for i := 0; i < b.N; i++ {
		for j := 0; j < 5; j++ {
			par += measure(parallel, d)
			seq += measure(sequential, d)
		}
	}
	ratio := float64(par) / float64(seq)
	b.ReportMetric(float64(par.Milliseconds())/float64(5*b.N), "ms/parallel")
	b.ReportMetric(float64(seq.Milliseconds())/float64(5*b.N), "ms/sequential")
	b.ReportMetric(ratio, "parallel/sequential")
	fmt.Printf("observe 4 sites: parallel %s, sequential %s per snapshot, ratio %.2f (goal < 0.40)\n",
		(par / time.Duration(5*b.N)).Round(time.Millisecond), (seq / time.Duration(5*b.N)).Round(time.Millisecond), ratio)
}
