package live

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"

	"github.com/pgtopo/pgtopo/snapshot"
	"github.com/pgtopo/pgtopo/topology"
)

// LoginReader reads what signing in to a site's clusters takes: their
// credentials Secrets and the CA bundle that verifies their servers.
type LoginReader interface {
	GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error)
	CABundles
}

// CredentialKeys are the keys of the admin login in a cluster's
// credentials Secret (the operator's).
type CredentialKeys interface {
	CredentialKeys() (user, password string)
}

// LoginFrom reads the admin login a credentials Secret holds; either part
// is empty when its key is missing.
func LoginFrom(keys CredentialKeys, sec *corev1.Secret) (user, password string) {
	u, p := keys.CredentialKeys()
	return string(sec.Data[u]), string(sec.Data[p])
}

// Admin opens sessions to a cluster's PostgreSQL as its admin user, with
// the credentials from the cluster's credentials Secret and the CA of the
// topology's TLS policy, read at each open and never kept.
type Admin struct {
	// Sites opens a site's Secrets by the site's name.
	Sites func(site string) (LoginReader, error)
	// TLS is the topology's (Desired.TLS).
	TLS topology.PostgresTLS
	// Keys are the credentials Secret's keys of the login.
	Keys CredentialKeys
}

// Open connects to the cluster's endpoint.
func (a Admin) Open(ctx context.Context, c *snapshot.ClusterState) (*Session, error) {
	if c.Endpoint == nil {
		return nil, fmt.Errorf("no endpoint")
	}
	login, err := a.Login(ctx, c)
	if err != nil {
		return nil, err
	}
	return OpenSession(ctx, *c.Endpoint, login)
}

// Login reads what signing in to the cluster as its admin takes, for a
// caller that connects again and again (a drill's heartbeat writer), which
// keeps it in memory only.
func (a Admin) Login(ctx context.Context, c *snapshot.ClusterState) (Login, error) {
	site, err := a.Sites(c.Site)
	if err != nil {
		return Login{}, err
	}
	sec, err := site.GetSecret(ctx, c.Namespace, c.Credentials.Name)
	if err != nil {
		return Login{}, fmt.Errorf("credentials %s/%s: %w", c.Namespace, c.Credentials.Name, err)
	}
	tls, err := ReadTLS(ctx, site, a.TLS, c.Name, c.Namespace)
	if err != nil {
		return Login{}, fmt.Errorf("CA bundle: %w", err)
	}
	user, password := LoginFrom(a.Keys, sec)
	return Login{User: user, Password: password, TLS: tls}, nil
}

// OpenSession connects to an endpoint with a login.
func OpenSession(ctx context.Context, ep snapshot.Endpoint, login Login) (*Session, error) {
	conn, err := Connect(ctx, ep, login, 0)
	if err != nil {
		return nil, err
	}
	return &Session{conn: conn}, nil
}

// Session is one admin session.
type Session struct{ conn *pgx.Conn }

// Exec runs one statement.
func (s *Session) Exec(ctx context.Context, sql string, args ...any) error {
	_, err := s.conn.Exec(ctx, sql, args...)
	return err
}

// QueryRow runs a query for one row.
func (s *Session) QueryRow(ctx context.Context, sql string, args ...any) interface{ Scan(dest ...any) error } {
	return s.conn.QueryRow(ctx, sql, args...)
}

// Close ends the session.
func (s *Session) Close(ctx context.Context) error { return s.conn.Close(ctx) }
