package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/schema"
)

// eachTopology runs one command's work for every topology -f names: each
// file is its own topology, with its own Lease, plan and result, and one
// that fails or is refused does not stop the others. With one topology (or
// --repo) it is the command as ever. With several, text output gives each
// file a heading; json and yaml output is one FleetResult document; the
// exit code is the worst of the files' (see worse). A wrong command line
// stops at once.
func (f *sourceFlags) eachTopology(e env, output string, run func(e env, src *sourceFlags) error) error {
	if f.repo != "" || len(f.files) == 0 {
		return run(e, f)
	}
	files, err := f.topologyFiles()
	if err != nil {
		return err
	}
	if len(files) == 1 {
		f.file = files[0]
		return run(e, f)
	}
	fights, err := fleetOverlaps(e, files)
	if err != nil {
		return err
	}
	f.sites() // one set of site clients for every file
	defer func() { f.file = "" }()
	doc := FleetResult{APIVersion: fleetAPIVersion, Kind: "FleetResult"}
	code := ExitOK
	for i, file := range files {
		var out bytes.Buffer
		fe := e
		if structured(output) {
			fe.stdout = &out
		} else {
			if i > 0 {
				fmt.Fprintln(e.stdout)
			}
			if output == "markdown" {
				fmt.Fprintf(e.stdout, "### `%s`\n\n", printable.String(file))
			} else {
				fmt.Fprintf(e.stdout, "=== %s\n", printable.String(file))
			}
		}
		if fs := fights[file]; len(fs) > 0 {
			// It would fight an earlier file over a cluster or a Lease:
			// not run, as validate says, and the others go on.
			reportFindings(e, fs)
			fmt.Fprintf(e.stderr, "pgtopo: %s: not run: it fights an earlier file (pgtopo validate says the same)\n", printable.String(file))
			code = worse(code, ExitError)
			if structured(output) {
				doc.Items = append(doc.Items, FleetItem{File: file, ExitCode: ExitError, Error: fs[0].String()})
			}
			continue
		}
		f.file = file // sequential: the flags' clients and credentials are shared
		err := run(fe, f)
		var usage usageError
		if errors.As(err, &usage) {
			return err
		}
		c := codeOf(err)
		if err != nil && !isExitCode(err) {
			// An error the command did not report itself: said here, for
			// this file, and the others go on.
			fmt.Fprintf(e.stderr, "pgtopo: %s: %s\n", printable.String(file), printable.String(err.Error()))
		}
		code = worse(code, c)
		if structured(output) {
			item := FleetItem{File: file, ExitCode: c}
			if err != nil && !isExitCode(err) {
				item.Error = err.Error()
			}
			if item.Result, err = asJSON(out.Bytes(), output); err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			doc.Items = append(doc.Items, item)
		}
	}
	if structured(output) {
		if err := writeDocument(e.stdout, output, doc); err != nil {
			return err
		}
	}
	if code != ExitOK {
		return exitCode(code)
	}
	return nil
}

// fleetOverlaps reads the files once and finds, per file, what it would
// fight an earlier one over (schema.Overlaps); a file that does not read or
// validate is left for its own run to report.
func fleetOverlaps(e env, files []string) (map[string]schema.Findings, error) {
	v, err := schema.NewValidator()
	if err != nil {
		return nil, err
	}
	var loaded []schema.Loaded
	for _, file := range files {
		if file == stdinFile {
			continue
		}
		data, err := readTopology(e, file)
		if err != nil {
			continue
		}
		if t, _, err := v.Load(file, data); err == nil && t != nil {
			loaded = append(loaded, schema.Loaded{File: file, Data: data, Topology: t})
		}
	}
	out := map[string]schema.Findings{}
	for _, f := range schema.Overlaps(loaded) {
		out[f.File] = append(out[f.File], f)
	}
	return out, nil
}

const fleetAPIVersion = "pgtopo.dev/v1alpha1"

// FleetResult is -o json and -o yaml of a command run over several
// topology files: each file's own document, as the command gives it for
// one file, with its exit code.
type FleetResult struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Items      []FleetItem `json:"items"`
}

// FleetItem is one topology file's part of a FleetResult.
type FleetItem struct {
	File     string `json:"file"`
	ExitCode int    `json:"exitCode"`
	// Error is what stopped the command for this file before it had a
	// result of its own.
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// asJSON is a command's structured output as one JSON value (nil when it
// wrote none).
func asJSON(b []byte, output string) (json.RawMessage, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, nil
	}
	if output == formatYAML {
		var err error
		if b, err = yaml.YAMLToJSON(b); err != nil {
			return nil, err
		}
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("its result is not one JSON document")
	}
	return json.RawMessage(b), nil
}

// codeOf is the exit code err means (as Run maps it).
func codeOf(err error) int {
	var code exitCode
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &code):
		return int(code)
	}
	return ExitError
}

func isExitCode(err error) bool {
	var code exitCode
	return errors.As(err, &code)
}

// worse is the exit code that says more of two files' outcomes: split
// brain, then an error or refusal, then no writer, not DR ready, changes
// pending, in sync.
func worse(a, b int) int {
	rank := map[int]int{ExitOK: 0, ExitChanges: 1, ExitNotReady: 2, ExitNoWriter: 3, ExitError: 4, ExitSplitBrain: 5}
	if rank[b] > rank[a] {
		return b
	}
	return a
}
