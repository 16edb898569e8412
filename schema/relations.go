package schema

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgtopo/pgtopo/topology"
)

// relational checks the rules that relate one value of the document to
// another: unique names and contexts, references to sites, clusters and
// the primary, the failover consent, ClusterIP within one site. JSON Schema
// cannot express them and CUE evaluates them in quadratic time (list scans
// in comprehensions), so they are checked here, in one pass over the
// document with maps; topology.cue documents them. They read the document
// defensively: malformed parts are the structural rules' to report.
func relational(doc *topology.Document) []Finding {
	root, _ := doc.Value.(map[string]any)
	spec, _ := root["spec"].(map[string]any)
	sites, sitesOK := spec["sites"].([]any)
	clusters, _ := spec["clusters"].([]any)
	var out []Finding
	add := func(path, msg string) {
		out = append(out, newFinding(doc, parsePathString(doc, path), RuleRelation, msg, ByPgtopo))
	}

	siteNames := unique(sites, "name")
	uniqueRule(sites, "name", func(i, first int, v string) {
		add(fmt.Sprintf("spec.sites[%d].name", i), fmt.Sprintf("duplicate site name %q (first declared at spec.sites[%d])", v, first))
	})
	uniqueRule(sites, "context", func(i, first int, v string) {
		add(fmt.Sprintf("spec.sites[%d].context", i), fmt.Sprintf("context %q is already used by spec.sites[%d]; each site needs its own kube context", v, first))
	})
	clusterNames := unique(clusters, "name")
	uniqueRule(clusters, "name", func(i, first int, v string) {
		add(fmt.Sprintf("spec.clusters[%d].name", i), fmt.Sprintf("duplicate cluster name %q (first declared at spec.clusters[%d])", v, first))
	})

	drills, _ := spec["drills"].(map[string]any)
	checks, _ := drills["checks"].([]any)
	uniqueRule(checks, "name", func(i, first int, v string) {
		add(fmt.Sprintf("spec.drills.checks[%d].name", i), fmt.Sprintf("duplicate drill check name %q (first declared at spec.drills.checks[%d])", v, first))
	})

	declared := set(siteNames)
	kinds, anyKube := siteKinds(sites, add)
	if sitesOK && len(sites) > 0 && !anyKube {
		add("spec.sites", "every site is a patroni site, but pgtopo keeps its lock (a Lease) in a kubernetes site; add the kubernetes site the clusters move to or from (a topology of Patroni sites alone is not supported yet)")
	}
	var placed []string
	for i, c := range clusters {
		site, ok := field(c, "site")
		if !ok {
			continue
		}
		placed = append(placed, site)
		if kind, known := kinds[site]; known {
			flavorFields(i, c, site, kind, add)
		}
		// With no usable sites list, the structural error on spec.sites says it all.
		if sitesOK && len(siteNames) > 0 && !declared[site] {
			add(fmt.Sprintf("spec.clusters[%d].site", i), fmt.Sprintf("site %q is not declared in spec.sites (declared: %s)", site, strings.Join(siteNames, ", ")))
		}
	}

	addresses(clusters, add)

	known := set(clusterNames)
	primary, hasPrimary := spec["primary"].(string)
	if hasPrimary && !known[primary] {
		add("spec.primary", fmt.Sprintf("primary %q is not a cluster in spec.clusters (clusters: %s)", primary, strings.Join(clusterNames, ", ")))
	}
	if consent, ok := spec["acceptDataLoss"].(map[string]any); ok {
		if name, ok := consent["cluster"].(string); ok {
			if len(clusterNames) > 0 && !known[name] {
				add("spec.acceptDataLoss.cluster", fmt.Sprintf("acceptDataLoss names %q, which is not a cluster in spec.clusters (clusters: %s)", name, strings.Join(clusterNames, ", ")))
			}
			if hasPrimary && name == primary {
				add("spec.acceptDataLoss.cluster", fmt.Sprintf("acceptDataLoss names the primary %q itself; it names the lost primary whose writes may be lost, and spec.primary the cluster that takes over", primary))
			}
		}
	}

	postgres, _ := spec["postgres"].(map[string]any)
	tls, _ := postgres["tls"].(map[string]any)
	if ca, ok := tls["ca"].(map[string]any); ok {
		_, cm := ca["configMap"]
		_, sec := ca["secret"]
		switch {
		case cm && sec:
			add("spec.postgres.tls.ca", "names both a configMap and a secret; keep the one that holds the CA bundle")
		case !cm && !sec:
			add("spec.postgres.tls.ca", "names no source; give configMap: {name: …} or secret: {name: …}, or remove ca to verify against the system's roots")
		}
	}

	if failover, ok := spec["failover"].(map[string]any); ok {
		automaticFailover(failover, kinds, add)
	}

	replication, _ := spec["replication"].(map[string]any)
	serviceType, explicit := replication["serviceType"].(string)
	if !explicit {
		serviceType = "ClusterIP"
	}
	spans := false
	for _, s := range placed {
		if s != placed[0] {
			spans = true
			break
		}
	}
	if serviceType == "ClusterIP" && spans {
		path := "spec"
		if explicit {
			path = "spec.replication.serviceType"
		}
		add(path, "serviceType ClusterIP only reaches clusters within one site, but the clusters span several sites; set spec.replication.serviceType to NodePort or LoadBalancer")
	}
	return out
}

