package apply

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// Rebuild deletes a standby that cannot catch up, with its data, removes
// its catalogue row on the primary, and creates it again as a standby from
// birth. The rebuild is recorded on the primary first (the standby's own
// object goes), so a run killed anywhere goes on from the record; every
// part is idempotent.
func (x *stepRun) Rebuild(ctx context.Context, at plan.Subject, rb *plan.Rebuild) error {
	name := at.Cluster
	primary := x.cluster(rb.Primary)
	if !primary.Exists || primary.Object == nil {
		return fmt.Errorf("rebuild %s: the primary %s has no object to record the rebuild on", name, rb.Primary)
	}
	marks := primary.Object.Marks
	if marks.Rebuild == nil || marks.Rebuild.Cluster != name {
		marks.Rebuild = &snapshot.RebuildRecord{Cluster: name, Evidence: rb.Evidence, Consent: rb.Consent, At: time.Now().UTC().Format(time.RFC3339)}
		if err := x.writeMarks(ctx, plan.Subject{Site: primary.Site, Namespace: primary.Namespace, Cluster: primary.Name}, marks); err != nil {
			return err
		}
		x.say(EventJournal, "rebuild of %s recorded on %s (%s)", name, rb.Primary, rb.Evidence)
	}
	if c := x.cluster(name); c.Exists && c.Writable() {
		return fmt.Errorf("rebuild %s: it takes writes; pgtopo never rebuilds a primary", name)
	}
	if err := x.deleteForRebuild(ctx, at, x.cluster(name).Exists); err != nil {
		return err
	}
	if err := x.forget(ctx, rb.Primary, name); err != nil {
		return err
	}
	spec, err := x.resolvePeer(at, rb.Standby)
	if err != nil {
		return err
	}
	if err := x.writeSpec(ctx, at, spec); err != nil {
		return err
	}
	x.say(EventWrite, "rebuild: %s created as a standby of %s from birth", name, rb.Primary)
	if err := x.waitStreaming(ctx, name, rb.Primary); err != nil {
		return err
	}
	// Done: the record goes, the rest of the primary's marks stay.
	marks = x.marksOf(rb.Primary)
	marks.Rebuild = nil
	p := x.cluster(rb.Primary)
	return x.writeMarks(ctx, plan.Subject{Site: p.Site, Namespace: p.Namespace, Cluster: p.Name}, marks)
}

// forget removes a cluster's row from the primary's catalogue, so its
// operator stops keeping the cluster's slot (a new standby registers
// again).
func (x *stepRun) forget(ctx context.Context, primary, cluster string) error {
	p := x.cluster(primary)
	if p.PG == nil || !p.PG.HasMultiClusterTable {
		return nil
	}
	cat, err := x.catalogue()
	if err != nil {
		return err
	}
	if err := x.session(ctx, p, func(ss Session) error { return cat.Forget(ctx, ss.Exec, cluster) }); err != nil {
		return err
	}
	x.say(EventWrite, "%s removed from %s's multi_cluster_info", cluster, primary)
	return nil
}

// DeleteCluster deletes a cluster the file no longer lists, with its
// data, then its catalogue row and slot on the primary.
func (x *stepRun) DeleteCluster(ctx context.Context, at plan.Subject, d *plan.DeleteCluster) error {
	name := at.Cluster
	w, err := x.writer(at.Site)
	if err != nil {
		return err
	}
	if err := w.DeleteCluster(ctx, at.Namespace, name); err != nil {
		return fmt.Errorf("delete %s/%s: %w", at.Namespace, name, err)
	}
	x.say(EventWrite, "%s deleted with its data", name)
	if err := x.wait(ctx, name+" gone", nil, func(snap *snapshot.Snapshot) (bool, string) { // orphans: a full look
		for _, o := range snap.Orphans {
			if o.Name == name && o.Site == at.Site {
				return false, "its object is still there"
			}
		}
		return true, "gone"
	}); err != nil {
		return err
	}
	if d.Primary == "" {
		return nil
	}
	if err := x.forget(ctx, d.Primary, name); err != nil {
		return err
	}
	if d.Slot == "" {
		return nil
	}
	return x.dropSlot(ctx, plan.DropSlot{Primary: d.Primary, Slot: d.Slot, For: name})
}

// DropSlot drops a slot on the primary: first what keeps it there (its
// cluster's catalogue row, or a permanent slot), then the slot itself,
// only while nothing streams through it.
func (x *stepRun) DropSlot(ctx context.Context, at plan.Subject, p *plan.DropSlot) error {
	d := *p
	if d.CatalogueRow {
		if err := x.forget(ctx, d.Primary, d.For); err != nil {
			return err
		}
	}
	if d.PermanentSlot {
		w, err := x.writer(at.Site)
		if err != nil {
			return err
		}
		if err := w.DropPermanentSlot(ctx, at.Namespace, d.Primary, d.Slot); err != nil {
			return fmt.Errorf("slot %s on %s: %w", d.Slot, d.Primary, err)
		}
	}
	return x.dropSlot(ctx, d)
}

// dropSlot drops an inactive slot by SQL and waits until it is gone.
func (x *stepRun) dropSlot(ctx context.Context, d plan.DropSlot) error {
	p := x.cluster(d.Primary)
	// The WHERE makes the drop a no-op on a slot that became active since
	// the precondition was checked (or is gone already).
	if err := x.sql(ctx, p, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", d.Slot); err != nil {
		return fmt.Errorf("drop slot %s: %w", d.Slot, err)
	}
	x.say(EventWrite, "slot %s dropped on %s (it held %s)", d.Slot, d.Primary, snapshot.HumanBytes(d.RetainedBytes))
	return x.wait(ctx, "slot "+d.Slot+" gone from "+d.Primary, []string{d.Primary}, func(snap *snapshot.Snapshot) (bool, string) {
		c, _ := snap.Cluster(d.Primary)
		if c.PG == nil {
			return false, statusWords(c)
		}
		if i := slices.IndexFunc(c.PG.Slots, func(sl snapshot.Slot) bool { return sl.Name == d.Slot }); i >= 0 {
			if c.PG.Slots[i].Active {
				return false, "slot " + d.Slot + " is active again: something streams through it"
			}
			return false, "slot " + d.Slot + " still there (its keeper made it again?)"
		}
		return true, "gone"
	})
}

// deleteForRebuild deletes a cluster's object, and with it its data, when
// it exists, and waits until it is gone.
func (x *stepRun) deleteForRebuild(ctx context.Context, subj plan.Subject, exists bool) error {
	name := subj.Cluster
	if exists {
		w, err := x.writer(subj.Site)
		if err != nil {
			return err
		}
		if err := w.DeleteCluster(ctx, subj.Namespace, name); err != nil {
			return fmt.Errorf("rebuild %s: delete: %w", name, err)
		}
		x.say(EventWrite, "rebuild: %s deleted with its data", name)
	}
	return x.wait(ctx, name+" gone", []string{name}, func(snap *snapshot.Snapshot) (bool, string) {
		cs, _ := snap.Cluster(name)
		return !cs.Exists && cs.Error == "", statusWords(cs)
	})
}
