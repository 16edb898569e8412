package apply

import (
	"slices"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// repairWorld is east primary and west a standby whose slot on east is
// lost; east's catalogue lists west.
func repairWorld() *world {
	east := primaryState("orders-east", "east", eastEP, 0x9000000, 1)
	east.PG.HasMultiClusterTable = true
	east.PG.MultiCluster = []snapshot.MultiClusterInfo{{Cluster: "orders-west", Slot: "xdc_orders_west"}}
	east.PG.Slots = []snapshot.Slot{{Name: "xdc_orders_west", WALStatus: "lost"}}
	west := standbyState("orders-west", "west", westEP, nil, 0x3000000, 1)
	w := newWorld(east, west)
	w.react = func(w *world, what, name string) {
		switch {
		case what == "spec" && name == "orders-west":
			// created again: a standby from birth, streaming from east
			c := w.cluster(name)
			c.Object.Ready, c.Endpoint = true, westEP
			c.PG = &snapshot.PGState{InRecovery: true, SystemID: sysID, Timeline: 1, ReplayLSN: 0x9000000, ReceiveLSN: 0x9000000,
				WalReceiver: &snapshot.WalReceiver{Status: "streaming", SenderHost: eastEP.Host, SenderPort: eastEP.Port, Timeline: 1}}
		case what == "marks":
			// WriteMarks keeps only the log; the world keeps the marks.
		}
	}
	return w
}

func rebuildStep() plan.Step {
	spec := standbySpec.WithPeer(*eastEP)
	return plan.Step{Action: plan.ActionRebuild, Subject: subject("west", "orders-west"),
		Payload:       &plan.Rebuild{Standby: plan.StandbySpec{Spec: spec, Follows: "orders-east"}, Primary: "orders-east", Evidence: "its slot xdc_orders_west on orders-east is lost", Consent: "apply --allow-rebuild orders-west"},
		Preconditions: []plan.Precondition{{Kind: plan.CondNotWritable, Cluster: "orders-west"}, {Kind: plan.CondWritable, Cluster: "orders-east"}}}
}

// A rebuild records itself on the primary, deletes the standby with its
// data, forgets its catalogue row, creates it again and waits until it
// streams, then clears the record.
func TestRebuildInOrder(t *testing.T) {
	w := repairWorld()
	r, _ := runner(w)
	step := rebuildStep()
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	got := w.writes()
	order := []string{"marks orders-east digest= revision= journal=- rebuild=orders-west", "delete orders-west",
		"sql orders-east DELETE FROM sys_operator.multi_cluster_info WHERE cluster_name = $1 [orders-west]",
		"spec orders-west " + specJSON(pay[*plan.Rebuild](step).Standby.Spec), "marks orders-east digest= revision= journal=-"}
	last := -1
	for _, want := range order {
		i := slices.Index(got, want)
		if i <= last {
			t.Fatalf("want %q after the writes before it:\n  %s", want, strings.Join(got, "\n  "))
		}
		last = i
	}
	if c := w.cluster("orders-west"); !c.StreamsFrom(eastEP) {
		t.Fatalf("west not streaming: %s", c.Receiver())
	}
}

// A rebuild killed after the deletion goes on from the record on the
// primary: no second delete, the rest as before.
func TestRebuildResumesAfterTheDelete(t *testing.T) {
	w := repairWorld()
	*w.cluster("orders-west") = snapshot.ClusterState{Name: "orders-west", Site: "west", Namespace: "db"}
	w.cluster("orders-east").Object.Marks.Rebuild = &snapshot.RebuildRecord{Cluster: "orders-west", Evidence: "lost", Consent: "the file (rebuild: allow)"}
	r, _ := runner(w)
	step := rebuildStep()
	pay[*plan.Rebuild](step).Resume = true
	step.Preconditions = step.Preconditions[1:]
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	got := w.writes()
	if slices.Contains(got, "delete orders-west") || slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "rebuild=") }) {
		t.Fatalf("a resumed rebuild deleted or recorded again: %v", got)
	}
	if got[len(got)-1] != "marks orders-east digest= revision= journal=-" {
		t.Fatalf("the record is not cleared last: %v", got)
	}
}