// MinFailoverAfter is the shortest spec.failover.after: the primary's own
// agent fences it after half of it without a majority, and a vote is
// renewed every 2 s (docs/automatic-failover.md).
const MinFailoverAfter = 10 * time.Second

// automaticFailover checks what an automatic failover needs: a majority
// of three or more voting (kubernetes) sites, a stated loss bound, and an
// after long enough for the primary's agent to fence it first.
func automaticFailover(failover map[string]any, kinds map[string]string, add func(path, msg string)) {
	if mode, _ := failover["mode"].(string); mode != "automatic" {
		return
	}
	var voters []string
	for name, kind := range kinds {
		if kind == topology.SiteKubernetes {
			voters = append(voters, name)
		}
	}
	if len(voters) < 3 {
		slices.Sort(voters)
		add("spec.failover.mode", fmt.Sprintf("automatic failover needs three or more kubernetes sites to vote, so that a majority can tell a lost site from a partition; the file has %d (%s): add a site, or a witness (a kubernetes site with no cluster, holding only its vote)", len(voters), strings.Join(voters, ", ")))
	}
	if _, ok := failover["maxDataLoss"]; !ok {
		add("spec.failover", "automatic failover needs maxDataLoss, the most WAL it may lose (e.g. maxDataLoss: 1Mi; 0 fails over only a standby that received everything the surviving sites saw)")
	}
	if after, ok := failover["after"].(string); ok {
		if d, err := time.ParseDuration(after); err == nil && d < MinFailoverAfter {
			add("spec.failover.after", fmt.Sprintf("after %s is shorter than %s: the primary's own agent must fence it (after half of after without a majority) before another site may promote", after, MinFailoverAfter))
		}
	}
}

// addresses finds two clusters that share an endpoint, and a Patroni member
// listed twice (in one cluster or in two): pgtopo would probe, fence or
// promote one through the other's address.
func addresses(clusters []any, add func(path, msg string)) {
	type where struct {
		path, cluster string
	}
	endpoints, members := map[string]where{}, map[string]where{}
	address := func(v any) (string, bool) {
		m, _ := v.(map[string]any)
		host, okH := m["host"].(string)
		port, okP := m["port"].(int64)
		if !okH || !okP || host == "" {
			return "", false
		}
		return strings.ToLower(host) + ":" + strconv.FormatInt(port, 10), true
	}
	for i, c := range clusters {
		m, _ := c.(map[string]any)
		name, _ := m["name"].(string)
		if a, ok := address(m["endpoint"]); ok {
			path := fmt.Sprintf("spec.clusters[%d].endpoint", i)
			if first, dup := endpoints[a]; dup {
				add(path, fmt.Sprintf("endpoint %s is also %s's (%s): two clusters cannot share an address; pgtopo would probe, fence or promote one through the other's", a, first.cluster, first.path))
			} else {
				endpoints[a] = where{path, name}
			}
		}
		patroni, _ := m["patroni"].(map[string]any)
		list, _ := patroni["members"].([]any)
		for k, member := range list {
			a, ok := address(member)
			if !ok {
				continue
			}
			path := fmt.Sprintf("spec.clusters[%d].patroni.members[%d]", i, k)
			if first, dup := members[a]; dup {
				add(path, fmt.Sprintf("Patroni member %s is listed already, in %s (%s): each member belongs to one cluster, once", a, first.cluster, first.path))
			} else {
				members[a] = where{path, name}
			}
		}
	}
}

