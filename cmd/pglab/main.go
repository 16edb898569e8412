// Command pglab runs the lab: real kube-apiservers, Patroni and PostgreSQL
// on one machine, one "site" per Kubernetes cluster.
//
//	pglab up --dir DIR --sites east,west
//	pglab status --dir DIR
//	pglab down --dir DIR
//	pglab fail|partition|heal --dir DIR SITE
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/lab"
	"github.com/pgtopo/pgtopo/lab/operator"
	"github.com/pgtopo/pgtopo/lab/proc"
)

func main() {
	root := &cobra.Command{Use: "pglab", Short: "A multi-site Kubernetes + Patroni + PostgreSQL lab on one machine",
		SilenceUsage: true, SilenceErrors: true}
	var dir string
	root.PersistentFlags().StringVar(&dir, "dir", ".lab", "lab directory")

	var sites, patroniSites, patroniStandby, namespaces string
	var netns bool
	up := &cobra.Command{Use: "up", Short: "Start etcd, one kube-apiserver and lab operator per site",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			st, err := lab.Up(ctx, lab.Config{Dir: dir, Sites: split(sites), PatroniSites: split(patroniSites), PatroniStandbyOf: pairs(patroniStandby), Namespaces: split(namespaces),
				Netns: netns, BinDir: binDir(), Progress: os.Stderr})
			if err != nil {
				return err
			}
			kc := lab.Paths{Dir: st.Dir}.Kubeconfig()
			fmt.Printf("lab is up in %s\n\n  export KUBECONFIG=%s\n", st.Dir, kc)
			for _, s := range st.KubeSites() {
				fmt.Printf("  kubectl --context %s get postgresql -A\n", s.Context)
			}
			for _, s := range st.Sites {
				if c, err := st.PatroniCluster(s); err == nil {
					fmt.Printf("  # %s: Patroni cluster %s, REST API on %s:8008, endpoint %s\n", s.Name, c.Name, strings.Join(c.Members, ":8008, "), c.Endpoint)
					fmt.Printf("  pgtopo status -f examples/topologies/lab-mixed.yaml --patroni-credentials %s\n", lab.Paths{Dir: st.Dir}.PatroniEnvFile())
					if st.Slot != 0 {
						fmt.Printf("  # lab-mixed.yaml has the first lab's addresses; this lab is slot %d: use 127.%d. for 127.100.\n", st.Slot, 100+st.Slot)
					}
				}
			}
			fmt.Printf("\n  pglab status --dir %s\n  pglab down --dir %s\n", dir, dir)
			return nil
		}}
	up.Flags().StringVar(&sites, "sites", "east,west", "comma-separated site names")
	up.Flags().StringVar(&patroniSites, "patroni-sites", "", "comma-separated sites of Patroni outside Kubernetes (as on VMs): one Patroni cluster orders-SITE each, credentials in DIR/patroni.env")
	up.Flags().StringVar(&patroniStandby, "patroni-standby", "", "SITE=OTHER: start Patroni site SITE's cluster as a standby of OTHER's endpoint with no slot, as by hand (the multi-DC bootstrap pitfall, for drills)")
	up.Flags().StringVar(&namespaces, "namespaces", "db", "namespaces to create in every site")
	up.Flags().BoolVar(&netns, "netns", false, "put every site in a network namespace of its own (root): pglab partition cuts its link, both ways; processes of a site run with ip netns exec pglabSLOT-INDEX")

	down := &cobra.Command{Use: "down", Short: "Stop every process of the lab",
		RunE: func(*cobra.Command, []string) error {
			if err := lab.Down(dir); err != nil {
				return err
			}
			fmt.Printf("lab %s is down\n", dir)
			return nil
		}}

	status := &cobra.Command{Use: "status", Short: "Show sites, processes and clusters",
		RunE: func(*cobra.Command, []string) error {
			return lab.PrintStatus(context.Background(), os.Stdout, dir)
		}}

	var site string
	op := &cobra.Command{Use: "operator", Short: "Run one site's lab operator (pglab up starts these)", Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("site", site)
			o, err := operator.New(dir, site, log)
			if err != nil {
				return err
			}
			return o.Run(ctx)
		}}
	op.Flags().StringVar(&site, "site", "", "site to run")

	vm := &cobra.Command{Use: "vm", Short: "Supervise one Patroni site's members and leader endpoint (pglab up starts these)", Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("site", site)
			v, err := operator.NewVMSite(dir, site, log)
			if err != nil {
				return err
			}
			return v.Run(ctx)
		}}
	vm.Flags().StringVar(&site, "site", "", "site to supervise")

	gateway := &cobra.Command{Use: "gateway", Short: "Run one site's apiserver gateway (pglab up starts these)", Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return lab.ServeGateway(ctx, dir, site)
		}}
	gateway.Flags().StringVar(&site, "site", "", "site to serve")

	fail := &cobra.Command{Use: "fail SITE", Short: "Lose a site: kill its apiserver and every Patroni and PostgreSQL process of it",
		Example: "  pglab fail --dir .lab east", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := lab.Fail(dir, args[0]); err != nil {
				return err
			}
			fmt.Printf("site %s failed: its processes are killed, its addresses refuse connections; pglab heal --dir %s %s restarts it on its data\n", args[0], dir, args[0])
			return nil
		}}
	partition := &cobra.Command{Use: "partition SITE", Short: "Cut a site off: it keeps running, nothing outside reaches its apiserver or databases",
		Example: "  pglab partition --dir .lab east", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := lab.Partition(dir, args[0]); err != nil {
				return err
			}
			how := "its apiserver and database addresses no longer answer from outside"
			if st, err := lab.Load(dir); err == nil && st.Netns {
				how = "its network link is down: nothing passes either way"
			}
			fmt.Printf("site %s partitioned: it runs, but %s; pglab heal --dir %s %s ends it\n", args[0], how, dir, args[0])
			return nil
		}}
	var workloadsAfter time.Duration
	heal := &cobra.Command{Use: "heal SITE", Short: "End a site's fault: restart a failed site on its data, or end a partition",
		Example: "  pglab heal --dir .lab east", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := lab.HealAfter(ctx, dir, args[0], workloadsAfter); err != nil {
				return err
			}
			fmt.Printf("site %s healed\n", args[0])
			return nil
		}}

	heal.Flags().DurationVar(&workloadsAfter, "workloads-after", 0, "a failed Kubernetes site: start its operator and members this long after its API server answers, as kubelets restarting pods would")
	var pidFile string
	var pod bool
	reap := &cobra.Command{Use: "reap -- COMMAND [ARG...]", Short: "Run a command as its init would: reap its orphans at once (the lab starts Patroni so)", Hidden: true,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			code, err := proc.Reap(pidFile, args[0], args[1:], pod)
			if err != nil {
				return err
			}
			os.Exit(code)
			return nil
		}}
	reap.Flags().StringVar(&pidFile, "pid-file", "", "write the command's pid here")
	reap.Flags().BoolVar(&pod, "pod", false, "end what the command left running when it ends, as a pod does (a VM's Patroni unit leaves it)")

	root.AddCommand(up, down, status, op, vm, gateway, fail, partition, heal, reap)
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "pglab: %v\n", err)
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// binDir is where pglab itself lives: kube-apiserver is built next to it.
func binDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(exe)
}

// pairs reads "a=b,c=d".
func pairs(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range split(s) {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}
