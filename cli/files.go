package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/pgtopo/pgtopo/topology"
)

// stdinFile is how standard input ("-") is named in findings and plans.
const stdinFile = "<stdin>"

// expandFiles turns what a command was given into topology files, in
// order and once each: a directory is its *.yaml and *.yml files (sorted,
// not its subdirectories), "-" is standard input.
func expandFiles(args []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(f string) {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	for _, a := range args {
		if a == "-" {
			add(stdinFile)
			continue
		}
		st, err := os.Stat(a)
		if err != nil || !st.IsDir() {
			add(a) // reading it says what is wrong with it
			continue
		}
		var found []string
		for _, pattern := range []string{"*.yaml", "*.yml"} {
			m, err := filepath.Glob(filepath.Join(a, pattern))
			if err != nil {
				return nil, err
			}
			found = append(found, m...)
		}
		if len(found) == 0 {
			return nil, usagef("%s: a directory with no *.yaml or *.yml file", a)
		}
		slices.Sort(found)
		for _, f := range found {
			add(f)
		}
	}
	return out, nil
}

// readTopology reads one topology file, or standard input.
func readTopology(e env, file string) ([]byte, error) {
	if file != stdinFile {
		return topology.ReadFile(file)
	}
	if e.stdin == nil {
		return nil, fmt.Errorf("no standard input")
	}
	return io.ReadAll(io.LimitReader(e.stdin, topology.MaxFileBytes+1))
}
