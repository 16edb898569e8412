// Package cli is pgtopo's command line: thin cobra commands over the library
// packages.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/printable"
)

// Exit codes. Each means one thing whatever the command, so a script can
// tell a typo from a refusal from pending changes.
const (
	ExitOK    = 0
	ExitError = 1
	// ExitUsage: the command line itself is wrong (an unknown flag, a
	// missing argument, a value a flag does not take), as with cobra, Go's
	// flag package and POSIX utilities.
	ExitUsage = 2
	// ExitSplitBrain: status found more than one cluster taking writes.
	ExitSplitBrain = 3
	// ExitChanges: diff found changes pending (--detailed-exitcode). It is
	// not 2, so that a typo in a pipeline never reads as "changes pending".
	ExitChanges = 4
	// ExitNoWriter: status found no cluster taking writes: an outage.
	ExitNoWriter = 5
	// ExitNotReady: status found one cluster taking writes, but the DR
	// verdict is not ready (a standby not streaming, lagging, its slot
	// lost, its database not answering, or no standby).
	ExitNotReady = 6
)

// usageError is a command line pgtopo cannot run: a flag, an argument or a
// flag's value.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef is a usage error.
func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitCode is an error that carries the process exit code. A command
// returns it after it has already said what went wrong.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// env is what commands need from the process, passed in so tests can run
// commands in-process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// Main runs pgtopo with the process's arguments and returns the exit code.
func Main() int {
	return Run(os.Args[1:], env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
}

// Run runs pgtopo with args.
func Run(args []string, e env) int {
	root := newRoot(e)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	var code exitCode
	var usage usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &usage) || strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") || strings.HasPrefix(err.Error(), "unknown shorthand flag"):
		// Each line escaped on its own: cobra's "Did you mean this?" comes
		// on lines of its own, and a value typed by the user stays escaped.
		lines := strings.Split(strings.TrimRight(err.Error(), "\n"), "\n")
		for i, l := range lines {
			indent := len(l) - len(strings.TrimLeft(l, "\t"))
			lines[i] = strings.Repeat("  ", indent) + printable.String(l[indent:])
		}
		fmt.Fprintf(e.stderr, "pgtopo: %s\nRun '%s --help' for usage.\n", strings.Join(lines, "\n"), cmd.CommandPath())
		return ExitUsage
	default:
		fmt.Fprintf(e.stderr, "pgtopo: %s\n", printable.String(err.Error()))
		return ExitError
	}
}

func newRoot(e env) *cobra.Command {
	root := &cobra.Command{
		Use:   "pgtopo",
		Short: "Declarative GitOps reconciler for PostgreSQL standby topologies across Kubernetes clusters",
		Long: `pgtopo reads one topology file (sites, PostgreSQL clusters, which one is
primary), validates it, compares it with every kube context, and applies
ordered, idempotent steps, including a safe two-phase switchover.

Exit codes, the same for every command: 0 done, 1 an error or a refusal,
2 a wrong command line, 3 split brain (status), 4 changes pending (diff),
5 no cluster takes writes (status), 6 not DR ready (status).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.AddCommand(newVersionCmd(e), newValidateCmd(e), newDiffCmd(e), newStatusCmd(e), newApplyCmd(e), newReconcileCmd(e), newFenceCmd(e, true), newFenceCmd(e, false), newRenderCmd(e), newImportCmd(e), newDrillCmd(e))
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	for _, c := range root.Commands() {
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return usageError{err}
				}
				return nil
			}
		}
	}
	return root
}
