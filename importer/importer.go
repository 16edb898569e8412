// Package importer turns hot-standby pairs that already run, built by hand
// from the operator's runbook, into topology files: it pairs the observed
// cluster objects by their system identifier and replication settings and
// writes each pair as it is (names, namespaces, sizes, parameters, service
// type, bootstrap Secret), so the first plan of the file changes nothing
// that restarts or rewrites a database. It does no I/O: cli observes the
// sites and writes the files.
package importer

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// Found is one cluster object observed in a site.
type Found struct {
	Site  topology.Site
	State snapshot.ClusterState
	// Patroni is a Patroni cluster's scope and members, as the file that
	// named it says: Patroni clusters are not listed by any API, so a
	// file names them, and the imported file repeats it.
	Patroni *topology.PatroniCluster
}

func (f Found) String() string {
	if f.isPatroni() {
		return fmt.Sprintf("Patroni cluster %s in site %s", f.State.Name, f.Site.Name)
	}
	return fmt.Sprintf("%s/%s in site %s", f.State.Namespace, f.State.Name, f.Site.Name)
}

func (f Found) isPatroni() bool { return f.Patroni != nil }

func (f Found) isReplica() bool { return f.State.Object.Spec.Replication.IsReplica }

// Pair is one topology to write: a primary and the standbys that follow it.
type Pair struct {
	Name     string
	Primary  Found
	Standbys []Found
	// Endpoint is set when the standbys reach the primary at an address
	// other than the one pgtopo would compute, on the same port (another
	// node of a NodePort Service): written as the primary's endpoint so
	// the standbys are not repointed.
	Endpoint *snapshot.Endpoint
	// Notes are what the file cannot say as it is, and what the first
	// plan will therefore change.
	Notes []string
}

// Result is every pair found, and why the other clusters were left out.
type Result struct {
	Pairs   []Pair
	Skipped []string
}

// Options are what the sites do not say: how pgtopo's connections check
// the servers.
type Options struct {
	TLS *topology.PostgresTLS
}

// Pairs pairs the found clusters: each standby with the primary of another
// site whose system identifier it shares (read from both databases), its
// peer naming that primary's address (or, where a database did not
// answer, by its peer alone, said in a note).
func Pairs(found []Found) Result {
	var res Result
	var primaries, standbys []Found
	for _, f := range found {
		switch {
		case f.State.Object == nil:
			continue
		case !f.State.Object.Spec.Replication.Enabled:
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: clusterReplication is not enabled: not part of a pair", f))
		case f.State.Object.Spec.Topology != "":
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: already managed by topology %s", f, f.State.Object.Spec.Topology))
		case f.State.Object.Marks.Digest != "" || f.State.Object.Marks.Revision != "":
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: already managed by pgtopo (its object carries a recorded %s)", f, cmp.Or(f.State.Object.Marks.Revision, "digest")))
		case f.isReplica():
			standbys = append(standbys, f)
		case f.State.PG != nil && f.State.PG.InRecovery:
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: its object says primary and its database is in recovery: settle it first", f))
		default:
			primaries = append(primaries, f)
		}
	}
	byPrimary := map[int][]Found{}
	for _, s := range standbys {
		i, why := follows(s, primaries)
		if i < 0 {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: a standby %s", s, why))
			continue
		}
		byPrimary[i] = append(byPrimary[i], s)
	}
	taken := map[string]bool{}
	for i, p := range primaries {
		ss := byPrimary[i]
		if len(ss) == 0 {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: a primary no standby follows: not a pair", p))
			continue
		}
		pair := Pair{Primary: p, Standbys: ss}
		pair.Name = uniqueName(nameOf(p, ss), taken)
		pair.Endpoint, pair.Notes = settle(p, ss)
		res.Pairs = append(res.Pairs, pair)
	}
	return res
}

// follows finds the primary a standby follows, or says why none.
func follows(s Found, primaries []Found) (int, string) {
	peer := snapshot.Endpoint{Host: s.State.Object.Spec.Replication.PeerHost, Port: s.State.Object.Spec.Replication.PeerPort}
	bySysID, byPeer := -1, -1
	for i, p := range primaries {
		if p.Site.Name == s.Site.Name {
			continue // a standby cluster of its own site is not a DR pair
		}
		if s.State.PG != nil && p.State.PG != nil && s.State.PG.SystemID == p.State.PG.SystemID {
			bySysID = i
		}
		if p.State.Endpoint != nil && *p.State.Endpoint == peer {
			byPeer = i
		}
	}
	switch {
	case bySysID >= 0:
		return bySysID, ""
	case byPeer >= 0 && s.State.PG != nil && primaries[byPeer].State.PG != nil:
		return -1, fmt.Sprintf("of %s by its peer %s, but its system identifier %s is not %s's %s: another database", primaries[byPeer], peer, s.State.PG.SystemID, primaries[byPeer].State.Name, primaries[byPeer].State.PG.SystemID)
	case byPeer >= 0:
		return byPeer, ""
	case s.State.PG == nil:
		return -1, fmt.Sprintf("whose database did not answer (%s) and whose peer %s is no primary found", orNone(s.State.PGError), peer)
	}
	return -1, fmt.Sprintf("whose system identifier %s no primary found in another site shares (peer %s)", s.State.PG.SystemID, peer)
}

