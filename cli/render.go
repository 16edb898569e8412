package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/snapshot"
)

// PatroniBootstrap is render patroni-bootstrap -o json: the section to
// merge into patroni.yml, with what it was rendered for.
type PatroniBootstrap struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Cluster    string `json:"cluster"`
	Scope      string `json:"scope"`
	Primary    string `json:"primary"`
	Slot       string `json:"slot"`
	// PatroniConfig is the bootstrap section of patroni.yml.
	PatroniConfig map[string]any `json:"patroniConfig"`
}

func newRenderCmd(e env) *cobra.Command {
	var src sourceFlags
	var output string
	cmd := &cobra.Command{
		Use:   "render patroni-bootstrap CLUSTER (-f FILE | --repo URL|PATH ...)",
		Short: "Print what to start a cluster pgtopo cannot create with",
		Long: `render patroni-bootstrap CLUSTER prints the bootstrap section of patroni.yml
that makes a Patroni cluster outside Kubernetes a standby of the topology's
primary from birth: standby_cluster with the primary's endpoint, the slot
pgtopo keeps for it there, and a base backup as the way to create replicas.
Merge it into each member's patroni.yml before the cluster's first start;
the replication credentials in patroni.yml must be the primary's.

It refuses while the primary does not keep the slot yet: a base backup
taken under writes without it may need WAL that is gone by the time the
standby asks for it (Patroni's multi-data-center bootstrap pitfall). Run
pgtopo apply first; it creates the slot.`,
		Example: `  pgtopo render patroni-bootstrap orders-dc2 -f orders.yaml --patroni-credentials dc.env
  pgtopo render patroni-bootstrap orders-dc2 -f orders.yaml -o json | jq .patroniConfig`,
		Args: cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			if args[0] != "patroni-bootstrap" {
				return usagef("render %q: the one thing render prints is patroni-bootstrap", args[0])
			}
			if output != "yaml" && output != "json" {
				return usagef("--output %s: render prints yaml (patroni.yml's own format) or json", printable.String(output))
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			in, err := src.load(ctx, e)
			if err != nil {
				return err
			}
			d := in.Desired
			c, ok := d.Cluster(args[1])
			if !ok || !c.IsPatroni() {
				return usagef("render patroni-bootstrap %s: not a cluster of a patroni site in %s", printable.String(args[1]), d.Name)
			}
			primary := d.Primary()
			if primary.Name == c.Name {
				return fmt.Errorf("%s is the topology's primary: it bootstraps as a new cluster, not as a standby", c.Name)
			}
			obs, err := src.observer(d)
			if err != nil {
				return err
			}
			snap := obs.Observe(ctx, d)
			p, _ := snap.Cluster(primary.Name)
			me, _ := snap.Cluster(c.Name)
			if p.Endpoint == nil || p.PG == nil {
				return fmt.Errorf("%s: cannot read the primary %s (%s); the section names its endpoint", c.Name, primary.Name, cmp.Or(p.PGError, "-"))
			}
			if !slices.ContainsFunc(p.PG.Slots, func(s snapshot.Slot) bool { return s.Name == me.SlotName && s.RestartLSN != 0 }) {
				return fmt.Errorf("%s: the primary %s keeps no slot %s reserving WAL yet: run pgtopo apply first, so the WAL the base backup needs is retained from its start", c.Name, primary.Name, me.SlotName)
			}
			section := map[string]any{"bootstrap": map[string]any{"dcs": map[string]any{"standby_cluster": map[string]any{
				"host": p.Endpoint.Host, "port": p.Endpoint.Port, "primary_slot_name": me.SlotName,
				"create_replica_methods": []string{"basebackup"},
			}}}}
			if output == "json" {
				b, err := json.MarshalIndent(PatroniBootstrap{APIVersion: StatusAPIVersion, Kind: "PatroniBootstrap",
					Cluster: c.Name, Scope: c.Patroni.Scope, Primary: primary.Name, Slot: me.SlotName, PatroniConfig: section}, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(e.stdout, "%s\n", b)
				return err
			}
			out, err := yaml.Marshal(section)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "# %s (scope %s): a standby of %s from birth, streaming through slot %s,\n", c.Name, c.Patroni.Scope, primary.Name, me.SlotName)
			fmt.Fprintf(e.stdout, "# which %s keeps. Merge into each member's patroni.yml before the first start;\n", primary.Name)
			fmt.Fprintf(e.stdout, "# its replication credentials must be %s's. Then run pgtopo again.\n", primary.Name)
			_, err = e.stdout.Write(out)
			return err
		},
	}
	src.register(cmd, e)
	cmd.Flags().StringVarP(&output, "output", "o", "yaml", "output format: yaml (to merge into patroni.yml, with comments) or json (a versioned PatroniBootstrap document)")
	completeOutput(cmd, formatYAML, formatJSON)
	cmd.ValidArgsFunction = func(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return []string{"patroni-bootstrap"}, cobra.ShellCompDirectiveNoFileComp
		}
		return clusterArg(c, args[1:], toComplete)
	}
	return cmd
}
