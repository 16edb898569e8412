package reconcile

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Metrics are the loop's Prometheus metrics, on a registry of their own.
type Metrics struct {
	registry    *prometheus.Registry
	revision    *prometheus.GaugeVec
	lastSuccess prometheus.Gauge
	inSync      prometheus.Gauge
	cycles      *prometheus.CounterVec
	steps       *prometheus.CounterVec
	refusals    prometheus.Counter
	duration    prometheus.Histogram
	replication *replicationCollector
}

// NewMetrics registers the loop's metrics and the Go runtime's.
func NewMetrics() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgtopo_last_applied_revision_info",
			Help: "The revision of the last cycle that ended in sync or applied, as a label; the value is 1."}, []string{"revision"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgtopo_last_success_timestamp_seconds",
			Help: "Unix time of the last cycle that ended in sync or applied."}),
		inSync: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgtopo_in_sync",
			Help: "1 when the last cycle ended with the live topology matching the file."}),
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtopo_cycles_total",
			Help: "Reconcile cycles, by result (in-sync, applied, refused, error, stopped, busy, drift)."}, []string{"result"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtopo_steps_applied_total",
			Help: "Steps applied, by action."}, []string{"action"}),
		refusals: prometheus.NewCounter(prometheus.CounterOpts{Name: "pgtopo_refusals_total",
			Help: "Refusals in plans of cycles that were refused."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pgtopo_cycle_duration_seconds",
			Help: "How long cycles took.", Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}}),
	}
	m.replication = &replicationCollector{}
	m.registry.MustRegister(m.revision, m.lastSuccess, m.inSync, m.cycles, m.steps, m.refusals, m.duration, m.replication,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, o := range []Outcome{OutcomeInSync, OutcomeApplied, OutcomeRefused, OutcomeError, OutcomeStopped, OutcomeBusy, OutcomeDrift} {
		m.cycles.WithLabelValues(string(o)) // show zeros before the first of each
	}
	return m
}

func (m *Metrics) observe(c Cycle, now time.Time) {
	m.cycles.WithLabelValues(string(c.Outcome)).Inc()
	m.duration.Observe(c.Duration.Seconds())
	for _, s := range c.Applied {
		m.steps.WithLabelValues(plan.Actions[s.Action].Metric).Inc()
	}
	switch c.Outcome {
	case OutcomeInSync, OutcomeApplied:
		m.revision.Reset()
		m.revision.WithLabelValues(c.Revision).Set(1)
		m.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	case OutcomeRefused:
		m.refusals.Add(float64(len(c.Plan.Refusals)))
	}
	// Applied means converged: apply returns only once the plan is empty.
	if c.Outcome == OutcomeInSync || c.Outcome == OutcomeApplied {
		m.inSync.Set(1)
	} else {
		m.inSync.Set(0)
	}
}

// ObserveSnapshot replaces the replication series with those of snap.
func (m *Metrics) ObserveSnapshot(d *topology.Desired, snap *snapshot.Snapshot) {
	m.replication.observe(d, snap)
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}
