package e2e

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
)

// dialInside dials from inside a network namespace: the socket is made on
// a thread moved into it, and keeps the namespace once the thread is gone
// (a goroutine that ends locked to its thread takes the thread with it, so
// no other goroutine ever runs in the namespace).
func dialInside(netns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		out := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			fd, err := unix.Open("/var/run/netns/"+netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				out <- result{err: fmt.Errorf("netns %s: %w", netns, err)}
				return
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				out <- result{err: fmt.Errorf("netns %s: %w", netns, err)}
				return
			}
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			out <- result{c, err}
		}()
		r := <-out
		return r.c, r.err
	}
}

// siteSampler asks, every tick, each data site's cluster from inside its
// site whether it takes writes now (not in recovery, transactions not
// read-only), as a client in that site would find: the lab's outside
// cannot see a cut-off primary. It counts the ticks when two did.
type siteSampler struct {
	mu       sync.Mutex
	ticks    int
	both     int
	bothAt   []time.Time
	stop     chan struct{}
	done     sync.WaitGroup
	clusters *addressBook // cluster → how to reach it from its site
	conns    map[string]*pgx.Conn
}

// addressBook says how to reach each of a fixed set of clusters, and can
// be told anew while readers use it: a rebuilt cluster's Service comes
// back on another node port, and a sampler or writer still dialling the
// old one would be blind to it.
type addressBook struct {
	names []string
	cfgs  map[string]*atomic.Pointer[pgx.ConnConfig]
}

func newAddressBook(cfgs map[string]*pgx.ConnConfig) *addressBook {
	b := &addressBook{cfgs: map[string]*atomic.Pointer[pgx.ConnConfig]{}}
	for name, cfg := range cfgs {
		b.names = append(b.names, name)
		b.cfgs[name] = &atomic.Pointer[pgx.ConnConfig]{}
		b.cfgs[name].Store(cfg)
	}
	slices.Sort(b.names)
	return b
}

func (b *addressBook) get(name string) *pgx.ConnConfig { return b.cfgs[name].Load() }

// set replaces how to reach name; it reports whether that changed.
func (b *addressBook) set(name string, cfg *pgx.ConnConfig) bool {
	old := b.cfgs[name].Swap(cfg)
	return old.Host != cfg.Host || old.Port != cfg.Port
}

// startSiteSampler samples the clusters, each reached as the book says
// (their DialFunc set to dial inside their sites).
func startSiteSampler(book *addressBook) *siteSampler {
	s := &siteSampler{stop: make(chan struct{}), clusters: book, conns: map[string]*pgx.Conn{}}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				for _, c := range s.conns {
					c.Close(context.Background())
				}
				return
			case <-t.C:
			}
			writable := 0
			for _, name := range s.clusters.names {
				if s.writable(name) {
					writable++
				}
			}
			s.mu.Lock()
			s.ticks++
			if writable > 1 {
				s.both++
				s.bothAt = append(s.bothAt, time.Now())
			}
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *siteSampler) writable(name string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	cfg := s.clusters.get(name)
	c := s.conns[name]
	if c != nil && (c.Config().Host != cfg.Host || c.Config().Port != cfg.Port) {
		c.Close(ctx)
		c = nil
	}
	if c == nil {
		var err error
		if c, err = pgx.ConnectConfig(ctx, cfg); err != nil {
			return false
		}
		s.conns[name] = c
	}
	var inRecovery bool
	var readOnly string
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").Scan(&inRecovery, &readOnly); err != nil {
		c.Close(context.Background())
		delete(s.conns, name)
		return false
	}
	return !inRecovery && readOnly == "off"
}

func (s *siteSampler) finish() (ticks, both int, at []time.Time) {
	close(s.stop)
	s.done.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ticks, s.both, s.bothAt
}
