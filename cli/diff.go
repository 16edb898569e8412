package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/diff"
)

func newDiffCmd(e env) *cobra.Command {
	var src sourceFlags
	var output string
	detailed := true
	cmd := &cobra.Command{
		Use:   "diff -f FILE",
		Short: "Show what apply would do: a plan of ordered steps, or the refusals that stop it",
		Long: `Observe every site of the topology and print the plan that would make the
live world match the file. Nothing is changed.

Exit status (--detailed-exitcode, the default): 0 in sync, 2 changes pending,
1 error or refusal. With --detailed-exitcode=false, pending changes exit 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" && output != "markdown" {
				return fmt.Errorf("--output %q: use text, json or markdown", output)
			}
			d, err := loadDesired(e, src.file)
			if err != nil {
				return err
			}
			snap := src.observer().Observe(context.Background(), d)
			plan := diff.Compute(d, snap, diff.Options{})
			if err := writePlan(e, &plan, output); err != nil {
				return err
			}
			switch {
			case plan.Refused():
				return exitCode(ExitError)
			case !plan.InSync() && detailed:
				return exitCode(ExitChanges)
			}
			return nil
		},
	}
	src.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or markdown")
	cmd.Flags().BoolVar(&detailed, "detailed-exitcode", true, "exit 2 when changes are pending")
	return cmd
}

func writePlan(e env, p *diff.Plan, output string) error {
	switch output {
	case "json":
		return p.WriteJSON(e.stdout)
	case "markdown":
		return p.WriteMarkdown(e.stdout)
	}
	return p.WriteText(e.stdout)
}
