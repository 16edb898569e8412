package reconcile

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"sigs.k8s.io/yaml"
)

// exampleRule is one alert of examples/monitoring/prometheus-rule.yaml.
type exampleRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func exampleRules(t *testing.T) []exampleRule {
	t.Helper()
	var doc struct {
		Spec struct {
			Groups []struct {
				Rules []exampleRule `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	data, err := os.ReadFile("../examples/monitoring/prometheus-rule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var out []exampleRule
	for _, g := range doc.Spec.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// firing evaluates every example alert once a minute over the series (in
// promqltest's load notation, one sample a minute) from 0 to at, as
// Prometheus' rule manager does, and names the alerts firing at at.
func firing(t *testing.T, all []exampleRule, series string, at time.Duration) []string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(series, "\n") {
		if strings.TrimSpace(l) != "" { // a blank line ends a load block
			lines = append(lines, l)
		}
	}
	storage := promqltest.LoadedStorage(t, "load 1m\n"+strings.Join(lines, "\n"))
	t.Cleanup(func() { _ = storage.Close() })
	engine := promqltest.NewTestEngine(t, false, 0, 100000)
	query := rules.EngineQueryFunc(engine, storage)
	var out []string
	for _, r := range all {
		expr, err := parser.ParseExpr(r.Expr)
		if err != nil {
			t.Fatalf("%s: %v", r.Alert, err)
		}
		var hold time.Duration
		if r.For != "" {
			d, err := model.ParseDuration(r.For)
			if err != nil {
				t.Fatalf("%s: for %q: %v", r.Alert, r.For, err)
			}
			hold = time.Duration(d)
		}
		rule := rules.NewAlertingRule(r.Alert, expr, hold, 0, labels.FromMap(r.Labels), labels.FromMap(r.Annotations),
			labels.EmptyLabels(), "", false, nil)
		for ts := time.Duration(0); ts <= at; ts += time.Minute {
			if _, err := rule.Eval(context.Background(), 0, time.Unix(0, 0).Add(ts), query, nil, 0); err != nil {
				t.Fatalf("%s at %s: %v", r.Alert, ts, err)
			}
		}
		for _, a := range rule.ActiveAlerts() {
			if a.State == rules.StateFiring && !slices.Contains(out, r.Alert) {
				out = append(out, r.Alert)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Each example alert, fed series, fires when what it watches is wrong,
// and not otherwise; the ones for absence fire when pgtopo or a database is
// gone, where the others see no series and stay silent.
func TestExampleAlertsFire(t *testing.T) {
	all := exampleRules(t)
	const (
		east    = `{topology="orders",site="east",cluster="orders-east"}`
		west    = `{topology="orders",site="west",cluster="orders-west"}`
		healthy = `
  pgtopo_cycles_total{topology="orders",result="in-sync"} 1+1x30
  pgtopo_last_success_timestamp_seconds{topology="orders",instance="a"} 0+60x30
  pgtopo_site_reachable{topology="orders",site="east"} 1x30
  pgtopo_site_reachable{topology="orders",site="west"} 1x30
  pgtopo_writable_clusters{topology="orders"} 1x30
  pgtopo_dr_ready{topology="orders"} 1x30
  pgtopo_max_lag_bytes{topology="orders"} 16777216x30
  pgtopo_cluster_up` + east + ` 1x30
`
	)
	for _, tc := range []struct {
		name   string
		series string
		at     time.Duration
		want   []string
	}{
		{"healthy", healthy + `
  pgtopo_cluster_up` + west + ` 1x30
  pgtopo_standby_streaming` + west + ` 1x30
  pgtopo_standby_replay_lag_bytes` + west + ` 0x30
  pgtopo_slot_wal_status_info{topology="orders",site="east",cluster="orders-east",slot="xdc_orders_west",wal_status="reserved"} 1x30
`, 20 * time.Minute, nil},
		// pgtopo gone: its last samples at 10m, nothing after. Every other
		// alert sees no series; this one fires once it has been so for 5m.
		{"pgtopo gone", `
  pgtopo_cycles_total{topology="orders",result="in-sync"} 1+1x10
  pgtopo_last_success_timestamp_seconds{topology="orders",instance="a"} 0+60x10
  pgtopo_site_reachable{topology="orders",site="west"} 1x10
  pgtopo_cluster_up` + west + ` 1x10
  pgtopo_standby_streaming` + west + ` 1x10
`, 25 * time.Minute, []string{"PgtopoGone"}},
		{"pgtopo gone for less than 5m", `
  pgtopo_cycles_total{topology="orders",result="in-sync"} 1+1x10
`, 18 * time.Minute, nil},
		// A standby's database down while its site answers: its streaming
		// and lag series are gone, its up series says 0.
		{"a standby's database down", healthy + `
  pgtopo_cluster_up` + west + ` 0x30
`, 10 * time.Minute, []string{"PgtopoClusterDown"}},
		{"a site unreachable: its cluster down is that", strings.Replace(healthy, `pgtopo_site_reachable{topology="orders",site="west"} 1x30`, `pgtopo_site_reachable{topology="orders",site="west"} 0x30`, 1) + `
  pgtopo_cluster_up` + west + ` 0x30
`, 10 * time.Minute, []string{"PgtopoSiteUnreachable"}},
		{"a standby not streaming", healthy + `
  pgtopo_cluster_up` + west + ` 1x30
  pgtopo_standby_streaming` + west + ` 0x30
`, 10 * time.Minute, []string{"PgtopoStandbyNotStreaming"}},
		{"a standby not streaming for less than 5m", healthy + `
  pgtopo_cluster_up` + west + ` 1x30
  pgtopo_standby_streaming` + west + ` 1x6 0x20
`, 9 * time.Minute, nil},
		{"a standby lagging", healthy + `
  pgtopo_cluster_up` + west + ` 1x30
  pgtopo_standby_streaming` + west + ` 1x30
  pgtopo_standby_replay_lag_bytes` + west + ` 33554432x30
`, 10 * time.Minute, []string{"PgtopoStandbyLagAboveMax"}},
		{"a standby streaming in plaintext", healthy + `
  pgtopo_cluster_up` + west + ` 1x30
  pgtopo_standby_streaming` + west + ` 1x30
  pgtopo_standby_stream_encrypted` + west + ` 0x30
`, 20 * time.Minute, []string{"PgtopoStandbyStreamPlaintext"}},
		{"a standby streaming over TLS", healthy + `
  pgtopo_cluster_up` + west + ` 1x30
  pgtopo_standby_streaming` + west + ` 1x30
  pgtopo_standby_stream_encrypted` + west + ` 1x30
`, 20 * time.Minute, nil},
		{"a slot losing WAL", healthy + `
  pgtopo_slot_wal_status_info{topology="orders",site="east",cluster="orders-east",slot="xdc_orders_west",wal_status="unreserved"} 1x30
`, 5 * time.Minute, []string{"PgtopoSlotWALAtRisk"}},
		{"split brain", strings.Replace(healthy, `pgtopo_writable_clusters{topology="orders"} 1x30`, `pgtopo_writable_clusters{topology="orders"} 2x30`, 1),
			5 * time.Minute, []string{"PgtopoSplitBrain"}},
		{"not DR ready for 15 minutes", strings.Replace(healthy, `pgtopo_dr_ready{topology="orders"} 1x30`, `pgtopo_dr_ready{topology="orders"} 0x30`, 1),
			20 * time.Minute, []string{"PgtopoNotDRReady"}},
		{"not DR ready for less than 15 minutes", strings.Replace(healthy, `pgtopo_dr_ready{topology="orders"} 1x30`, `pgtopo_dr_ready{topology="orders"} 1x10 0x20`, 1),
			20 * time.Minute, nil},
		{"no cycle succeeded for 15 minutes", strings.Replace(healthy, `pgtopo_last_success_timestamp_seconds{topology="orders",instance="a"} 0+60x30`, `pgtopo_last_success_timestamp_seconds{topology="orders",instance="a"} 0x30`, 1),
			20 * time.Minute, []string{"PgtopoLastCycleTooOld"}},
		// A drill that passed 36 days ago (before the epoch: the test's clock
		// starts at 0): overdue after the rule's hour; one 10 days ago is not.
		{"the last passing drill 36 days old", strings.ReplaceAll(healthy, "x30", "x80") + `
  pgtopo_cluster_up` + west + ` 1x80
  pgtopo_standby_streaming` + west + ` 1x80
  pgtopo_drill_last_success_timestamp_seconds{topology="orders",drill="switchover"} -3110400x80
`, 70 * time.Minute, []string{"PgtopoDrillOverdue"}},
		{"the last passing drill 10 days old", strings.ReplaceAll(healthy, "x30", "x80") + `
  pgtopo_cluster_up` + west + ` 1x80
  pgtopo_standby_streaming` + west + ` 1x80
  pgtopo_drill_last_success_timestamp_seconds{topology="orders",drill="switchover"} -864000x80
`, 70 * time.Minute, nil},
		// Several replicas: one applies, the others' cycles end busy and
		// keep an old success time; the topology is fine.
		{"one replica of two succeeds", healthy + `
  pgtopo_last_success_timestamp_seconds{topology="orders",instance="b"} 0x30
  pgtopo_cluster_up` + west + ` 1x30
  pgtopo_standby_streaming` + west + ` 1x30
`, 20 * time.Minute, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := firing(t, all, tc.series, tc.at); !slices.Equal(got, tc.want) {
				t.Fatalf("firing at %s: %v, want %v", tc.at, got, tc.want)
			}
		})
	}
}

// Every alert links the section of docs/alerts.md that says what to do.
func TestExampleAlertsHaveRunbooks(t *testing.T) {
	doc, err := os.ReadFile("../docs/alerts.md")
	if err != nil {
		t.Fatal(err)
	}
	headings := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (\S+)$`).FindAllStringSubmatch(string(doc), -1) {
		headings[strings.ToLower(m[1])] = true
	}
	for _, r := range exampleRules(t) {
		url := r.Annotations["runbook_url"]
		anchor, ok := strings.CutPrefix(url, "https://github.com/pgtopo/pgtopo/blob/main/docs/alerts.md#")
		if !ok || !headings[anchor] {
			t.Errorf("%s: runbook_url %q is not a section of docs/alerts.md", r.Alert, url)
		}
	}
}
