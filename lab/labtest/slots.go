package labtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// MaxLabs is how many labs the tests of this machine run at once, across
// test processes (go test runs packages in parallel): two cores take two
// labs; more make every wait slower and flakier, not the run faster.
// PGLAB_MAX_LABS overrides it.
const MaxLabs = 2

// slotWait bounds how long a test waits for a lab slot.
const slotWait = 30 * time.Minute

// TakeSlot blocks until fewer than MaxLabs labs of tests run, and returns
// the function that gives the slot back. A slot is an flock on a file in
// /tmp/pglab-slots, so a killed test process frees its slot.
func TakeSlot(what string) (release func(), err error) {
	limit := MaxLabs
	if v, err := strconv.Atoi(os.Getenv("PGLAB_MAX_LABS")); err == nil && v > 0 {
		limit = v
	}
	dir := "/tmp/pglab-slots"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(slotWait)
	for {
		for i := 0; i < limit; i++ {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("test-lab-%d.lock", i)), os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				return nil, err
			}
			if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
				return func() {
					_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
					f.Close()
				}, nil
			}
			f.Close()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: no lab slot free after %s (%d labs of tests run); PGLAB_MAX_LABS raises the limit", what, slotWait, limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
