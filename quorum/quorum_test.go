package quorum

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgtopo/pgtopo/snapshot"
)

var (
	voters = []string{"east", "west", "witness"}
	timing = TimingFor(20 * time.Second)
	now    = time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
)

// A vote seen by others that copied the given stamps of self's renewals.
func sawAt(self string, at time.Time) Vote {
	return Vote{Seen: map[string]time.Time{self: at}}
}

func TestMustFence(t *testing.T) {
	fresh, stale := now.Add(-time.Second), now.Add(-timing.FenceAfter)
	for _, tc := range []struct {
		name    string
		renewed time.Time
		votes   map[string]Vote
		fence   bool
		why     string
	}{
		{name: "everyone sees it", renewed: fresh, votes: map[string]Vote{"west": sawAt("east", fresh), "witness": sawAt("east", fresh)},
			why: "3 of 3 sites saw east within 10s"},
		{name: "one other site is enough for a majority", renewed: fresh, votes: map[string]Vote{"witness": sawAt("east", fresh)},
			why: "2 of 3 sites saw east within 10s (east, witness)"},
		{name: "cut off: no other vote read", renewed: fresh, votes: map[string]Vote{}, fence: true,
			why: "only 1 of 3 sites saw east within 10s, 2 needed: not west (its vote not read), witness (its vote not read)"},
		// Exactly FenceAfter ago is too old: the edge the others' After
		// is measured against.
		{name: "read, but the others' copy of its stamp is FenceAfter old", renewed: fresh,
			votes: map[string]Vote{"west": sawAt("east", stale), "witness": sawAt("east", stale)}, fence: true,
			why: "not west (last saw east's vote of 10s ago), witness (last saw east's vote of 10s ago)"},
		{name: "a millisecond younger counts", renewed: fresh,
			votes: map[string]Vote{"witness": sawAt("east", stale.Add(time.Millisecond))}},
		{name: "its own vote not renewed (its API gone): the others alone are not enough of a majority with it", renewed: now.Add(-timing.FenceAfter),
			votes: map[string]Vote{"west": sawAt("east", fresh)}, fence: true, why: "east (its own vote not renewed within 10s)"},
		{name: "its own vote not renewed, both others saw it", renewed: time.Time{},
			votes: map[string]Vote{"west": sawAt("east", fresh), "witness": sawAt("east", fresh)}},
		{name: "a vote that never saw it", renewed: fresh, votes: map[string]Vote{"west": {}, "witness": {}}, fence: true,
			why: "west (has not seen east)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := MustFence(timing, voters, "east", tc.renewed, tc.votes, now)
			if d.Act != tc.fence || !strings.Contains(d.Why, tc.why) {
				t.Fatalf("fence %v (%s), want %v (%s)", d.Act, d.Why, tc.fence, tc.why)
			}
		})
	}
}

func unseen(lost string, d time.Duration) Vote {
	return Vote{Unseen: map[string]Duration{lost: Duration(d)}}
}

func TestMayFailOver(t *testing.T) {
	after := timing.After
	for _, tc := range []struct {
		name   string
		self   map[string]time.Duration // what west measures now
		votes  map[string]Vote
		act    bool
		why    string
		voters []string
	}{
		{name: "west and the witness have not seen east for after", self: map[string]time.Duration{"east": after},
			votes: map[string]Vote{"witness": unseen("east", after)}, act: true, why: "2 of 3 sites have not seen east for 20s or more (west, witness)"},
		{name: "one millisecond short at the witness", self: map[string]time.Duration{"east": after},
			votes: map[string]Vote{"witness": unseen("east", after-time.Millisecond)}, why: "witness (saw east's vote 19.999s ago)"},
		{name: "the witness still sees east: a partition between east and west alone", self: map[string]time.Duration{"east": time.Hour},
			votes: map[string]Vote{"witness": unseen("east", time.Second)}, why: "1 of 3 sites have not seen east for 20s, 2 needed"},
		{name: "the witness's vote not read", self: map[string]time.Duration{"east": time.Hour}, votes: map[string]Vote{},
			why: "witness (its vote not read)"},
		{name: "the witness's vote is not live", self: map[string]time.Duration{"east": time.Hour, "witness": timing.Live},
			votes: map[string]Vote{"witness": unseen("east", time.Hour)}, why: "witness (its vote unchanged for 10s: not live)"},
		{name: "east's own vote never counts against itself", self: map[string]time.Duration{"east": after},
			votes: map[string]Vote{"east": unseen("east", time.Hour), "witness": unseen("east", 0)}, why: "1 of 3 sites"},
		{name: "five sites: three needed", voters: []string{"east", "west", "north", "south", "witness"},
			self:  map[string]time.Duration{"east": after},
			votes: map[string]Vote{"north": unseen("east", after), "south": unseen("east", 0), "witness": unseen("east", 0)},
			why:   "2 of 5 sites have not seen east for 20s, 3 needed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := voters
			if tc.voters != nil {
				v = tc.voters
			}
			d := MayFailOver(timing, v, "west", "east", tc.self, tc.votes)
			if d.Act != tc.act || !strings.Contains(d.Why, tc.why) {
				t.Fatalf("fail over %v (%s), want %v (%s)", d.Act, d.Why, tc.act, tc.why)
			}
		})
	}
}

