package patroni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/pgtopo/pgtopo/snapshot"
)

// Client talks to one Patroni cluster's REST API through whichever member
// answers: GET /cluster and GET /config read the DCS, so any member gives
// the cluster's view, and PATCH /config on any member changes it.
type Client struct {
	HTTP    *http.Client
	Members []snapshot.Endpoint
	// TLS: the REST API serves HTTPS (HTTP carries the CA).
	TLS bool
	// User and Password are the REST API's basic auth, sent on writes
	// only (Patroni guards its unsafe endpoints with it).
	User, Password string
}

// ClusterView is GET /cluster: the members as Patroni sees them.
type ClusterView struct {
	Members []MemberView `json:"members"`
	Pause   bool         `json:"pause,omitempty"`
}

// MemberView is one member of GET /cluster.
type MemberView struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	State    string `json:"state"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Timeline int    `json:"timeline"`
	// Lag is Patroni's word for a replica's lag: bytes, or "unknown".
	Lag any `json:"lag,omitempty"`
}

// Leading reports whether the member holds the leader lock: a primary's
// leader ("leader"; "master" before Patroni 3) or a standby cluster's.
func (m MemberView) Leading() bool {
	return m.Role == "leader" || m.Role == "master" || m.Role == "primary" || m.Role == "standby_leader"
}

// Leader is the member holding the leader lock, if any.
func (v ClusterView) Leader() (MemberView, bool) {
	for _, m := range v.Members {
		if m.Leading() {
			return m, true
		}
	}
	return MemberView{}, false
}

// ErrNoMember is wrapped by every error where no member answered.
var ErrNoMember = errors.New("no member answered")

// Cluster reads GET /cluster.
func (c *Client) Cluster(ctx context.Context) (*ClusterView, error) {
	var v ClusterView
	if err := c.do(ctx, http.MethodGet, "/cluster", nil, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// Config reads GET /config, the cluster's dynamic configuration.
func (c *Client) Config(ctx context.Context) (map[string]any, error) {
	var cfg map[string]any
	if err := c.do(ctx, http.MethodGet, "/config", nil, &cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// PatchConfig merges patch into the dynamic configuration (a null value
// removes its key), as patronictl edit-config does.
func (c *Client) PatchConfig(ctx context.Context, patch map[string]any) error {
	return c.do(ctx, http.MethodPatch, "/config", patch, nil)
}

// do sends the request to each member in turn until one answers; an
// answer with an error status is final (the cluster said no).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var tried []string
	for _, m := range c.Members {
		answered, err := c.doOn(ctx, m, method, path, body, out)
		if answered || ctx.Err() != nil {
			return err
		}
		tried = append(tried, err.Error())
	}
	return fmt.Errorf("%s %s: %w (%s)", method, path, ErrNoMember, strings.Join(tried, "; "))
}

// RestartPending asks every member to restart its server if a setting
// waits for a restart (POST /restart with restart_pending), in the order
// the topology lists them; a member that answers no is an error.
func (c *Client) RestartPending(ctx context.Context) error {
	for _, m := range c.Members {
		answered, err := c.doOn(ctx, m, http.MethodPost, "/restart", map[string]any{"restart_pending": true}, nil)
		if err != nil && (answered || ctx.Err() != nil) {
			return err
		}
		if err != nil {
			return fmt.Errorf("POST /restart: %w (%s)", ErrNoMember, err)
		}
	}
	return nil
}

// doOn sends one request to one member: whether it answered, and the
// error of the exchange or of its answer.
func (c *Client) doOn(ctx context.Context, m snapshot.Endpoint, method, path string, body, out any) (bool, error) {
	var payload []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return false, err
		}
		payload = b
	}
	scheme := "http"
	if c.TLS {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+"://"+m.String()+path, bytes.NewReader(payload))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	if method != http.MethodGet && c.User != "" {
		req.SetBasicAuth(c.User, c.Password)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return false, fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		}
		return false, fmt.Errorf("%s: %s", m, shortNetError(err))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	resp.Body.Close()
	if err != nil {
		return false, fmt.Errorf("%s: %v", m, err)
	}
	if resp.StatusCode >= 300 {
		// Patroni's body is short words; never a credential.
		return true, fmt.Errorf("%s %s on member %s: HTTP %d: %s", method, path, m, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out == nil {
		return true, nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return true, fmt.Errorf("%s %s on member %s: %w", method, path, m, err)
	}
	return true, nil
}

// shortNetError drops the request line Go puts before a network error,
// which repeats the member's URL.
func shortNetError(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.Contains(s, "dial") {
		return s[i+2:]
	}
	return s
}
