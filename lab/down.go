package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pgtopo/pgtopo/lab/proc"
)

// MemberPidFiles lists the pid files of every Patroni member of a lab.
func MemberPidFiles(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "sites", "*", "clusters", "*", "*", "*", "patroni.pid"))
	return files
}

// Down stops every process of the lab, in the order that lets each stop
// cleanly (operators first so nothing restarts members, then Patroni, which
// stops PostgreSQL, then the apiservers and etcd), then kills whatever still
// mentions the lab directory. It is safe to run on a lab that is half up or
// already down.
func Down(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	p := Paths{dir}
	stopAll := func(files []string, grace time.Duration) {
		done := make(chan struct{}, len(files))
		for _, f := range files {
			go func() {
				proc.Stop(proc.ReadPid(f), grace)
				done <- struct{}{}
			}()
		}
		for range files {
			<-done
		}
	}
	operators, _ := filepath.Glob(p.Pid("operator-*"))
	vms, _ := filepath.Glob(p.Pid("vm-*"))
	operators = append(operators, vms...)
	stopAll(operators, 5*time.Second)
	stopAll(MemberPidFiles(dir), 20*time.Second)
	apiservers, _ := filepath.Glob(p.Pid("apiserver-*"))
	gateways, _ := filepath.Glob(p.Pid("gateway-*"))
	apiservers = append(apiservers, gateways...)
	stopAll(apiservers, 10*time.Second)
	stopAll([]string{p.Pid("etcd")}, 10*time.Second)
	for _, pid := range proc.Mentioning(dir) {
		proc.Stop(pid, time.Second)
	}
	if left := proc.Mentioning(dir); len(left) > 0 {
		return fmt.Errorf("lab %s: processes still running after down: %v", dir, left)
	}
	if st, err := Load(dir); err == nil {
		if st.Netns {
			tearDownNetwork(st)
		}
		releaseSlot(st)
		_ = os.RemoveAll(SocketRoot(st.Slot))
	}
	return nil
}

// SocketRoot holds the members' unix sockets; it is short because socket
// paths are limited to 107 bytes.
func SocketRoot(slot int) string { return fmt.Sprintf("/tmp/.pglab-%d", slot) }
