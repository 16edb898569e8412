// Command pgtopo reconciles PostgreSQL standby topologies across Kubernetes
// clusters from one topology file in Git.
package main

import (
	"os"

	"github.com/pgtopo/pgtopo/cli"
)

func main() { os.Exit(cli.Main()) }
