package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/promqltest"
	"sigs.k8s.io/yaml"
)

// scrape reads a /metrics page.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value is the gauge of a family whose labels include want, and whether
// there is one.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

// alertFires evaluates an alert's expression with Prometheus' own PromQL
// engine over the scraped pgtopo gauges, and returns the series it yields.
func alertFires(t *testing.T, fams map[string]*dto.MetricFamily, expr string) []string {
	t.Helper()
	var load strings.Builder
	load.WriteString("load 1m\n")
	for name, f := range fams {
		if !strings.HasPrefix(name, "pgtopo_") || f.GetType() != dto.MetricType_GAUGE {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			fmt.Fprintf(&load, "  %s{%s} %g\n", name, strings.Join(ls, ","), m.GetGauge().GetValue())
		}
	}
	storage := promqltest.LoadedStorage(t, load.String())
	defer storage.Close()
	engine := promqltest.NewTestEngine(t, false, 5*time.Minute, 100000)
	q, err := engine.NewInstantQuery(context.Background(), storage, nil, expr, time.Unix(0, 0))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	res := q.Exec(context.Background())
	if res.Err != nil {
		t.Fatalf("%s: %v", expr, res.Err)
	}
	vec, err := res.Vector()
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	var out []string
	for _, s := range vec {
		out = append(out, s.Metric.Get("cluster"))
	}
	sort.Strings(out)
	return out
}

// ruleExpr is the expression of one alert of the example PrometheusRule.
func ruleExpr(t *testing.T, alert string) string {
	t.Helper()
	data, err := os.ReadFile("../examples/monitoring/prometheus-rule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct{ Alert, Expr string } `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatal(err)
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == alert {
				return r.Expr
			}
		}
	}
	t.Fatalf("no alert %s", alert)
	return ""
}

// TestObserveOnlyMetrics: reconcile --observe-only on a two-site lab serves
// every replication series and changes nothing; with the standby's replay
// stopped and writes going on, its lag series grows and the example lag
// alert's expression, evaluated by the PromQL engine, selects it.
func TestObserveOnlyMetrics(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "east", "west")
	east := h.topology("orders-east")
	h.expect(h.pgtopo("apply", "-f", east), 0, "Apply complete")
	l := h.startLoop("-f", east, "--observe-only", "--interval", "1s")
	serving, next := l.waitFor(t, 30*time.Second, "serving", 0, func(r logRecord) bool { return r.Msg == "serving" })
	l.waitFor(t, 30*time.Second, "an in-sync cycle", next, func(r logRecord) bool { return r.Msg == "cycle" && r.Result == "in-sync" })
	fams := scrape(t, serving.Address)
	for _, name := range []string{"pgtopo_site_reachable", "pgtopo_cluster_info", "pgtopo_cluster_up", "pgtopo_cluster_timeline",
		"pgtopo_standby_replay_lag_bytes", "pgtopo_standby_replay_lag_seconds", "pgtopo_standby_streaming", "pgtopo_slot_retained_wal_bytes",
		"pgtopo_slot_wal_status_info", "pgtopo_cluster_system_identifier_match", "pgtopo_cluster_applied_revision_info",
		"pgtopo_writable_clusters", "pgtopo_max_lag_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no series %s", name)
		}
	}
	if v, ok := value(fams, "pgtopo_slot_wal_status_info", map[string]string{"slot": "xdc_orders_west", "wal_status": "reserved"}); !ok || v != 1 {
		t.Errorf("orders-west's slot on orders-east is not reported reserved")
	}
	lagAlert := ruleExpr(t, "PgtopoStandbyLagAboveMax")
	if got := alertFires(t, fams, lagAlert); len(got) != 0 {
		t.Fatalf("the lag alert selects %v with the standby caught up", got)
	}

	startup := h.signalStartup("orders-west", syscall.SIGSTOP)
	defer func() { _ = syscall.Kill(startup, syscall.SIGCONT) }()
	c, err := h.conn("east", "orders-east")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(context.Background(), "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS pad FROM generate_series(1, 40000) g"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	var lag float64
	deadline := time.Now().Add(30 * time.Second)
	for lag <= 16<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("the lag series stayed at %.0f bytes", lag)
		}
		time.Sleep(time.Second)
		fams = scrape(t, serving.Address)
		lag, _ = value(fams, "pgtopo_standby_replay_lag_bytes", map[string]string{"cluster": "orders-west"})
	}
	if got := alertFires(t, fams, lagAlert); strings.Join(got, ",") != "orders-west" {
		t.Fatalf("the lag alert selects %v at %.0f bytes of lag, want orders-west", got, lag)
	}
	t.Logf("orders-west %.1f MiB behind: %s selects it", lag/(1<<20), lagAlert)
	l.mu.Lock()
	for _, r := range l.records {
		if r.Msg == "cycle" && r.Result == "applied" || r.Step != "" {
			t.Errorf("observe-only changed something: %+v", r)
		}
	}
	l.mu.Unlock()
}
