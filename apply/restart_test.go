package apply

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgtopo/pgtopo/plan"
	"github.com/pgtopo/pgtopo/snapshot"
)

// An update that needs a restart is done only once the server restarted
// with the new value in effect and, a standby, streams again: a write, a
// restart asked for, and a wait that holds until all three.
func TestUpdateWaitsForItsRestart(t *testing.T) {
	newRestartWorld := func() *world {
		w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1), standbyState("orders-west", "west", westEP, eastEP, 0x5000000, 1))
		w.settings = map[string]string{"orders-west/max_connections": "50"}
		return w
	}
	spec := standbySpec.WithPeer(*eastEP)
	spec.Parameters = map[string]string{"max_connections": "60"}
	step := plan.Step{Action: plan.ActionUpdate, Subject: subject("west", "orders-west"), Payload: &plan.Update{Spec: spec,
		Restart: &plan.Restart{Parameters: []string{"max_connections"}, Follows: "orders-east", Values: map[string]string{"max_connections": "60"}}}}

	w := newRestartWorld()
	var stopped *snapshot.WalReceiver
	w.react = func(w *world, what, cluster string) {
		c := w.cluster(cluster)
		switch what {
		case "spec":
			c.Object.Ready = true
			c.PG.PendingRestart = []string{"max_connections"}
		case "restart":
			// Back with the new value, its receiver not started yet.
			c.PG.PendingRestart, w.settings[cluster+"/max_connections"] = nil, "60"
			stopped, c.PG.WalReceiver = c.PG.WalReceiver, nil
		}
	}
	polls := 0
	w.onObserve = func(w *world) {
		if c := w.cluster("orders-west"); c.PG.WalReceiver == nil && stopped != nil {
			if polls++; polls > 3 {
				c.PG.WalReceiver = stopped
			}
		}
	}
	r, _ := runner(w)
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	if polls <= 3 {
		t.Fatalf("the update ended before the standby streamed again (%d polls)", polls)
	}
	wantWrites(t, w, "spec orders-west "+specJSON(spec), "restart pending west/db/orders-west")

	// An operator that never restarts: the wait ends, saying what it
	// waited for.
	w = newRestartWorld()
	w.react = func(w *world, what, cluster string) {
		if what == "spec" {
			w.cluster(cluster).PG.PendingRestart = []string{"max_connections"}
		}
	}
	r, _ = runner(w)
	err := run(t, r, step)
	if err == nil || !strings.Contains(err.Error(), "orders-west restarted with max_connections in effect") || !strings.Contains(err.Error(), "still pending a restart: max_connections") {
		t.Fatalf("error %v, want the restart waited for named", err)
	}

	// The new value never reaches the server (nothing pending, the old
	// value in effect): no restart is asked for, and the wait says what
	// it waited for.
	w = newRestartWorld()
	r, _ = runner(w)
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), "orders-west seeing max_connections pending a restart, or in effect") {
		t.Fatalf("error %v, want the value not reaching the server said", err)
	}
	if slices.Contains(w.writes(), "restart pending west/db/orders-west") {
		t.Fatal("a restart was asked for before the value reached the server")
	}
}

