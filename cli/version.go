package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at build time with -ldflags "-X github.com/pgtopo/pgtopo/cli.version=...".
var (
	version  = "dev"
	revision = ""
)

// Version is what version -o json prints.
type Version struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	GoVersion string `json:"goVersion"`
}

func newVersionCmd(e env) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use: "version",
		Example: `  pgtopo version
  pgtopo version -o json`,
		Short: "Print the version and git revision",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			v := Version{Version: buildVersion(), Revision: buildRevision(), GoVersion: runtime.Version()}
			if err := checkFormat(output); err != nil {
				return err
			}
			if structured(output) {
				return writeDocument(e.stdout, output, v)
			}
			fmt.Fprintf(e.stdout, "pgtopo %s (revision %s)\n", v.Version, v.Revision)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	completeOutput(cmd, formatText, formatJSON, formatYAML)
	return cmd
}

// buildVersion is the version set at build time, else the module version
// go install recorded (v1.2.3, or a pseudo-version).
func buildVersion() string {
	if version != "dev" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return version
}

func buildRevision() string {
	if revision != "" {
		return revision
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}
