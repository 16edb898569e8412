package live

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtopo/pgtopo/snapshot"
)

// Conns keeps probe connections open between the snapshots of one run, so
// the waits of an apply, which observe every 100-300 ms, do not open a
// session (a backend fork and a SCRAM exchange) per cluster each time.
//
// A kept connection stays on the server it first reached through the
// Service, while the Service may since route elsewhere; MaxAge bounds how
// long a probe can see that server instead of the Service's current one.
// A server that restarts (every Patroni role change of it does) ends the
// connection, and the probe then connects again at once.
type Conns struct {
	// MaxAge is how long one connection is used (default 10s).
	MaxAge time.Duration
	// MaxIdle is how long an unused connection stays open (default 5s).
	MaxIdle time.Duration

	mu   sync.Mutex
	idle map[connKey][]*keptConn
}

// connKey tells connections apart by where, as whom and how checked; the
// password is part of it only as a digest, so a rotated password (or CA)
// opens a new session.
type connKey struct {
	ep       snapshot.Endpoint
	user     string
	password [sha256.Size]byte
	tls      [sha256.Size]byte
}

type keptConn struct {
	conn   *pgx.Conn
	opened time.Time
	expiry *time.Timer
}

func (k *Conns) maxAge() time.Duration {
	if k.MaxAge > 0 {
		return k.MaxAge
	}
	return 10 * time.Second
}

func (k *Conns) maxIdle() time.Duration {
	if k.MaxIdle > 0 {
		return k.MaxIdle
	}
	return 5 * time.Second
}

// take returns a kept connection young enough to use, or nil.
func (k *Conns) take(key connKey) *keptConn {
	k.mu.Lock()
	defer k.mu.Unlock()
	for list := k.idle[key]; len(list) > 0; list = k.idle[key] {
		c := list[len(list)-1]
		k.idle[key] = list[:len(list)-1]
		c.expiry.Stop()
		if time.Since(c.opened) < k.maxAge() {
			return c
		}
		go c.conn.Close(context.Background())
	}
	return nil
}

// put keeps a healthy connection for the next probe, closing it when no
// probe takes it within MaxIdle.
func (k *Conns) put(key connKey, c *keptConn) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.idle == nil {
		k.idle = map[connKey][]*keptConn{}
	}
	k.idle[key] = append(k.idle[key], c)
	c.expiry = time.AfterFunc(k.maxIdle(), func() { k.expire(key, c) })
}

func (k *Conns) expire(key connKey, c *keptConn) {
	k.mu.Lock()
	list := k.idle[key]
	for i, kc := range list {
		if kc == c {
			k.idle[key] = append(list[:i:i], list[i+1:]...)
			k.mu.Unlock()
			c.conn.Close(context.Background())
			return
		}
	}
	k.mu.Unlock() // taken in the meantime
}

// Close ends every kept connection.
func (k *Conns) Close() {
	k.mu.Lock()
	idle := k.idle
	k.idle = nil
	k.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.expiry.Stop()
			c.conn.Close(context.Background())
		}
	}
}
