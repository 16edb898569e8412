package ports

import (
	"net"
	"strconv"
	"testing"
)

// The ports are distinct, free, and below the NodePort and the ephemeral
// range.
func TestFree(t *testing.T) {
	got, err := Free(8)
	if err != nil {
		t.Fatal(err)
	}
	top := min(highest, ephemeralStart())
	seen := map[int]bool{}
	for _, p := range got {
		if p < lowest || p >= top || seen[p] {
			t.Fatalf("ports %v: want 8 distinct ones in [%d, %d)", got, lowest, top)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d is not free: %v", p, err)
		}
		l.Close()
	}
}
