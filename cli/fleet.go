package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pgtopo/pgtopo/apply"
	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/printable"
	"github.com/pgtopo/pgtopo/reconcile"
	"github.com/pgtopo/pgtopo/schema"
	"github.com/pgtopo/pgtopo/topology"
)

// eachTopology runs one command's work for every topology -f names: each
// file is its own topology, with its own Lease, plan and result, and one
// that fails or is refused does not stop the others. With one topology (or
// --repo) it is the command as ever. With several, text output gives each
// file a heading; json and yaml output is one FleetResult document; the
// exit code is the worst of the files' (see worse). A wrong command line
// stops at once.
//
// parallel > 1 runs up to that many files at once (apply): each file's
// stdout is kept and printed, in file order, once all are done; its stderr
// (progress) goes on as it comes, each line led by the file's name.
func (f *sourceFlags) eachTopology(e env, output string, parallel int, run func(e env, src *sourceFlags) error) error {
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
	runs := make([]fileRun, len(files))
	for i, file := range files {
		runs[i].file = file
		runs[i].fights = fights[file]
	}
	if parallel > 1 {
		f.runParallel(e, runs, parallel, run)
	} else {
		f.runInTurn(e, output, runs, run)
	}
	doc := FleetResult{APIVersion: fleetAPIVersion, Kind: "FleetResult"}
	code := ExitOK
	for i := range runs {
		r := &runs[i]
		var usage usageError
		if errors.As(r.err, &usage) {
			return r.err
		}
		c := codeOf(r.err)
		if len(r.fights) > 0 {
			c = ExitError
		}
		code = worse(code, c)
		switch {
		case structured(output):
			item := FleetItem{File: r.file, ExitCode: c}
			switch {
			case len(r.fights) > 0:
				item.Error = r.fights[0].String()
			case r.err != nil && !isExitCode(r.err):
				item.Error = r.err.Error()
			}
			if item.Result, err = asJSON(r.out.Bytes(), output); err != nil {
				return fmt.Errorf("%s: %w", r.file, err)
			}
			doc.Items = append(doc.Items, item)
		case parallel > 1:
			// Kept until now: printed in file order.
			writeHeading(e.stdout, output, r.file, i)
			_, _ = e.stdout.Write(r.out.Bytes())
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

// fileRun is one topology file's run among several.
type fileRun struct {
	file   string
	fights schema.Findings // what it would fight an earlier file over: not run
	out    bytes.Buffer    // its stdout, where kept
	err    error
}

// runInTurn runs the files one after the other, text output as it comes.
func (f *sourceFlags) runInTurn(e env, output string, runs []fileRun, run func(e env, src *sourceFlags) error) {
	defer func() { f.file = "" }()
	for i := range runs {
		r := &runs[i]
		fe := e
		if structured(output) {
			fe.stdout = &r.out
		} else {
			writeHeading(e.stdout, output, r.file, i)
		}
		if len(r.fights) > 0 {
			r.err = refuseFight(e.stderr, r)
			continue
		}
		f.file = r.file // the flags' clients and credentials are shared
		r.err = run(fe, f)
		sayError(e.stderr, r)
		var usage usageError
		if errors.As(r.err, &usage) {
			return
		}
	}
}

// runParallel runs up to parallel files at once, each with its own copy of
// the flags (sharing their clients and credentials).
func (f *sourceFlags) runParallel(e env, runs []fileRun, parallel int, run func(e env, src *sourceFlags) error) {
	var mu sync.Mutex // one line at a time on stderr
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range runs {
		r := &runs[i]
		stderr := &prefixWriter{w: e.stderr, mu: &mu, prefix: printable.String(r.file) + ": "}
		if len(r.fights) > 0 {
			r.err = refuseFight(stderr, r)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			one := *f
			one.file = r.file
			fe := e
			fe.stdout, fe.stderr = &r.out, stderr
			r.err = run(fe, &one)
			sayError(stderr, r)
			stderr.flush()
		}()
	}
	wg.Wait()
}

func writeHeading(w io.Writer, output, file string, i int) {
	if i > 0 {
		fmt.Fprintln(w)
	}
	if output == "markdown" {
		fmt.Fprintf(w, "### `%s`\n\n", printable.String(file))
	} else {
		fmt.Fprintf(w, "=== %s\n", printable.String(file))
	}
}

// refuseFight says why a file that would fight an earlier one is not run.
func refuseFight(stderr io.Writer, r *fileRun) error {
	for _, f := range r.fights {
		fmt.Fprintln(stderr, f.String())
	}
	fmt.Fprintf(stderr, "pgtopo: %s: not run: it fights an earlier file (pgtopo validate says the same)\n", printable.String(r.file))
	return exitCode(ExitError)
}

// sayError says an error the command did not report itself, for its file.
func sayError(stderr io.Writer, r *fileRun) {
	var usage usageError
	if r.err != nil && !isExitCode(r.err) && !errors.As(r.err, &usage) {
		fmt.Fprintf(stderr, "pgtopo: %s: %s\n", printable.String(r.file), printable.String(r.err.Error()))
	}
}

// prefixWriter writes whole lines, each led by prefix, one writer at a
// time.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		p.line(p.buf[:i+1])
		p.buf = p.buf[i+1:]
	}
}

func (p *prefixWriter) line(l []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(p.w, p.prefix)
	_, _ = p.w.Write(l)
}

// flush writes what is left without a newline.
func (p *prefixWriter) flush() {
	if len(p.buf) > 0 {
		p.line(append(p.buf, '\n'))
		p.buf = nil
	}
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

// siteSlots bounds the switchovers running at once in one kube context (a
// site's cluster) across the topologies one process runs side by side.
type siteSlots struct {
	per int
	// leaseNamespace, when set, is where every site's slot Leases are
	// taken (--slot-namespace); otherwise in the namespace of the
	// switchover's cluster there, so a site's topologies in several
	// namespaces share its bound only within a process.
	leaseNamespace string
	mu             sync.Mutex
	running        map[string]int
	// freed is closed, and replaced, whenever slots are given back.
	freed chan struct{}
}

func newSiteSlots(per int) *siteSlots {
	return &siteSlots{per: per, running: map[string]int{}, freed: make(chan struct{})}
}

// acquire takes one slot in each key at once, or none when ctx ends: a
// key is free while fewer run there than its bound (limits[key] when set
// and lower than per), so a file's own bound holds for its switchovers
// however the others' bounds read. Taking all keys together, no two
// takers can each hold what the other waits for.
func (s *siteSlots) acquire(ctx context.Context, keys []string, limits map[string]int) (func(), time.Duration, error) {
	keys = slices.Compact(slices.Sorted(slices.Values(keys)))
	began := time.Now()
	for {
		s.mu.Lock()
		free := true
		for _, k := range keys {
			bound := s.per
			if l := limits[k]; l > 0 && l < bound {
				bound = l
			}
			if s.running[k] >= bound {
				free = false
			}
		}
		if free {
			for _, k := range keys {
				s.running[k]++
			}
			s.mu.Unlock()
			return func() { s.release(keys) }, since(began), nil
		}
		wake := s.freed
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

func (s *siteSlots) release(keys []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		s.running[k]--
	}
	close(s.freed)
	s.freed = make(chan struct{})
}

// planSlots are a plan's view of the shared slots: its sites by the kube
// context they are (a Patroni site by its name), with the file's bounds.
type planSlots struct {
	slots    *siteSlots
	contexts map[string]string
	limits   map[string]int // by site name: spec.sites[].maxSwitchovers
	// ahead is what TakeAhead holds for the run's switchover.
	ahead *aheadSlots
	// leases, when set, are the sites' slot Leases, shared with other
	// processes (reconcile replicas, an apply beside them): a Kubernetes
	// site's slot is taken there too, in the namespace of the
	// switchover's cluster in that site (namespaces).
	leases     *slotLeases
	namespaces map[string]string
	// busyUnderLease: a switchover whose slots were not taken ahead (the
	// plan changed under the Lease) does not wait for them holding the
	// topology's Lease, which keeps every other replica from it; it
	// reports the topology busy, nothing fenced, and the loop tries again.
	busyUnderLease bool
}

const slotNamespaceUsage = "the namespace of each site's switchover slot Leases (default: the namespace of the switchover's cluster there); give one when a site's topologies span namespaces, so that --max-switchovers-per-site holds across them and across processes (pgtopo needs Lease rights there)"

// slotLeaseRetry is how often a switchover whose sites' slot Leases are
// all held by other processes looks again.
const slotLeaseRetry = 500 * time.Millisecond

// leasesOf are the slot Leases of a runner's sites, taken as its holder.
func leasesOf(sites func(string) (apply.SiteWriter, error), holder string) *slotLeases {
	return &slotLeases{store: func(s string) (apply.LeaseStore, error) { return sites(s) }, holder: holder, gone: holderGone, retry: slotLeaseRetry}
}

// slotLeases are where, and as whom, a process takes slot Leases.
type slotLeases struct {
	store  func(site string) (apply.LeaseStore, error)
	holder string
	gone   func(holder string) bool
	// retry is how often a process whose sites' Leases are all held
	// looks again.
	retry time.Duration
}

// aheadSlots are slots taken before the topology's Lease, handed to the
// first switchover of their sites.
type aheadSlots struct {
	mu      sync.Mutex
	sites   []string
	release func()
}

func newPlanSlots(slots *siteSlots, pl plan.Plan, d *topology.Desired, leases *slotLeases) planSlots {
	p := planSlots{slots: slots, contexts: map[string]string{}, limits: map[string]int{}, ahead: &aheadSlots{},
		leases: leases, namespaces: map[string]string{}}
	for _, s := range pl.Sites {
		p.contexts[s.Name] = s.Context
	}
	for _, st := range pl.Steps {
		if sw, ok := st.Payload.(*plan.Switchover); ok {
			p.namespaces[sw.From.Site], p.namespaces[sw.To.Site] = sw.From.Namespace, sw.To.Namespace
		}
	}
	for _, s := range d.Sites() {
		if s.MaxSwitchovers > 0 {
			p.limits[s.Name] = s.MaxSwitchovers
		}
	}
	return p
}

// TakeAhead takes, before the run locks its topology, the slots of the
// switchover pl begins (a resumed one is past its fence and takes none):
// a run waiting for a slot while holding the Lease keeps the topology from
// every other replica, which could run it meanwhile. The switchover then
// takes them without waiting; release gives them back if it never does.
func (p planSlots) TakeAhead(ctx context.Context, pl plan.Plan) (waited time.Duration, release func(), _ error) {
	for _, st := range pl.Steps {
		sw, ok := st.Payload.(*plan.Switchover)
		if !ok || sw.Resume != "" {
			continue
		}
		sites := []string{sw.From.Site, sw.To.Site}
		rel, waited, err := p.acquire(ctx, sites, true)
		if err != nil {
			return waited, func() {}, err
		}
		p.ahead.mu.Lock()
		p.ahead.sites, p.ahead.release = sites, rel
		p.ahead.mu.Unlock()
		return waited, p.dropAhead, nil
	}
	return 0, func() {}, nil
}

// dropAhead gives back slots taken ahead that no switchover took.
func (p planSlots) dropAhead() {
	p.ahead.mu.Lock()
	rel := p.ahead.release
	p.ahead.sites, p.ahead.release = nil, nil
	p.ahead.mu.Unlock()
	if rel != nil {
		rel()
	}
}

// Acquire hands over the slots taken ahead when they are for these sites;
// otherwise it gives those back first (a plan changed under the Lease
// must not hold one pair while waiting for another) and waits, or under
// a reconcile's Lease (busyUnderLease) takes them only if free now.
func (p planSlots) Acquire(ctx context.Context, sites []string) (func(), time.Duration, error) {
	if p.ahead == nil {
		return p.acquire(ctx, sites, !p.busyUnderLease)
	}
	p.ahead.mu.Lock()
	rel, same := p.ahead.release, slices.Equal(p.ahead.sites, sites)
	p.ahead.sites, p.ahead.release = nil, nil
	p.ahead.mu.Unlock()
	if rel != nil && same {
		return rel, 0, nil
	}
	if rel != nil {
		rel()
	}
	return p.acquire(ctx, sites, !p.busyUnderLease)
}

// keys are the in-memory slots of sites (a Kubernetes site by its
// context, so two files naming it differently share it) and their bounds.
func (p planSlots) keys(sites []string) ([]string, map[string]int) {
	keys := make([]string, len(sites))
	limits := map[string]int{}
	for i, s := range sites {
		keys[i] = "site " + s
		if c := p.contexts[s]; c != "" {
			keys[i] = "context " + c
		}
		if l := p.limits[s]; l > 0 {
			limits[keys[i]] = l
		}
	}
	return keys, limits
}

// acquire takes the slots in memory and, shared with other processes, as
// the sites' slot Leases; it waits for them, or with wait false reports
// the topology busy when they are not free now.
func (p planSlots) acquire(ctx context.Context, sites []string, wait bool) (func(), time.Duration, error) {
	keys, limits := p.keys(sites)
	memCtx := ctx
	if !wait {
		now, cancel := context.WithCancel(ctx)
		cancel() // the in-memory slots are looked at once
		memCtx = now
	}
	began := time.Now()
	for {
		release, _, err := p.slots.acquire(memCtx, keys, limits)
		if err != nil && !wait && ctx.Err() == nil {
			return nil, 0, &reconcile.BusyError{Why: fmt.Sprintf("no switchover slot free in sites %s now, and it is not waited for under the topology's Lease: other switchovers of this process run there", strings.Join(sites, ", "))}
		}
		if err != nil || p.leases == nil {
			return release, since(began), err
		}
		shared, busy, err := p.takeLeases(ctx, sites)
		if err != nil {
			release()
			return nil, 0, err
		}
		if busy == "" {
			return func() { shared(); release() }, since(began), nil
		}
		// Held by other processes: this one's slot is given back while
		// it waits, so its own other runs are not held up.
		release()
		if !wait {
			return nil, 0, &reconcile.BusyError{Why: fmt.Sprintf("no switchover slot free now, and it is not waited for under the topology's Lease: %s", busy)}
		}
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("%s: %w", busy, ctx.Err())
		case <-time.After(p.leases.retry):
		}
	}
}

// takeLeases takes a slot Lease in each Kubernetes site of the
// switchover, bounded as the in-memory slots are.
func (p planSlots) takeLeases(ctx context.Context, sites []string) (func(), string, error) {
	var at []apply.SlotSite
	for _, s := range sites {
		ns := p.namespaces[s]
		if p.contexts[s] == "" || ns == "" {
			continue // a Patroni site keeps no Leases
		}
		if p.slots.leaseNamespace != "" {
			ns = p.slots.leaseNamespace
		}
		store, err := p.leases.store(s)
		if err != nil {
			return nil, "", fmt.Errorf("switchover slot in site %s: %w", s, err)
		}
		bound := p.slots.per
		if l := p.limits[s]; l > 0 && l < bound {
			bound = l
		}
		at = append(at, apply.SlotSite{Name: s, Namespace: ns, Bound: bound, Scan: p.slots.per, Store: store})
	}
	return apply.TakeSlotLeases(ctx, at, p.leases.holder, p.leases.gone)
}

// since is how long ago t was, 0 under a millisecond: no wait to speak of.
func since(t time.Time) time.Duration {
	if d := time.Since(t); d >= time.Millisecond {
		return d
	}
	return 0
}

// fleet is what reconcile runs: the topology files of --repo matching
// --path (a pattern, or one file), or those -f names, listed afresh on
// every call, a file that would fight an earlier one marked so.
func (f *sourceFlags) fleet(ctx context.Context, e env) (func(context.Context) ([]reconcile.Member, error), error) {
	v, err := schema.NewValidator()
	if err != nil {
		return nil, err
	}
	switch {
	case f.repo != "" && len(f.files) > 0:
		return nil, usagef("-f and --repo: give one; with --repo, --path names the files inside the repository")
	case f.repo != "":
		repo, err := f.openRepo(ctx, e)
		if err != nil {
			return nil, err
		}
		return reconcile.NewGitFleet(repo, f.ref, f.path, v).List, nil
	case len(f.files) == 0:
		return nil, usagef("which topologies? give -f FILE|DIR, or --repo URL|PATH [--ref REV] [--path FILE|PATTERN]")
	}
	files, err := f.topologyFiles()
	if err != nil {
		return nil, err
	}
	if len(files) == 1 && files[0] == stdinFile {
		data, err := readTopology(e, stdinFile)
		if err != nil {
			return nil, err
		}
		one := []reconcile.Member{{File: stdinFile, Source: bytesSource{name: stdinFile, data: data, v: v}}}
		return func(context.Context) ([]reconcile.Member, error) { return one, nil }, nil
	}
	return func(context.Context) ([]reconcile.Member, error) {
		files, err := f.topologyFiles()
		if err != nil {
			return nil, err
		}
		fights, err := fleetOverlaps(e, files)
		if err != nil {
			return nil, err
		}
		out := make([]reconcile.Member, len(files))
		for i, file := range files {
			out[i] = reconcile.Member{File: file, Source: &reconcile.FileSource{Path: file, Validator: v}, Fights: fights[file]}
		}
		return out, nil
	}, nil
}
