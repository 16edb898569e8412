package schema

import (
	"fmt"

	"github.com/pgtopo/pgtopo/topology"
)

// Loaded is one file that validated, with the data it was read from.
type Loaded struct {
	File     string
	Data     []byte
	Topology *topology.Topology
}

// Overlaps finds what several topology files would fight over, each an
// error at the later file's field: two topologies of one name (they would
// share a Lease and their objects' labels), and one cluster object (the
// same name and namespace through the same kube context) or one Patroni
// cluster (the same scope) in two files.
func Overlaps(files []Loaded) Findings {
	type owner struct {
		file string
		path string
	}
	names := map[string]owner{}
	clusters := map[string]owner{}
	var out Findings
	for _, f := range files {
		doc, err := topology.ParseDocument(f.File, f.Data)
		if err != nil {
			continue // it validated; a parse error here is not this rule's to say
		}
		add := func(path, msg string) {
			out = append(out, newFinding(doc, parsePathString(doc, path), RuleRelation, msg, ByPgtopo))
		}
		t := f.Topology
		// Its Lease lives in each namespace that holds its clusters, in
		// each site: a name shared there is one lock for two topologies.
		for _, c := range t.Spec.Clusters {
			site, _ := t.Site(c.Site)
			if c.Patroni != nil {
				continue
			}
			key := t.Metadata.Name + "\x00" + site.Context + "\x00" + c.Namespace
			if first, ok := names[key]; ok && first.file != f.File {
				add("metadata.name", fmt.Sprintf("topology %q is also %s's, in namespace %s through context %s: they would share one Lease and label each other's objects; give each topology a name of its own", t.Metadata.Name, first.file, c.Namespace, site.Context))
				break
			}
			names[key] = owner{f.File, "metadata.name"}
		}
		for i, c := range t.Spec.Clusters {
			site, _ := t.Site(c.Site)
			key := fmt.Sprintf("kube\x00%s\x00%s\x00%s", site.Context, c.Namespace, c.Name)
			what := fmt.Sprintf("cluster object %s/%s through context %s", c.Namespace, c.Name, site.Context)
			if c.Patroni != nil {
				key, what = "patroni\x00"+c.Patroni.Scope, "Patroni cluster of scope "+c.Patroni.Scope
			}
			path := fmt.Sprintf("spec.clusters[%d].name", i)
			if first, ok := clusters[key]; ok {
				add(path, fmt.Sprintf("%s is also managed by %s (%s): two topologies would fight over it; keep it in one file", what, first.file, first.path))
				continue
			}
			clusters[key] = owner{f.File, path}
		}
	}
	return out
}
