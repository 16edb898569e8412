package planner

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pgtopo/pgtopo/flavor/owned"
	"github.com/pgtopo/pgtopo/plan"

	"github.com/pgtopo/pgtopo/topology"
)

// restartParameters are PostgreSQL 15's settings of context postmaster:
// a changed value takes effect only once the server restarts.
var restartParameters = map[string]bool{
	"archive_mode": true, "autovacuum_freeze_max_age": true, "autovacuum_max_workers": true,
	"autovacuum_multixact_freeze_max_age": true, "bonjour": true, "bonjour_name": true, "cluster_name": true,
	"data_sync_retry": true, "dynamic_shared_memory_type": true, "hot_standby": true, "huge_pages": true,
	"huge_page_size": true, "jit_provider": true, "listen_addresses": true, "logging_collector": true,
	"max_connections": true, "max_files_per_process": true, "max_locks_per_transaction": true,
	"max_logical_replication_workers": true, "max_pred_locks_per_transaction": true,
	"max_prepared_transactions": true, "max_replication_slots": true, "max_wal_senders": true,
	"max_worker_processes": true, "min_dynamic_shared_memory": true, "old_snapshot_threshold": true,
	"port": true, "shared_buffers": true, "shared_memory_type": true, "shared_preload_libraries": true,
	"superuser_reserved_connections": true, "track_activity_query_size": true, "track_commit_timestamp": true,
	"unix_socket_directories": true, "unix_socket_group": true, "unix_socket_permissions": true,
	"wal_buffers": true, "wal_decode_buffer_size": true, "wal_level": true, "wal_log_hints": true,
}

// standbyMinimums are the settings a hot standby must run at least as
// high as its primary: replay of a primary's higher value pauses on a
// standby that runs a lower one, until it restarts. So a raise restarts
// the standbys first and a lowering the primary first.
var standbyMinimums = []string{"max_connections", "max_locks_per_transaction", "max_prepared_transactions", "max_wal_senders", "max_worker_processes"}

// restartChanges are the settings among changes that need a restart.
func restartChanges(fields owned.Set, changes []plan.Change) []string {
	var out []string
	for _, c := range changes {
		if name, ok := fields.Parameter(c.Field); ok && restartParameters[name] {
			out = append(out, name)
		}
	}
	return out
}

// planRestarts turns the parameter changes that need a restart into
// ordered, waited-for restarts, and plans one for each cluster whose
// server already waits for one (pending_restart) with nothing else to
// write. A restart of the primary refuses writes while it lasts: it needs
// the file's or the run's consent.
func (p *planner) planRestarts() {
	primary := p.d.Primary().Name
	lowering := false
	updated := map[string]bool{}
	for i := range p.plan.Steps {
		s := &p.plan.Steps[i]
		up, ok := s.Payload.(*plan.Update)
		if !ok {
			continue
		}
		updated[s.Subject.Cluster] = true
		params := restartChanges(owned.For(up.Spec), s.Changes)
		if o := p.observed(s.Subject.Cluster); o.PG != nil {
			params = append(params, o.PG.PendingRestart...)
		}
		if len(params) == 0 {
			continue
		}
		slices.Sort(params)
		params = slices.Compact(params)
		r := &plan.Restart{Parameters: params, Primary: s.Subject.Cluster == primary, Values: map[string]string{}}
		for _, name := range params {
			if v, set := up.Spec.Parameters[name]; set {
				r.Values[name] = v
			}
		}
		if !r.Primary {
			r.Follows = primary
		}
		up.Restart = r
		if r.Primary {
			lowering = lowers(owned.For(up.Spec), s.Changes)
		}
	}
	for _, c := range p.d.Clusters {
		o := p.observed(c.Name)
		if updated[c.Name] || p.down(c.Name) || o.PG == nil || len(o.PG.PendingRestart) == 0 || p.switching != nil || p.failingOver != nil {
			continue
		}
		follows := primary
		if c.Name == primary {
			follows = ""
		}
		p.add(plan.Step{Action: plan.ActionRestart, Subject: subjectOf(c),
			Reason:  fmt.Sprintf("%s runs with settings changed but not in effect until it restarts (pending_restart: %s)", c.Name, strings.Join(o.PG.PendingRestart, ", ")),
			Payload: &plan.Restart{Parameters: o.PG.PendingRestart, Primary: c.Name == primary, Follows: follows}})
	}
	for i := range p.plan.Steps {
		s := &p.plan.Steps[i]
		r := restartOf(*s)
		if r == nil {
			continue
		}
		// Standbys before the primary, unless a standby minimum goes down.
		if r.Primary == lowering {
			s.Sequence = 0
		} else {
			s.Sequence = 1
		}
		if r.Primary {
			p.gatePrimaryRestart(s, r)
		}
	}
}

// lowers reports whether a primary's changes lower a standby minimum.
func lowers(fields owned.Set, changes []plan.Change) bool {
	for _, c := range changes {
		name, ok := fields.Parameter(c.Field)
		if !ok || !slices.Contains(standbyMinimums, name) {
			continue
		}
		before, err1 := strconv.ParseInt(c.Before, 10, 64)
		after, err2 := strconv.ParseInt(c.After, 10, 64)
		if err1 == nil && err2 == nil && after < before {
			return true
		}
	}
	return false
}

// gatePrimaryRestart refuses a primary's restart without consent, and says
// what it costs when there is.
func (p *planner) gatePrimaryRestart(s *plan.Step, r *plan.Restart) {
	what := fmt.Sprintf("restarting the primary %s for %s refuses writes until it is back (a write outage, usually seconds)", s.Subject.Cluster, strings.Join(r.Parameters, ", "))
	switch {
	case p.opt.AllowPrimaryRestart:
		s.Reason += "; " + what + " (allowed by --allow-primary-restart)"
	case p.d.PrimaryRestart == topology.PrimaryRestartAllow:
		s.Reason += "; " + what + " (allowed by spec.replication.primaryRestart)"
	default:
		subj := s.Subject
		p.refuse(&subj, "%s: allow it with spec.replication.primaryRestart: allow, or once with --allow-primary-restart", what)
	}
}

// restartOf is the restart a step waits for: a restart step's own, or an
// update's that changes a setting taking effect only on restart.
func restartOf(s plan.Step) *plan.Restart {
	switch p := s.Payload.(type) {
	case *plan.Restart:
		return p
	case *plan.Update:
		return p.Restart
	}
	return nil
}
