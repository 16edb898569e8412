package operator

import (
	"encoding/json"
	"testing"
)

// The lab operator makes Patroni's dynamic config what the CR says, the
// same way through PATCH /config and before a start on existing data: a
// parameter the CR drops (a fence on return lifted) goes back to the lab's
// base value or away, and the role follows isReplica.
func TestConfigPatchFollowsTheCR(t *testing.T) {
	cur := map[string]any{
		"ttl": 10,
		"postgresql": map[string]any{"parameters": map[string]any{
			"max_connections": "100", "default_transaction_read_only": "on", "wal_level": "replica", "work_mem": "64MB"}},
	}
	spec := crSpec{Name: "orders-east", Parameters: map[string]string{"work_mem": "64MB"},
		Replication: replication{Enabled: true, IsReplica: true, PeerHost: "127.100.20.1", PeerPort: 31000}}
	patch := configPatch(cur, spec, nil, SlotName(spec.Name))
	got, _ := json.Marshal(patch)
	want := `{"postgresql":{"parameters":{"default_transaction_read_only":null,"max_connections":"50"}},"standby_cluster":{"create_replica_methods":["basebackup"],"host":"127.100.20.1","port":31000,"primary_slot_name":"xdc_orders_east"}}`
	if string(got) != want {
		t.Fatalf("patch\n  %s\nwant\n  %s", got, want)
	}
	mergePatch(cur, patch)
	merged, _ := json.Marshal(cur)
	wantMerged := `{"postgresql":{"parameters":{"max_connections":"50","wal_level":"replica","work_mem":"64MB"}},"standby_cluster":{"create_replica_methods":["basebackup"],"host":"127.100.20.1","port":31000,"primary_slot_name":"xdc_orders_east"},"ttl":10}`
	if string(merged) != wantMerged {
		t.Fatalf("merged\n  %s\nwant\n  %s", merged, wantMerged)
	}
	if again := configPatch(cur, spec, nil, SlotName(spec.Name)); len(again) != 0 {
		t.Fatalf("a config that matches the CR is patched again: %v", again)
	}
}