// Never a primary: the precondition refuses a writable standby-to-be, and
// the executor itself refuses one that became writable meanwhile.
func TestRebuildNeverAPrimary(t *testing.T) {
	w := repairWorld()
	w.cluster("orders-west").PG.InRecovery = false
	r, _ := runner(w)
	err := run(t, r, rebuildStep())
	if err == nil || !strings.Contains(err.Error(), "orders-west takes writes: pgtopo never rebuilds or deletes a primary") {
		t.Fatalf("error %v", err)
	}
	step := rebuildStep()
	step.Preconditions = nil
	x := &stepRun{r: r, step: step, n: 1, total: 1, last: w.Observe(t.Context())}
	if err := x.Rebuild(t.Context(), step.Subject, pay[*plan.Rebuild](step)); err == nil || !strings.Contains(err.Error(), "pgtopo never rebuilds a primary") {
		t.Fatalf("executor: %v", err)
	}
	if got := w.writes(); slices.Contains(got, "delete orders-west") {
		t.Fatalf("deleted a writable cluster: %v", got)
	}
}

// drop-slot removes what keeps the slot first (the catalogue row, a
// permanent slot), then drops it only while inactive, and waits until it
// is gone; an active slot is not dropped.
func TestDropSlot(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x9000000, 1))
	east := w.cluster("orders-east")
	east.PG.HasMultiClusterTable = true
	east.PG.Slots = []snapshot.Slot{{Name: "xdc_orders_south", RestartLSN: 0x3000000}}
	east.Object.PermanentSlots = []string{"xdc_orders_south"}
	w.react = func(w *world, what, name string) {
		if strings.HasPrefix(what, "sql SELECT pg_drop_replication_slot") {
			pg := w.cluster(name).PG
			pg.Slots = slices.DeleteFunc(pg.Slots, func(s snapshot.Slot) bool { return s.Name == "xdc_orders_south" && !s.Active })
		}
	}
	r, _ := runner(w)
	step := plan.Step{Action: plan.ActionDropSlot, Subject: subject("east", "orders-east"),
		Payload:       &plan.DropSlot{Primary: "orders-east", Slot: "xdc_orders_south", For: "orders-south", CatalogueRow: true, PermanentSlot: true, RetainedBytes: 96 << 20},
		Preconditions: []plan.Precondition{{Kind: plan.CondSlotInactive, Cluster: "orders-east", Other: "xdc_orders_south"}}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	got := w.writes()
	if len(got) != 3 || !strings.Contains(got[0], "DELETE FROM sys_operator.multi_cluster_info") || got[1] != "unslot orders-east xdc_orders_south" ||
		!strings.Contains(got[2], "pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active [xdc_orders_south]") {
		t.Fatalf("writes %v", got)
	}

	east.PG.Slots = []snapshot.Slot{{Name: "xdc_orders_south", Active: true, RestartLSN: 0x3000000}}
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), "slot xdc_orders_south on orders-east is active") {
		t.Fatalf("an active slot: %v", err)
	}
}

// delete-cluster deletes the object, waits until it is gone, then forgets
// its catalogue row and drops its slot on the primary; without a primary
// to clean up, only the object goes; an object that stays is waited for,
// named.
func TestDeleteCluster(t *testing.T) {
	world := func() *world {
		east := primaryState("orders-east", "east", eastEP, 0x9000000, 1)
		east.PG.HasMultiClusterTable = true
		east.PG.Slots = []snapshot.Slot{{Name: "xdc_orders_south", RestartLSN: 0x3000000}}
		w := newWorld(east)
		w.snap.Orphans = []snapshot.OrphanCluster{{Name: "orders-south", Site: "west", Namespace: "db"}}
		w.react = func(w *world, what, name string) {
			if strings.HasPrefix(what, "sql SELECT pg_drop_replication_slot") {
				w.cluster(name).PG.Slots = nil
			}
		}
		return w
	}
	step := plan.Step{Action: plan.ActionDeleteCluster, Subject: subject("west", "orders-south"),
		Payload: &plan.DeleteCluster{Primary: "orders-east", Slot: "xdc_orders_south"}}
	w := world()
	r, _ := runner(w)
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	got := w.writes()
	if len(got) != 3 || got[0] != "delete orders-south" || !strings.Contains(got[1], "DELETE FROM sys_operator.multi_cluster_info WHERE cluster_name = $1 [orders-south]") ||
		!strings.Contains(got[2], "pg_drop_replication_slot") {
		t.Fatalf("writes %v", got)
	}

	w = world()
	r, _ = runner(w)
	bare := step
	bare.Payload = &plan.DeleteCluster{}
	if err := run(t, r, bare); err != nil {
		t.Fatal(err)
	}
	if got := w.writes(); len(got) != 1 {
		t.Fatalf("without a primary, only the object goes: %v", got)
	}

	w = world()
	w.keepOrphans = true
	r, _ = runner(w)
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), "orders-south gone") {
		t.Fatalf("an object that stays: %v", err)
	}
	if got := w.writes(); len(got) != 1 {
		t.Fatalf("nothing is cleaned up before the object is gone: %v", got)
	}
}
