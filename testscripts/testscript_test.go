// Package testscripts drives the real pgtopo binary through the scenarios in
// *.txtar: each script states the commands a user runs, their exit codes and
// what they print.
package testscripts

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/pgtopo/pgtopo/cli"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"pgtopo": func() { os.Exit(cli.Main()) },
	})
}

func TestScripts(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir: ".",
		Setup: func(e *testscript.Env) error {
			e.Setenv("EXAMPLES", filepath.Join(root, "examples", "topologies"))
			// Scripts opt in to GitHub annotations explicitly.
			e.Setenv("GITHUB_ACTIONS", "")
			e.Setenv("KUBECONFIG", filepath.Join(e.WorkDir, "no-kubeconfig"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitCode,
			"lab":      cmdLab,
		},
		RequireExplicitExec: true,
		UpdateScripts:       os.Getenv("UPDATE_SCRIPTS") == "1",
	})
}

// cmdExitCode runs a program and asserts its exact exit status:
//
//	exitcode 2 exec pgtopo diff -f topology.yaml
//
// testscript's own `! exec` only knows zero from non-zero, and pgtopo's exit
// codes tell "changes pending" (2) from "error" (1).
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("exitcode does not support !")
	}
	if len(args) < 3 || args[1] != "exec" {
		ts.Fatalf("usage: exitcode N exec program [args...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: %q is not a number", args[0])
	}
	got := 0
	if err := ts.Exec(args[2], args[3:]...); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			ts.Fatalf("exitcode: %v", err)
		}
		got = exitErr.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[2], got, want)
	}
}
