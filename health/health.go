// Package health says whether a topology is ready for a disaster, and who
// takes writes: one rule that status, its exit code and the metrics share.
package health

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Verdict is the one-line health of the topology.
type Verdict struct {
	// Healthy: one primary, every site reachable, every standby streaming
	// within maxLagBytes with its slot reserved.
	Healthy bool   `json:"healthy"`
	Message string `json:"message"`
}

// DR says in one line whether the topology is ready for a
// disaster, or what is wrong and what to do.
func DR(d *topology.Desired, snap *snapshot.Snapshot) Verdict {
	var problems []string
	for _, s := range snap.Sites {
		if !s.Reachable {
			problems = append(problems, fmt.Sprintf("site %s unreachable: whether it holds a writable cluster cannot be told; fix what its error says", s.Name))
		}
	}
	for _, c := range snap.Clusters {
		if c.Error != "" {
			problems = append(problems, fmt.Sprintf("cannot observe %s: %s", c.Name, c.Error))
		}
	}
	writable := snap.TakingWrites()
	switch {
	case len(writable) > 1:
		problems = append(problems, fmt.Sprintf("split brain: %s take writes: fence all but one (pgtopo fence CLUSTER)", strings.Join(writable, " and ")))
	case len(writable) == 0 && len(problems) == 0:
		problems = append(problems, "no cluster takes writes: run pgtopo diff to see why")
	}
	primary := LivePrimary(snap)
	var ready []string
	for i := range snap.Clusters {
		c := &snap.Clusters[i]
		if c.Error != "" {
			continue // said above
		}
		if c.PG == nil || !c.PG.InRecovery || snap.SiteDown(c.Name) {
			if c.Exists && c.PG == nil && !snap.SiteDown(c.Name) {
				problems = append(problems, fmt.Sprintf("%s's database does not answer: %s", c.Name, cmp.Or(c.PGError, "unknown")))
			}
			continue
		}
		if c.PG.WalReceiver == nil || c.PG.WalReceiver.Status != "streaming" {
			problems = append(problems, fmt.Sprintf("%s is not streaming (wal receiver %s): check the network to the primary and its slot", c.Name, c.Receiver()))
			continue
		}
		if primary == nil {
			continue
		}
		if c.PG.SystemID != primary.PG.SystemID {
			problems = append(problems, fmt.Sprintf("%s is not a copy of %s (system identifier %s, not %s): it needs a rebuild", c.Name, primary.Name, c.PG.SystemID, primary.PG.SystemID))
			continue
		}
		lag := snapshot.Lag(primary.PG, c.PG)
		if lag > d.MaxLagBytes {
			problems = append(problems, fmt.Sprintf("%s is %s behind, more than maxLagBytes %s: a switchover to it is refused; check the network and its storage", c.Name, snapshot.HumanBytes(lag), snapshot.HumanBytes(d.MaxLagBytes)))
			continue
		}
		slot, stream := "no slot seen", "streaming"
		if sl := snapshot.SlotOf(primary, c); sl != nil {
			slot = "slot " + cmp.Or(sl.WALStatus, "unknown")
			switch sl.StreamTLS {
			case snapshot.StreamPlaintext:
				stream = "streaming in PLAINTEXT (its replication connection does not use TLS)"
			case "":
			default:
				stream = "streaming over " + sl.StreamTLS
			}
			if sl.WALStatus == "unreserved" || sl.WALStatus == "lost" {
				problems = append(problems, fmt.Sprintf("%s's slot %s is %s: it holds more WAL than max_slot_wal_keep_size; once removed, %s needs a rebuild", c.Name, sl.Name, sl.WALStatus, c.Name))
				continue
			}
		}
		ready = append(ready, fmt.Sprintf("%s %s behind, %s, %s", c.Name, snapshot.HumanBytes(lag), stream, slot))
	}
	if len(problems) > 0 {
		return Verdict{Message: "NOT DR ready: " + strings.Join(problems, "; ")}
	}
	if len(ready) == 0 {
		return Verdict{Message: "NOT DR ready: no standby"}
	}
	return Verdict{Healthy: true, Message: "DR ready: " + strings.Join(ready, "; ")}
}

// LivePrimary is the one writable cluster, nil when there is none or more.
func LivePrimary(snap *snapshot.Snapshot) *snapshot.ClusterState {
	var p *snapshot.ClusterState
	for i := range snap.Clusters {
		if snap.Clusters[i].Writable() {
			if p != nil {
				return nil
			}
			p = &snap.Clusters[i]
		}
	}
	return p
}