// siteKinds maps each site's name to its kind and checks that a site has
// a context exactly when it is a kubernetes site.
func siteKinds(sites []any, add func(path, msg string)) (map[string]string, bool) {
	kinds := map[string]string{}
	anyKube := false
	for i, s := range sites {
		m, ok := s.(map[string]any)
		if !ok {
			continue
		}
		kind, _ := m["kind"].(string)
		if kind == "" {
			kind = topology.SiteKubernetes
		}
		name, _ := m["name"].(string)
		if _, dup := kinds[name]; !dup {
			kinds[name] = kind
		}
		_, hasContext := m["context"]
		switch {
		case kind == topology.SiteKubernetes && !hasContext:
			add(fmt.Sprintf("spec.sites[%d]", i), fmt.Sprintf("site %q needs a context (a kubeconfig context, or in-cluster); a site of Patroni clusters outside Kubernetes says kind: patroni", name))
		case kind == topology.SitePatroni && hasContext:
			add(fmt.Sprintf("spec.sites[%d].context", i), fmt.Sprintf("site %q is a patroni site: it has no kube context (its clusters are reached through their members' REST API); remove context", name))
		}
		anyKube = anyKube || kind == topology.SiteKubernetes
	}
	return kinds, anyKube
}

// operatorFields are a cluster's fields that only the operator flavor
// (a kubernetes site) takes.
var operatorFields = []string{"namespace", "instances", "volume", "rebuild"}

// flavorFields checks that a cluster has the fields of its site's kind and
// none of the other's, saying which kind of site allows each.
func flavorFields(i int, c any, site, kind string, add func(path, msg string)) {
	m, ok := c.(map[string]any)
	if !ok {
		return
	}
	at := func(f string) string { return fmt.Sprintf("spec.clusters[%d].%s", i, f) }
	if kind == topology.SitePatroni {
		for _, f := range operatorFields {
			if _, has := m[f]; has {
				add(at(f), fmt.Sprintf("%s is an operator field (clusters in a kubernetes site); site %q is a patroni site, where pgtopo neither creates clusters nor sizes them: remove it", f, site))
			}
		}
		var missing []string
		for _, f := range []struct{ name, what string }{
			{"patroni", "its scope and its members' REST endpoints"},
			{"endpoint", "the VIP, DNS name or HAProxy in front of its leader"},
		} {
			if _, has := m[f.name]; !has {
				missing = append(missing, fmt.Sprintf("%s (%s)", f.name, f.what))
			}
		}
		if len(missing) > 0 {
			add(fmt.Sprintf("spec.clusters[%d]", i), fmt.Sprintf("a cluster in patroni site %q needs %s", site, strings.Join(missing, " and ")))
		}
		return
	}
	if _, has := m["patroni"]; has {
		add(at("patroni"), fmt.Sprintf("patroni is for clusters in a patroni site; site %q is a kubernetes site, where the operator runs Patroni: remove it", site))
	}
	if _, has := m["namespace"]; !has {
		add(fmt.Sprintf("spec.clusters[%d]", i), fmt.Sprintf("required field %q is missing (a cluster in kubernetes site %q lives in a namespace)", "namespace", site))
	}
	if _, has := m["volume"]; !has {
		add(fmt.Sprintf("spec.clusters[%d]", i), fmt.Sprintf("required field %q is missing (the operator requires each instance's data volume in kubernetes site %q: add volume: {size: 10Gi} with the size you need)", "volume", site))
	}
}

// field is a list element's string field.
func field(elem any, key string) (string, bool) {
	m, ok := elem.(map[string]any)
	if !ok {
		return "", false
	}
	v, ok := m[key].(string)
	return v, ok
}

// unique lists the distinct string values of key in the list, in order.
func unique(list []any, key string) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range list {
		if v, ok := field(e, key); ok && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// uniqueRule calls dup for every element whose key repeats an earlier one,
// with the index of the first.
func uniqueRule(list []any, key string, dup func(i, first int, v string)) {
	first := map[string]int{}
	for i, e := range list {
		v, ok := field(e, key)
		if !ok {
			continue
		}
		if j, seen := first[v]; seen {
			dup(i, j, v)
			continue
		}
		first[v] = i
	}
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}