// A standby's restart waits until it has replayed what its primary wrote
// before: a primary just restarted with a lowered max_connections logs the
// new value in WAL, and a standby restarting with it before replaying that
// record finds its settings below the primary's and pauses its replay.
// One byte short of the primary's end of WAL, no restart is asked for.
func TestStandbyRestartWaitsUntilItReplayedThePrimary(t *testing.T) {
	const end = snapshot.LSN(0x5000000)
	for _, tc := range []struct {
		name     string
		replayed snapshot.LSN
		restarts bool
	}{
		{"one byte short", end - 1, false},
		{"at the primary's end of WAL", end, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(primaryState("orders-east", "east", eastEP, end, 1), standbyState("orders-west", "west", westEP, eastEP, tc.replayed, 1))
			w.settings = map[string]string{"orders-west/max_connections": "60"}
			w.react = func(w *world, what, cluster string) {
				c := w.cluster(cluster)
				switch what {
				case "spec":
					c.PG.PendingRestart = []string{"max_connections"}
				case "restart":
					c.PG.PendingRestart, w.settings[cluster+"/max_connections"] = nil, "50"
				}
			}
			spec := standbySpec.WithPeer(*eastEP)
			spec.Parameters = map[string]string{"max_connections": "50"}
			step := plan.Step{Action: plan.ActionUpdate, Subject: subject("west", "orders-west"), Payload: &plan.Update{Spec: spec,
				Restart: &plan.Restart{Parameters: []string{"max_connections"}, Follows: "orders-east", Values: map[string]string{"max_connections": "50"}}}}
			r, _ := runner(w)
			err := run(t, r, step)
			asked := slices.Contains(w.writes(), "restart pending west/db/orders-west")
			if asked != tc.restarts || (err == nil) != tc.restarts {
				t.Fatalf("restart asked for: %v, error %v", asked, err)
			}
			if !tc.restarts && !strings.Contains(err.Error(), "orders-west replaying what orders-east wrote before orders-west's restart") {
				t.Fatalf("error %v, want the replay waited for named", err)
			}
		})
	}
}

// A standby's stale credentials are refreshed with the primary's username
// and password alone (the operator's type, labels and other keys are not
// sent), never shown, and the step ends once the standby signs in.
func TestRefreshCredentialsSendsUsernameAndPasswordOnly(t *testing.T) {
	w := newWorld(primaryState("orders-east", "east", eastEP, 0x5000000, 1), standbyState("orders-west", "west", westEP, eastEP, 0x5000000, 1))
	west := w.cluster("orders-west")
	pg := west.PG
	west.PG, west.PGError, west.AuthFailed = nil, "password authentication failed", true
	w.secrets["east/db/postgres.orders-east.credentials"] = &corev1.Secret{Data: map[string][]byte{"username": []byte("postgres"), "password": []byte("n3w-s3cret"), "extra": []byte("x")}}
	w.secrets["west/db/postgres.orders-west.credentials"] = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"application": "spilo"}},
		Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"username": []byte("postgres"), "password": []byte("old")}}
	w.onObserve = func(w *world) {
		if sec := w.secrets["west/db/postgres.orders-west.credentials"]; string(sec.Data["password"]) == "n3w-s3cret" {
			c := w.cluster("orders-west")
			c.PG, c.PGError, c.AuthFailed = pg, "", false
		}
	}
	r, events := runner(w)
	step := plan.Step{Action: plan.ActionRefreshCredentials, Subject: subject("west", "orders-west"),
		Payload: &plan.RefreshCredentials{From: subject("east", "orders-east"), FromName: "postgres.orders-east.credentials", Name: "postgres.orders-west.credentials", Topology: "orders"}}
	if err := run(t, r, step); err != nil {
		t.Fatal(err)
	}
	wantWrites(t, w, "secret west/db/postgres.orders-west.credentials type=")
	got := w.secrets["west/db/postgres.orders-west.credentials"]
	if len(got.Data) != 2 || string(got.Data["password"]) != "n3w-s3cret" || got.Type != "" || len(got.Labels) != 0 {
		t.Fatalf("applied %+v: want username and password alone, for server-side apply to leave the rest the operator's", got)
	}
	for _, e := range *events {
		if strings.Contains(e.Message, "n3w-s3cret") {
			t.Fatalf("an event shows the password: %s", e.Message)
		}
	}

	// A primary's Secret without a password is copied nowhere.
	w.secrets["east/db/postgres.orders-east.credentials"] = &corev1.Secret{Data: map[string][]byte{"username": []byte("postgres")}}
	if err := run(t, r, step); err == nil || !strings.Contains(err.Error(), "no username or password") {
		t.Fatalf("error %v", err)
	}
}
