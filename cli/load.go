package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/kube"
	"github.com/pgtopo/pgtopo/live"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/topology"
)

// sourceFlags are the flags of every command that reads a topology and the
// live world.
type sourceFlags struct {
	file        string
	kubeconfig  string
	siteTimeout time.Duration
}

func (f *sourceFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.file, "file", "f", "", "topology file")
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().DurationVar(&f.siteTimeout, "site-timeout", 10*time.Second, "how long to wait for each site")
}

// loadDesired reads, validates and resolves the topology. Findings go to
// stderr; an invalid file returns exitCode(1).
func loadDesired(e env, file string) (*topology.Desired, error) {
	if file == "" {
		return nil, fmt.Errorf("-f FILE: which topology?")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	v, err := schema.NewValidator()
	if err != nil {
		return nil, err
	}
	top, fs, err := v.Load(file, data)
	if err != nil {
		return nil, err
	}
	for _, f := range fs {
		fmt.Fprintln(e.stderr, f.String())
	}
	if top == nil {
		return nil, exitCode(ExitError)
	}
	return top.Desired()
}

// observer builds the live observer from the kubeconfig flags.
func (f *sourceFlags) observer() *live.Observer {
	loader := kube.Loader{Kubeconfig: f.kubeconfig}
	return &live.Observer{
		Connect: func(ctx string) (live.SiteAPI, error) {
			s, err := loader.Connect(ctx)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
		Prober:      live.PgxProber{},
		SiteTimeout: f.siteTimeout,
	}
}
