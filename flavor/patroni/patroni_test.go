package patroni

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/snapshot"
)

// Configs as Patroni 3.0.2 serves them (GET /config), trimmed.
const (
	primaryConfig = `{"loop_wait": 2, "postgresql": {"use_slots": true}, "slots": {"xdc_orders_east": {"type": "physical"}},
	  "pgtopo": "{\"digest\":\"0d85dd81f2049955\",\"journal\":{\"from\":\"orders-dc1\",\"to\":\"orders-east\",\"phase\":\"gated\",\"gateLSN\":\"0/5000000\"}}"}`
	standbyConfig = `{"standby_cluster": {"host": "127.100.10.1", "port": 31113, "primary_slot_name": "xdc_orders_dc1", "create_replica_methods": ["basebackup"]}}`
)

func TestParse(t *testing.T) {
	view := &ClusterView{Members: []MemberView{{Name: "orders-dc1-0", Role: "leader", State: "running"}, {Name: "orders-dc1-1", Role: "replica", State: "running"}}}
	for _, tc := range []struct {
		name, config string
		view         *ClusterView
		check        func(*testing.T, snapshot.Object)
	}{
		{"primary with a journal", primaryConfig, view, func(t *testing.T, o snapshot.Object) {
			if o.Spec.Flavor != snapshot.FlavorPatroni || o.Spec.Replication.IsReplica || !o.Spec.Replication.Enabled {
				t.Fatalf("spec %+v", o.Spec)
			}
			if j := o.Marks.Journal; j == nil || j.Phase != snapshot.PhaseGated || j.GateLSN != "0/5000000" || o.Marks.Digest != "0d85dd81f2049955" {
				t.Fatalf("marks %+v", o.Marks)
			}
			if len(o.PermanentSlots) != 1 || o.PermanentSlots[0] != "xdc_orders_east" {
				t.Fatalf("slots %v", o.PermanentSlots)
			}
			if !o.Ready || o.Status != "leader orders-dc1-0 running, 2 members" || !strings.HasPrefix(o.ResourceVersion, "config-") {
				t.Fatalf("%q %v %q", o.Status, o.Ready, o.ResourceVersion)
			}
		}},
		{"standby cluster", standbyConfig, &ClusterView{Members: []MemberView{{Name: "m", Role: "standby_leader", State: "running"}}}, func(t *testing.T, o snapshot.Object) {
			r := o.Spec.Replication
			if !r.IsReplica || r.Peer() != "127.100.10.1:31113" || r.PrimarySlot != "xdc_orders_dc1" || !o.Ready {
				t.Fatalf("%+v ready %v", r, o.Ready)
			}
			// What Parse reads back is what WriteSpec writes: a plan in
			// sync with it shows no change.
			if got, _ := json.Marshal(StandbyCluster(o.Spec)); !strings.Contains(string(got), `"primary_slot_name":"xdc_orders_dc1"`) {
				t.Fatalf("round trip %s", got)
			}
		}},
		{"no leader", `{}`, &ClusterView{Members: []MemberView{{Name: "m", Role: "replica", State: "running"}}}, func(t *testing.T, o snapshot.Object) {
			if o.Ready || o.Status != "no leader (1 members)" {
				t.Fatalf("%q %v", o.Status, o.Ready)
			}
		}},
		{"a leader still starting is not ready", `{}`, &ClusterView{Members: []MemberView{{Name: "m", Role: "leader", State: "starting"}}}, func(t *testing.T, o snapshot.Object) {
			if o.Ready {
				t.Fatal("ready while starting")
			}
		}},
		{"hand-edited marks", `{"pgtopo": "{not json"}`, view, func(t *testing.T, o snapshot.Object) {
			if !strings.Contains(o.MarksError, `dynamic config key "pgtopo" is not pgtopo's marks`) || o.Marks.Journal != nil {
				t.Fatalf("%q %+v", o.MarksError, o.Marks)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg map[string]any
			if err := json.Unmarshal([]byte(tc.config), &cfg); err != nil {
				t.Fatal(err)
			}
			tc.check(t, Parse(cfg, tc.view))
		})
	}
	if StandbyCluster(snapshot.Spec{Replication: snapshot.Replication{Enabled: true}}) != nil {
		t.Fatal("a primary's standby_cluster must be null (removed)")
	}
}

// member is a stand-in REST API of one member: what Patroni answers, and
// what it was sent.
type member struct {
	*httptest.Server
	patches []string
	posts   []string
	auth    []string
}

func newMember(t *testing.T, status int) *member {
	m := &member{}
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		m.auth = append(m.auth, user+":"+pass)
		switch r.Method {
		case http.MethodPatch:
			b, _ := io.ReadAll(r.Body)
			m.patches = append(m.patches, string(b))
		case http.MethodPost:
			b, _ := io.ReadAll(r.Body)
			m.posts = append(m.posts, r.URL.Path+" "+string(b))
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"members": [{"name": "a", "role": "leader", "state": "running"}]}`)
	}))
	t.Cleanup(m.Close)
	return m
}

func endpointOf(t *testing.T, url string) snapshot.Endpoint {
	host, port, err := net.SplitHostPort(strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return snapshot.Endpoint{Host: host, Port: p}
}

// The client asks members in turn: a member that does not answer is
// passed over, one that answers with an error is final, and credentials
// go only with writes.
func TestClientMembers(t *testing.T) {
	down := func() snapshot.Endpoint {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ep := endpointOf(t, "http://"+l.Addr().String())
		l.Close()
		return ep
	}()
	ok := newMember(t, http.StatusOK)
	c := &Client{HTTP: http.DefaultClient, Members: []snapshot.Endpoint{down, endpointOf(t, ok.URL)}, User: "patroni", Password: "s3cret"}
	v, err := c.Cluster(context.Background())
	if err != nil || len(v.Members) != 1 || !v.Members[0].Leading() {
		t.Fatalf("%+v %v", v, err)
	}
	if err := c.PatchConfig(context.Background(), map[string]any{"standby_cluster": nil}); err != nil {
		t.Fatal(err)
	}
	if len(ok.patches) != 1 || ok.patches[0] != `{"standby_cluster":null}` {
		t.Fatalf("patches %q", ok.patches)
	}
	if ok.auth[0] != ":" || ok.auth[1] != "patroni:s3cret" {
		t.Fatalf("basic auth sent %q: want none on GET, the REST credentials on PATCH", ok.auth)
	}

	refusing := newMember(t, http.StatusUnauthorized)
	c.Members = []snapshot.Endpoint{endpointOf(t, refusing.URL), endpointOf(t, ok.URL)}
	err = c.PatchConfig(context.Background(), map[string]any{"slots": nil})
	if err == nil || !strings.Contains(err.Error(), "HTTP 401") || len(ok.patches) != 1 {
		t.Fatalf("a refusal must be final: %v, %d patches on the next member", err, len(ok.patches))
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatal("the error shows the REST password")
	}

	c.Members = []snapshot.Endpoint{down}
	if _, err := c.Config(context.Background()); !errors.Is(err, ErrNoMember) {
		t.Fatalf("no member answering: %v", err)
	}
	s := Site{Name: "dc1", Clusters: map[string]Cluster{"orders-dc1": {Name: "orders-dc1", Client: c}}}
	if o, err := s.ReadCluster(context.Background(), "", "orders-dc1"); o != nil || err != nil {
		t.Fatalf("a cluster none of whose members answers does not exist: %+v %v", o, err)
	}
	if _, err := s.ListNodes(context.Background()); err == nil || !strings.Contains(err.Error(), "no Patroni member answers") {
		t.Fatalf("site reachability: %v", err)
	}
}

// The fence on return is the one parameter pgtopo owns in a Patroni
// cluster's dynamic config: a fenced spec writes it with the role, any
// other spec removes it, and Parse reads it back.
func TestWriteSpecOwnsTheFenceParameter(t *testing.T) {
	m := newMember(t, http.StatusOK)
	s := Site{Name: "dc1", Clusters: map[string]Cluster{"orders-dc1": {Name: "orders-dc1",
		Client: &Client{HTTP: http.DefaultClient, Members: []snapshot.Endpoint{endpointOf(t, m.URL)}, User: "patroni", Password: "s3cret"}}}}
	primary := snapshot.Spec{Flavor: snapshot.FlavorPatroni, Replication: snapshot.Replication{Enabled: true}}
	fenced := primary
	fenced.Parameters = map[string]string{snapshot.FenceParameter: "on"}
	for _, spec := range []snapshot.Spec{fenced, primary} {
		if err := s.WriteSpec(context.Background(), "", "orders-dc1", spec); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`{"postgresql":{"parameters":{"default_transaction_read_only":"on"}},"standby_cluster":null}`,
		`{"postgresql":{"parameters":{"default_transaction_read_only":null}},"standby_cluster":null}`,
	}
	if !slices.Equal(m.patches, want) {
		t.Fatalf("patches\n  %q\nwant\n  %q", m.patches, want)
	}
	o := Parse(map[string]any{"postgresql": map[string]any{"parameters": map[string]any{"default_transaction_read_only": "on", "work_mem": "4MB"}}}, nil)
	if got := o.Spec.Parameters; len(got) != 1 || got[snapshot.FenceParameter] != "on" {
		t.Fatalf("parsed parameters %v: want the fence alone", got)
	}
}

// A restart for pending settings goes to every member, each asked to
// restart only if a setting waits for it; a member that does not answer
// or refuses is an error, not passed over.
func TestClientRestartPending(t *testing.T) {
	a, b := newMember(t, http.StatusOK), newMember(t, http.StatusOK)
	c := &Client{HTTP: http.DefaultClient, Members: []snapshot.Endpoint{endpointOf(t, a.URL), endpointOf(t, b.URL)}, User: "patroni", Password: "s3cret"}
	if err := c.RestartPending(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*member{a, b} {
		if len(m.posts) != 1 || m.posts[0] != `/restart {"restart_pending":true}` {
			t.Fatalf("a member was sent %q", m.posts)
		}
	}
	refusing := newMember(t, http.StatusServiceUnavailable)
	c.Members = []snapshot.Endpoint{endpointOf(t, refusing.URL), endpointOf(t, a.URL)}
	if err := c.RestartPending(context.Background()); err == nil || !strings.Contains(err.Error(), "HTTP 503") || len(a.posts) != 1 {
		t.Fatalf("a member that refused: %v; the next one asked %d times", err, len(a.posts)-1)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := endpointOf(t, "http://"+l.Addr().String())
	l.Close()
	c.Members = []snapshot.Endpoint{gone}
	if err := c.RestartPending(context.Background()); !errors.Is(err, ErrNoMember) {
		t.Fatalf("a member that does not answer: %v", err)
	}
}
