package pgtest

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Relay forwards TCP sessions to one address and records what clients
// sent, so a test can read what went over the wire.
type Relay struct {
	ln   net.Listener
	mu   sync.Mutex
	sent [][]byte
}

// StartRelay listens on host (a free port) and forwards to to, until the
// test ends.
func StartRelay(t testing.TB, host, to string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go r.serve(to)
	return r
}

func (r *Relay) serve(to string) {
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", to)
		if err != nil {
			in.Close()
			continue
		}
		r.mu.Lock()
		i := len(r.sent)
		r.sent = append(r.sent, nil)
		r.mu.Unlock()
		go func() {
			defer out.Close()
			buf := make([]byte, 4096)
			for {
				n, err := in.Read(buf)
				r.mu.Lock()
				r.sent[i] = append(r.sent[i], buf[:n]...)
				r.mu.Unlock()
				if n > 0 {
					if _, werr := out.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { defer in.Close(); _, _ = io.Copy(in, out) }()
	}
}

// Host and Port are where the relay listens.
func (r *Relay) Host() string { return r.ln.Addr().(*net.TCPAddr).IP.String() }
func (r *Relay) Port() int    { return r.ln.Addr().(*net.TCPAddr).Port }

// Sessions are what clients sent, one entry per session.
func (r *Relay) Sessions() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([][]byte, len(r.sent))
	for i, s := range r.sent {
		out[i] = bytes.Clone(s)
	}
	return out
}

// SSLRequest is the 8 bytes a PostgreSQL client sends to ask for TLS
// before anything else: length 8, code 80877103.
var SSLRequest = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)

// Decoy is a listener that counts the connections it is offered and
// closes them: where nothing should connect (libpq's PGHOST, say).
type Decoy struct {
	ln   net.Listener
	hits atomic.Int32
}

// StartDecoy listens on 127.0.0.1 until the test ends.
func StartDecoy(t testing.TB) *Decoy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &Decoy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.hits.Add(1)
			c.Close()
		}
	}()
	return d
}

// Addr is where the decoy listens; Port its port as a string.
func (d *Decoy) Addr() string { return d.ln.Addr().String() }
func (d *Decoy) Port() string { _, p, _ := net.SplitHostPort(d.Addr()); return p }

// Hits is how many connections reached it.
func (d *Decoy) Hits() int { return int(d.hits.Load()) }
