package cli

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// status' exit codes are for monitoring: each state its own, the worst
// first.
func TestStatusExit(t *testing.T) {
	primary := func(name string) snapshot.ClusterState {
		return snapshot.ClusterState{Name: name, Site: name, Exists: true, PG: &snapshot.PGState{SystemID: "1", Timeline: 1, CurrentLSN: 0x3000000}}
	}
	standby := func(name, status string) snapshot.ClusterState {
		return snapshot.ClusterState{Name: name, Site: name, Exists: true, PG: &snapshot.PGState{InRecovery: true, SystemID: "1", Timeline: 1,
			ReplayLSN: 0x3000000, ReceiveLSN: 0x3000000, WalReceiver: &snapshot.WalReceiver{Status: status}}}
	}
	fenced := primary("west")
	fenced.Object = &snapshot.Object{Marks: snapshot.Marks{Fence: &snapshot.Fence{}}}
	fenced.PG.ReadOnlyDefault = true
	onReturn := primary("west")
	onReturn.PG.ReadOnlyDefault = true
	down := snapshot.ClusterState{Name: "west", Site: "west", Exists: true, PGError: "connection refused"}
	sites := func(west bool) []snapshot.SiteState {
		return []snapshot.SiteState{{Name: "east", Reachable: true}, {Name: "west", Reachable: west}}
	}
	for _, tc := range []struct {
		name     string
		clusters []snapshot.ClusterState
		westUp   bool
		want     int
	}{
		{"DR ready", []snapshot.ClusterState{primary("east"), standby("west", "streaming")}, true, ExitOK},
		{"split brain", []snapshot.ClusterState{primary("east"), primary("west")}, true, ExitSplitBrain},
		{"a fenced second primary is no split brain", []snapshot.ClusterState{primary("east"), fenced}, true, ExitNotReady},
		{"a second primary read-only by default, no fence mark (a fence on return) is no split brain", []snapshot.ClusterState{primary("east"), onReturn}, true, ExitNotReady},
		{"a site unreachable", []snapshot.ClusterState{primary("east")}, false, ExitError},
		{"no cluster takes writes", []snapshot.ClusterState{standby("east", "streaming"), standby("west", "streaming")}, true, ExitNoWriter},
		{"a standby not streaming", []snapshot.ClusterState{primary("east"), standby("west", "waiting")}, true, ExitNotReady},
		{"a standby's database down", []snapshot.ClusterState{primary("east"), down}, true, ExitNotReady},
		{"a cluster not observed (a denied read) is not known to take no writes", []snapshot.ClusterState{
			{Name: "east", Site: "east", Error: "get Secret db/x: forbidden"}, standby("west", "streaming")}, true, ExitError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := &snapshot.Snapshot{Sites: sites(tc.westUp), Clusters: tc.clusters}
			d := &topology.Desired{MaxLagBytes: 16 << 20}
			got := ExitOK
			var code exitCode
			if err := statusExit(env{stdout: io.Discard, stderr: io.Discard}, d, snap); errors.As(err, &code) {
				got = int(code)
			} else if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("exit %d, want %d", got, tc.want)
			}
		})
	}
}

// A file name is printed escaped, like every value: one that holds a line
// break cannot add a line to a CI log.
func TestValidateEscapesTheFileName(t *testing.T) {
	var out, errOut strings.Builder
	code := Run([]string{"validate", "bad\n::error::forged.yaml"}, env{stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }})
	if code != ExitError || out.String() != `bad\n::error::forged.yaml: cannot read: no such file`+"\n" {
		t.Fatalf("exit %d, stdout %q", code, out.String())
	}
}
