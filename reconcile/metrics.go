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
	lastSuccess *prometheus.GaugeVec
	inSync      *prometheus.GaugeVec
	cycles      *prometheus.CounterVec
	steps       *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	replication *replicationCollector
}

// NewMetrics registers the loop's metrics and the Go runtime's. Every
// loop series carries the topology's name (metadata.name; the file's path
// until it first reads), so one process can serve a fleet.
func NewMetrics() *Metrics {
	byTopology := []string{"topology"}
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgtopo_last_applied_revision_info",
			Help: "The revision of the topology's last cycle that ended in sync or applied, as a label; the value is 1."}, []string{"topology", "revision"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgtopo_last_success_timestamp_seconds",
			Help: "Unix time of the topology's last cycle that ended in sync or applied."}, byTopology),
		inSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgtopo_in_sync",
			Help: "1 when the topology's last cycle ended with the live topology matching the file."}, byTopology),
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtopo_cycles_total",
			Help: "Reconcile cycles, by topology and result (in-sync, applied, refused, error, stopped, busy, drift)."}, []string{"topology", "result"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtopo_steps_applied_total",
			Help: "Steps applied, by topology and action."}, []string{"topology", "action"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgtopo_refusals_total",
			Help: "Refusals in plans of cycles that were refused."}, byTopology),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgtopo_cycle_duration_seconds",
			Help: "How long cycles took.", Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}}, byTopology),
	}
	m.replication = &replicationCollector{}
	m.registry.MustRegister(m.revision, m.lastSuccess, m.inSync, m.cycles, m.steps, m.refusals, m.duration, m.replication,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) observe(c Cycle, now time.Time) {
	t := c.Topology
	for _, o := range []Outcome{OutcomeInSync, OutcomeApplied, OutcomeRefused, OutcomeError, OutcomeStopped, OutcomeBusy, OutcomeDrift} {
		m.cycles.WithLabelValues(t, string(o)) // zeros before the first of each
	}
	m.refusals.WithLabelValues(t)
	m.cycles.WithLabelValues(t, string(c.Outcome)).Inc()
	m.duration.WithLabelValues(t).Observe(c.Duration.Seconds())
	for _, s := range c.Applied {
		m.steps.WithLabelValues(t, plan.Actions[s.Action].Metric).Inc()
	}
	switch c.Outcome {
	case OutcomeInSync, OutcomeApplied:
		m.revision.DeletePartialMatch(prometheus.Labels{"topology": t})
		m.revision.WithLabelValues(t, c.Revision).Set(1)
		m.lastSuccess.WithLabelValues(t).Set(float64(now.UnixNano()) / 1e9)
	case OutcomeRefused:
		m.refusals.WithLabelValues(t).Add(float64(len(c.Plan.Refusals)))
	}
	// Applied means converged: apply returns only once the plan is empty.
	if c.Outcome == OutcomeInSync || c.Outcome == OutcomeApplied {
		m.inSync.WithLabelValues(t).Set(1)
	} else {
		m.inSync.WithLabelValues(t).Set(0)
	}
}

// ObserveSnapshot replaces the topology's replication series with those
// of snap.
func (m *Metrics) ObserveSnapshot(d *topology.Desired, snap *snapshot.Snapshot) {
	m.replication.observe(d, snap)
}

// Forget drops every series of a topology that left the fleet.
func (m *Metrics) Forget(topology string) {
	only := prometheus.Labels{"topology": topology}
	m.revision.DeletePartialMatch(only)
	m.lastSuccess.DeletePartialMatch(only)
	m.inSync.DeletePartialMatch(only)
	m.cycles.DeletePartialMatch(only)
	m.steps.DeletePartialMatch(only)
	m.refusals.DeletePartialMatch(only)
	m.duration.DeletePartialMatch(only)
	m.replication.forget(topology)
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}