// settle finds what the pair's file cannot say as it is.
func settle(p Found, ss []Found) (*snapshot.Endpoint, []string) {
	var notes []string
	var endpoint *snapshot.Endpoint
	for _, s := range ss {
		spec := s.State.Object.Spec
		if s.State.PG == nil || p.State.PG == nil {
			notes = append(notes, fmt.Sprintf("%s paired by its peer alone: a database did not answer, so the system identifiers were not compared", s.State.Name))
		}
		peer := snapshot.Endpoint{Host: spec.Replication.PeerHost, Port: spec.Replication.PeerPort}
		switch at := p.State.Endpoint; {
		case at == nil || *at == peer:
		case at.Port == peer.Port && endpoint == nil && !p.isPatroni():
			endpoint = &peer // the same Service through another address
		case endpoint == nil || *endpoint != peer:
			notes = append(notes, fmt.Sprintf("%s streams from %s; pgtopo reaches %s at %s and will point it there", s.State.Name, peer, p.State.Name, at))
		}
	}
	// The file's postgres section is the reference cluster's; the other
	// operator clusters are compared with it. A Patroni cluster's
	// settings are its own (pgtopo writes only its role), so they are
	// neither the file's nor compared.
	ref, ok := reference(p, ss)
	for _, s := range append([]Found{p}, ss...) {
		if !ok || s.isPatroni() || s.State.Name == ref.State.Name {
			continue
		}
		spec, rs := s.State.Object.Spec, ref.State.Object.Spec
		if spec.Version != rs.Version {
			notes = append(notes, fmt.Sprintf("%s runs version %s, %s runs %s: the file says %s", s.State.Name, spec.Version, ref.State.Name, rs.Version, rs.Version))
		}
		if spec.TeamID != rs.TeamID {
			notes = append(notes, fmt.Sprintf("%s has teamId %q, %s %q: the file says %q, and pgtopo will set it on %s", s.State.Name, spec.TeamID, ref.State.Name, rs.TeamID, rs.TeamID, s.State.Name))
		}
		if !maps.Equal(spec.Parameters, rs.Parameters) {
			notes = append(notes, fmt.Sprintf("%s's parameters differ from %s's: the file has %s's, and pgtopo will set them on %s (a restart where a setting needs one)", s.State.Name, ref.State.Name, ref.State.Name, s.State.Name))
		}
		if spec.Replication.ServiceType != rs.Replication.ServiceType {
			notes = append(notes, fmt.Sprintf("%s's replSvcType is %s, %s's %s: the file says %s", s.State.Name, spec.Replication.ServiceType, ref.State.Name, rs.Replication.ServiceType, rs.Replication.ServiceType))
		}
	}
	if bs := bootstrapSecrets(ss); len(bs) > 1 {
		notes = append(notes, fmt.Sprintf("the standbys bootstrap from different Secrets (%s): the file names %s", strings.Join(bs, ", "), bs[0]))
	}
	return endpoint, notes
}

// reference is the cluster whose object gives the file's postgres
// section: the primary, or where it is a Patroni cluster the first
// operator standby; false when every cluster is Patroni's.
func reference(p Found, ss []Found) (Found, bool) {
	for _, f := range append([]Found{p}, ss...) {
		if !f.isPatroni() {
			return f, true
		}
	}
	return Found{}, false
}

