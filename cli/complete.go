package cli

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtopo/pgtopo/topology"
)

// Shell completion (pgtopo completion bash|zsh|fish|powershell): the -o
// values a command takes, and the names of the clusters of the file that -f
// gives, where a command or a flag takes a cluster.

// completeOutput offers a command's -o values.
func completeOutput(cmd *cobra.Command, formats ...string) {
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
}

// completeClusterFlags offers the file's clusters for flags that take one.
func completeClusterFlags(cmd *cobra.Command, flags ...string) {
	for _, f := range flags {
		_ = cmd.RegisterFlagCompletionFunc(f, func(c *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			return clusterNames(c, toComplete), cobra.ShellCompDirectiveNoFileComp
		})
	}
}

// clusterArg completes a command's one CLUSTER argument.
func clusterArg(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return clusterNames(c, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// clusterNames are the clusters of the files -f names that start with
// prefix; none from a file that is not there or not well-formed yet
// (completion never fails a shell).
func clusterNames(c *cobra.Command, prefix string) []string {
	args, _ := c.Flags().GetStringArray("file")
	files, err := expandFiles(args)
	if err != nil {
		return nil
	}
	var out []string
	for _, file := range files {
		if file == stdinFile {
			continue
		}
		data, err := topology.ReadFile(file)
		if err != nil {
			continue
		}
		doc, err := topology.ParseDocument(file, data)
		if err != nil {
			continue
		}
		top, err := doc.Decode()
		if err != nil {
			continue
		}
		for _, cl := range top.Spec.Clusters {
			if strings.HasPrefix(cl.Name, prefix) {
				out = append(out, cl.Name+"\t"+cl.Site+" "+cl.Namespace)
			}
		}
	}
	return out
}
