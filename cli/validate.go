package cli

import (
	"fmt"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/schema"
)

func newValidateCmd(e env) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use: "validate FILE...",
		Example: `  pgtopo validate orders.yaml
  pgtopo validate -o json topologies/*.yaml`,
		Short: "Check topology files against the CUE schema and the JSON Schema",
		Long: `Check topology files with both validators and report every problem at once,
each as file:line:col: field.path: message. Warnings are printed but do not
fail. Exit status: 0 valid, 1 invalid or unreadable.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, files []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			return runValidate(e, files, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	completeOutput(cmd, formatText, formatJSON, formatYAML)
	return cmd
}

// validateResult is the -o json document; version it so scripts can rely on it.
type validateResult struct {
	APIVersion string           `json:"apiVersion"`
	Valid      bool             `json:"valid"`
	Files      []string         `json:"files"`
	Findings   []schema.Finding `json:"findings"`
}

func runValidate(e env, files []string, output string) error {
	v, err := schema.NewValidator()
	if err != nil {
		return err
	}
	files, err = expandFiles(files)
	if err != nil {
		return err
	}
	var all schema.Findings
	var loaded []schema.Loaded
	perFile := make([]schema.Findings, len(files))
	for i, file := range files {
		data, err := readTopology(e, file)
		if err != nil {
			perFile[i] = schema.Findings{{File: file, Severity: schema.SeverityError, Rule: schema.RuleSyntax,
				Message: readErrorMessage(err), Validators: []string{schema.ByPgtopo}}}
			all = append(all, perFile[i]...)
			continue
		}
		t, fs, err := v.Load(file, data)
		if err != nil {
			return err
		}
		perFile[i] = fs
		if t != nil {
			loaded = append(loaded, schema.Loaded{File: file, Data: data, Topology: t})
		}
	}
	// What files would fight over is said in the later file's findings.
	for _, f := range schema.Overlaps(loaded) {
		i := slices.Index(files, f.File)
		perFile[i] = append(perFile[i], f)
	}
	for _, fs := range perFile {
		all = append(all, fs...)
	}
	switch output {
	case formatJSON, formatYAML:
		res := validateResult{APIVersion: "pgtopo.dev/v1alpha1", Valid: !all.HasErrors(), Files: files, Findings: all}
		if res.Findings == nil {
			res.Findings = []schema.Finding{}
		}
		if err := writeDocument(e.stdout, output, res); err != nil {
			return err
		}
	default:
		for i, file := range files {
			for _, f := range perFile[i] {
				if f.Line == 0 {
					fmt.Fprintf(e.stdout, "%s: %s\n", printable.String(f.File), printable.String(f.Message))
				} else {
					fmt.Fprintln(e.stdout, f.String())
				}
			}
			if !perFile[i].HasErrors() {
				fmt.Fprintf(e.stdout, "%s: valid\n", printable.String(file))
			}
		}
	}
	if e.getenv("GITHUB_ACTIONS") == "true" {
		writeAnnotations(e.stdout, all)
	}
	if all.HasErrors() {
		return exitCode(ExitError)
	}
	return nil
}

func readErrorMessage(err error) string {
	if os.IsNotExist(err) {
		return "cannot read: no such file"
	}
	return fmt.Sprintf("cannot read: %v", err)
}
