package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestClaimSlot(t *testing.T) {
	write := func(t *testing.T, slots string, slot int, content string, age time.Duration) {
		t.Helper()
		path := filepath.Join(slots, strconv.Itoa(slot))
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		then := time.Now().Add(-age)
		if err := os.Chtimes(path, then, then); err != nil {
			t.Fatal(err)
		}
	}
	// A process that has exited: its pid names nobody (until reused).
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	deadPid := exited.ProcessState.Pid()

	for _, tc := range []struct {
		name    string
		content string
		age     time.Duration
		want    int
	}{
		{"a lab whose claimer runs keeps its slot before its etcd starts", "/tmp/other-lab\n" + strconv.Itoa(os.Getpid()) + "\n", time.Minute, 1},
		{"a lab with neither etcd nor claimer is gone", "/tmp/other-lab\n" + strconv.Itoa(deadPid) + "\n", time.Minute, 0},
		{"a slot file from before claimers were recorded, no etcd: gone", "/tmp/other-lab", time.Minute, 0},
		{"a file still being written is taken", "", 0, 1},
		{"an empty file left behind long ago is gone", "", time.Minute, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slots := t.TempDir()
			write(t, slots, 0, tc.content, tc.age)
			got, err := claimSlot(slots, "/tmp/this-lab")
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("claimed slot %d, want %d", got, tc.want)
			}
		})
	}

	t.Run("labs claiming at once get different slots", func(t *testing.T) {
		slots := t.TempDir()
		const n = 8
		got := make([]int, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				s, err := claimSlot(slots, "/tmp/lab-"+strconv.Itoa(i))
				if err != nil {
					t.Error(err)
				}
				got[i] = s
			})
		}
		wg.Wait()
		seen := map[int]bool{}
		for _, s := range got {
			if seen[s] {
				t.Fatalf("slots %v: one claimed twice", got)
			}
			seen[s] = true
		}
	})
}