func bootstrapSecrets(ss []Found) []string {
	var out []string
	for _, s := range ss {
		if s.isPatroni() {
			continue
		}
		if b := s.State.Object.Spec.Replication.BootstrapSecret; b != "" && !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// nameOf names a pair: the longest common start of its clusters' names,
// cut at a separator (orders-east, orders-west: orders), else the
// primary's name.
func nameOf(p Found, ss []Found) string {
	prefix := p.State.Name
	for _, s := range ss {
		n := 0
		for n < len(prefix) && n < len(s.State.Name) && prefix[n] == s.State.Name[n] {
			n++
		}
		prefix = prefix[:n]
	}
	if i := strings.LastIndexAny(prefix, "-_."); i > 0 && i < len(p.State.Name)-1 {
		prefix = prefix[:i]
	} else if prefix != p.State.Name {
		prefix = ""
	}
	if !dnsLabel.MatchString(prefix) {
		return p.State.Name
	}
	return prefix
}

func uniqueName(name string, taken map[string]bool) string {
	out := name
	for i := 2; taken[out]; i++ {
		out = fmt.Sprintf("%s-%d", name, i)
	}
	taken[out] = true
	return out
}

func orNone(s string) string { return cmp.Or(s, "no error given") }

// Document writes the pair as a topology file.
func (p Pair) Document(opt Options) []byte {
	var b strings.Builder
	q := func(s string) string { out, _ := json.Marshal(s); return string(out) }
	all := append([]Found{p.Primary}, p.Standbys...)
	var ps snapshot.Spec
	if ref, ok := reference(p.Primary, p.Standbys); ok {
		ps = ref.State.Object.Spec
	} else if pg := p.Primary.State.PG; pg != nil && pg.ServerVersion > 0 {
		ps.Version = strconv.Itoa(pg.ServerVersion / 10000) // Patroni's alone: its server's major
	}
	fmt.Fprintf(&b, "# Imported by pgtopo import from the clusters as they run:\n")
	for _, f := range all {
		role := "standby"
		if f.State.Name == p.Primary.State.Name {
			role = "primary"
		}
		if f.isPatroni() {
			fmt.Fprintf(&b, "#   %s: %s\n", role, f)
			continue
		}
		fmt.Fprintf(&b, "#   %s: %s (context %s)\n", role, f, f.Site.Context)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "# NOTE: %s\n", n)
	}
	fmt.Fprintf(&b, "apiVersion: pgtopo.dev/v1alpha1\nkind: Topology\nmetadata:\n  name: %s\nspec:\n", p.Name)
	fmt.Fprintf(&b, "  postgres:\n    version: %s\n", q(ps.Version))
	if ps.TeamID != "" {
		fmt.Fprintf(&b, "    teamId: %s\n", q(ps.TeamID))
	}
	if len(ps.Parameters) > 0 {
		b.WriteString("    parameters:\n")
		for _, k := range slices.Sorted(maps.Keys(ps.Parameters)) {
			fmt.Fprintf(&b, "      %s: %s\n", q(k), q(ps.Parameters[k]))
		}
	}
	if t := opt.TLS; t != nil && (t.Mode != "" || t.CA != nil) {
		b.WriteString("    tls:\n")
		if t.Mode != "" {
			fmt.Fprintf(&b, "      mode: %s\n", t.Mode)
		}
		if t.CA != nil {
			kind, ref := "configMap", t.CA.ConfigMap
			if ref == nil {
				kind, ref = "secret", t.CA.Secret
			}
			fmt.Fprintf(&b, "      ca:\n        %s: {name: %s", kind, q(ref.Name))
			if ref.Key != "" {
				fmt.Fprintf(&b, ", key: %s", q(ref.Key))
			}
			b.WriteString("}\n")
		}
	}
	b.WriteString("  replication:\n")
	if st := ps.Replication.ServiceType; st != "" {
		fmt.Fprintf(&b, "    serviceType: %s\n", st)
	}
	if bs := bootstrapSecrets(p.Standbys); len(bs) > 0 {
		fmt.Fprintf(&b, "    bootstrapSecret: %s\n", q(bs[0]))
	}
	b.WriteString("  sites:\n")
	var seen []string
	for _, f := range all {
		if slices.Contains(seen, f.Site.Name) {
			continue
		}
		seen = append(seen, f.Site.Name)
		if f.Site.Patroni() {
			fmt.Fprintf(&b, "    - name: %s\n      kind: %s\n", f.Site.Name, topology.SitePatroni)
			continue
		}
		fmt.Fprintf(&b, "    - name: %s\n      context: %s\n", f.Site.Name, q(f.Site.Context))
	}
	b.WriteString("  clusters:\n")
	for _, f := range all {
		if f.isPatroni() {
			fmt.Fprintf(&b, "    - name: %s\n      site: %s\n      patroni:\n        scope: %s\n", f.State.Name, f.Site.Name, q(f.Patroni.Scope))
			if f.Patroni.TLS {
				b.WriteString("        tls: true\n")
			}
			b.WriteString("        members:\n")
			for _, m := range f.Patroni.Members {
				fmt.Fprintf(&b, "          - {host: %s, port: %d}\n", q(m.Host), m.Port)
			}
			if e := f.State.Endpoint; e != nil {
				fmt.Fprintf(&b, "      endpoint: {host: %s, port: %d}\n", q(e.Host), e.Port)
			}
			continue
		}
		spec := f.State.Object.Spec
		fmt.Fprintf(&b, "    - name: %s\n      site: %s\n      namespace: %s\n", f.State.Name, f.Site.Name, f.State.Namespace)
		// A standby runs one instance (the operator's limit); once
		// promoted it runs what the primary runs now (a Patroni
		// primary's count is its own: then the standby's).
		instances := ps.Instances
		if p.Primary.isPatroni() {
			instances = spec.Instances
		}
		fmt.Fprintf(&b, "      instances: %d\n", max(instances, 1))
		if spec.VolumeSize != "" {
			fmt.Fprintf(&b, "      volume: {size: %s}\n", q(spec.VolumeSize))
		}
		if f.State.Name == p.Primary.State.Name && p.Endpoint != nil {
			fmt.Fprintf(&b, "      endpoint: {host: %s, port: %d}\n", q(p.Endpoint.Host), p.Endpoint.Port)
		}
	}
	fmt.Fprintf(&b, "  primary: %s\n", p.Primary.State.Name)
	return []byte(b.String())
}