func TestTimingCheck(t *testing.T) {
	if err := TimingFor(10 * time.Second).Check(); err != nil {
		t.Fatalf("the shortest after a file may give: %v", err)
	}
	// Fencing after 9 of 10 seconds leaves no room for a renewal and the
	// fence itself.
	tight := Timing{Renew: DefaultRenew, Read: ReadTimeout, FenceAfter: 9 * time.Second, After: 10 * time.Second}
	want := "after 10s: the primary's agent fences after 9s without a majority, notices within a renewal and its reads (1.5s) and takes up to 2s; allowing clocks' rates to differ by 0.2%, another site may not promote before 12.525s"
	if err := tight.Check(); err == nil || err.Error() != want {
		t.Fatalf("a timing that cannot fence first: %v, want %q", err, want)
	}
	// The edge: an after of exactly what the promise needs is enough, a
	// nanosecond less is not.
	edge := Timing{Renew: DefaultRenew, Read: ReadTimeout, FenceAfter: 5 * time.Second}
	promise := 8500 * time.Millisecond // FenceAfter + Renew + Read + FenceTime
	edge.After = time.Duration(float64(promise) / (1 - 2*MaxDrift))
	if err := edge.Check(); err != nil {
		t.Fatalf("after %s, exactly what is needed: %v", edge.After, err)
	}
	edge.After--
	if err := edge.Check(); err == nil {
		t.Fatalf("after %s, a nanosecond short: no error", edge.After)
	}
}

func TestLastPrimaryLSNAndLoss(t *testing.T) {
	votes := map[string]Vote{
		"west":    {Primary: "orders-east", PrimaryLSN: 0x3000100},
		"witness": {Primary: "orders-east", PrimaryLSN: 0x3000200},
		"north":   {Primary: "orders-north", PrimaryLSN: 0x9000000}, // another primary: not this one's WAL
	}
	last, from := LastPrimaryLSN("orders-east", votes)
	if last != 0x3000200 || len(from) != 1 || from[0] != "witness" {
		t.Fatalf("last LSN %s from %v", last, from)
	}
	if l := Loss(last, 0x3000100); l != 0x100 {
		t.Fatalf("loss %d", l)
	}
	if l := Loss(last, 0x3000300); l != 0 {
		t.Fatalf("a target ahead of what the survivors saw loses %d", l)
	}
}

// A vote is a Lease's annotation: it reads back as written.
func TestVoteJSON(t *testing.T) {
	v := Vote{Site: "west", Agent: "pgtopo-west-7d9", Renewed: now,
		Seen:    map[string]time.Time{"east": now.Add(-time.Second)},
		Unseen:  map[string]Duration{"east": Duration(1500 * time.Millisecond)},
		Primary: "orders-east", PrimaryLSN: snapshot.LSN(0x3000100)}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var back Vote
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !back.Renewed.Equal(v.Renewed) || !back.Seen["east"].Equal(v.Seen["east"]) || back.Unseen["east"] != v.Unseen["east"] || back.PrimaryLSN != v.PrimaryLSN {
		t.Fatalf("read back %s as %+v", b, back)
	}
}

// The failover's target is the standby with the most WAL; its loss is
// bounded by the furthest primary LSN a vote reports, and refused above
// maxDataLoss (one byte over refuses, at it passes) or when no vote
// reports one.
func TestChoose(t *testing.T) {
	votes := map[string]Vote{
		"west":  {Site: "west", Primary: "orders-east", PrimaryLSN: 0x3000400},
		"north": {Site: "north", Primary: "orders-east", PrimaryLSN: 0x3000500},
		"south": {Site: "south", Primary: "orders-old", PrimaryLSN: 0x9000000},
	}
	cands := []Candidate{{Cluster: "orders-west", Site: "west", Received: 0x3000100}, {Cluster: "orders-south", Site: "south", Received: 0x3000300}}
	for _, tc := range []struct {
		name    string
		max     int64
		votes   map[string]Vote
		cands   []Candidate
		target  string
		loss    int64
		refusal string
	}{
		{"at the bound", 0x200, votes, cands, "orders-south", 0x200, ""},
		{"one byte over", 0x1FF, votes, cands, "orders-south", 0x200, "more than maxDataLoss 511"},
		{"the target has more than was seen", 0, map[string]Vote{"west": votes["west"]}, []Candidate{{Cluster: "orders-west", Received: 0x3000500}}, "orders-west", 0, ""},
		{"no vote reports the primary's LSN", 1 << 20, map[string]Vote{"south": votes["south"]}, cands, "orders-south", 0, "cannot be bounded"},
		{"no standby", 1 << 20, votes, nil, "", 0, "nothing to promote"},
		{"a tie: the first candidate", 0, votes, []Candidate{{Cluster: "orders-west", Received: 0x3000500}, {Cluster: "orders-south", Received: 0x3000500}}, "orders-west", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := Choose("orders-east", tc.cands, tc.votes, tc.max)
			if tc.refusal != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refusal) {
					t.Fatalf("error %v, want %q", err, tc.refusal)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if ch.Target.Cluster != tc.target || ch.Loss != tc.loss {
				t.Fatalf("choice %+v, want %s losing %d", ch, tc.target, tc.loss)
			}
		})
	}
}
