package cli

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestHolderGone(t *testing.T) {
	me := holderIdentity()
	if !strings.Contains(me, fmt.Sprintf("-%d-", os.Getpid())) || holderGone(me) {
		t.Fatalf("this run %q is judged gone", me)
	}
	// A process of this host that has exited.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	dead := fmt.Sprintf("%s-%d-abc123", host, cmd.Process.Pid)
	if !holderGone(dead) {
		t.Fatalf("%q: an exited process is not judged gone", dead)
	}
	// A live process of this host, another host, and a holder of another shape.
	live := fmt.Sprintf("%s-%d-abc123", host, os.Getppid())
	for _, h := range []string{live, "ci-runner-7-" + fmt.Sprint(cmd.Process.Pid) + "-abc123", "another run (just now)", host + "-notapid-x"} {
		if holderGone(h) {
			t.Errorf("%q judged gone", h)
		}
	}
}
