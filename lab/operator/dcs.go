package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/pgtopo/pgtopo/lab"
)

// syncConfigBeforeStart makes a Patroni cluster's dynamic config in etcd
// what the CR asks for, before its members start again on existing data
// (a site back from a power loss). This stands in for what a real site's
// operator does with a CR changed while the site was away: it applies it to
// the pods' configuration and Patroni's DCS objects before Patroni runs
// again. Without it a returned primary would start on the config it had,
// be promoted by its Patroni and take writes until the operator's first
// PATCH /config, which needs a running leader. A cluster with no config in
// etcd yet is left to its bootstrap.
func syncConfigBeforeStart(ctx context.Context, etcd, key string, spec crSpec, standbySlot string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var got struct {
		Kvs []struct {
			Value       []byte `json:"value"`
			ModRevision string `json:"mod_revision"`
		} `json:"kvs"`
	}
	if err := lab.EtcdCall(ctx, etcd, "/v3/kv/range", map[string]any{"key": []byte(key)}, &got); err != nil {
		return err
	}
	if len(got.Kvs) == 0 {
		return nil
	}
	var cur map[string]any
	if err := json.Unmarshal(got.Kvs[0].Value, &cur); err != nil {
		return fmt.Errorf("etcd %s: %w", key, err)
	}
	patch := configPatch(cur, spec, nil, standbySlot)
	if len(patch) == 0 {
		return nil
	}
	mergePatch(cur, patch)
	value, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	// Only over the config read: a member that started meanwhile and
	// changed it wins, and the operator's next pass patches it.
	txn := map[string]any{
		"compare": []any{map[string]any{"key": []byte(key), "target": "MOD", "result": "EQUAL", "mod_revision": got.Kvs[0].ModRevision}},
		"success": []any{map[string]any{"request_put": map[string]any{"key": []byte(key), "value": value}}},
	}
	var res struct {
		Succeeded bool `json:"succeeded"`
	}
	if err := lab.EtcdCall(ctx, etcd, "/v3/kv/txn", txn, &res); err != nil {
		return err
	}
	if !res.Succeeded {
		return fmt.Errorf("etcd %s changed while it was synced", key)
	}
	return nil
}

// mergePatch applies a JSON merge patch (RFC 7396) to dst.
func mergePatch(dst, patch map[string]any) {
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			d, ok := dst[k].(map[string]any)
			if !ok {
				d = map[string]any{}
				dst[k] = d
			}
			mergePatch(d, pv)
		default:
			dst[k] = v
		}
	}
}
