package consul

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/backends/internal/tlsfiles"
	"github.com/concordha/concord/core"
)

var (
	_ core.Store   = (*Store)(nil)
	_ core.Txner   = (*Store)(nil)
	_ core.Expirer = (*Store)(nil)
	_ core.Deleter = (*Store)(nil)
)

// Defaults of Config, applied where a field is zero.
const (
	DefaultDialTimeout = 5 * time.Second
	// DefaultLockDelay is the lock-delay of the Store's sessions: the
	// smallest Consul takes (it counts whole milliseconds, and reads 0 as
	// its own default of 15s).
	DefaultLockDelay = time.Millisecond
	// DefaultMaxTxnOps is the number of operations a Consul transaction
	// may hold in every Consul version since transactions exist (1.16
	// accepts 128).
	DefaultMaxTxnOps = 64
)

// maxLockDelay is the largest lock-delay Consul accepts
// (structs.MaxLockDelay).
const maxLockDelay = 60 * time.Second

// TLSFiles locate the certificates of a TLS connection to Consul; every
// backend takes the same fields.
type TLSFiles = tlsfiles.Files

// Config describes how to reach Consul.
type Config struct {
	// Endpoints are the HTTP addresses of one or more Consul agents,
	// "host:port" or "http(s)://host:port". The Store talks to one at a
	// time and moves to the next when one cannot be reached. Required.
	Endpoints []string
	// Datacenter is the Consul datacenter to use; "" means the agent's.
	Datacenter string
	// Token is the ACL token sent with every request. When it is empty,
	// the Consul client falls back to CONSUL_HTTP_TOKEN or
	// CONSUL_HTTP_TOKEN_FILE, as Consul's own tools do.
	Token string
	// TLS secures the connection to the agents: scheme-less endpoints
	// then use https, and http:// endpoints are refused. nil means
	// plaintext, or TLS verified by the system's roots for https://
	// endpoints. All endpoints must have the same scheme.
	TLS *TLSFiles
	// DialTimeout bounds each connection attempt to an agent (TCP and
	// TLS), and New's check of Token; 0 means 5s.
	DialTimeout time.Duration
	// KeepAliveInterval is how often a session renews itself; 0 means a
	// third of the session's TTL. A session's TTL must exceed twice the
	// interval.
	KeepAliveInterval time.Duration
	// LockDelay is the lock-delay of the Store's sessions: how long
	// Consul refuses to register a key again after the session holding
	// it ended. 0 means 1ms; Consul allows up to 60s.
	LockDelay time.Duration
	// MaxTxnOps is the number of operations one Consul transaction may
	// hold; 0 means 64. Consul 1.16 accepts 128. Txn accepts half as many
	// ops (see Store.MaxTxnOps).
	MaxTxnOps int
	// Logger receives the Store's debug and warning messages; nil
	// discards them.
	Logger *slog.Logger
}

// agent is one Consul agent the Store may talk to.
type agent struct {
	addr string // scheme://host:port, for messages
	cli  *api.Client
}

// Store is a core.Store on Consul's KV store, sessions and transactions.
// It also implements core.Txner, core.Expirer and core.Deleter. It is
// safe for concurrent use.
type Store struct {
	cfg    Config
	log    *slog.Logger
	tr     *http.Transport
	agents []*agent
	cur    atomic.Int64 // index of the agent in use

	// ctx is the parent of every call's, watch's and session's context;
	// Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Store started
	calls  sync.WaitGroup // calls in flight

	mu       sync.Mutex
	closed   bool
	sessions map[string]*session
}

// New makes a Store for the Consul agents cfg names. A Config it cannot
// use fails with core.ErrInvalidArgument, naming the field. New talks to
// Consul only when Token is set: then it checks the token at once
// (bounded by DialTimeout), failing with an error wrapping core.ErrDenied
// if Consul does not know it, or core.ErrUnavailable if no agent answers.
// Without a token it does not wait for Consul: calls do, each bounded by
// its own context.
func New(cfg Config) (*Store, error) {
	cfg, err := cfg.resolved()
	if err != nil {
		return nil, err
	}
	eps, err := parseEndpoints(cfg.Endpoints, cfg.TLS != nil)
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if eps[0].scheme == "https" {
		files := cfg.TLS
		if files == nil {
			files = &TLSFiles{}
		}
		if tlsCfg, err = files.Config("consul: Config.TLS"); err != nil {
			return nil, err
		}
	}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: cfg.DialTimeout,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	hc := &http.Client{Transport: tr}
	s := &Store{cfg: cfg, log: cfg.Logger, tr: tr, sessions: make(map[string]*session)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, ep := range eps {
		cli, err := api.NewClient(&api.Config{
			Address:    ep.hostPort,
			Scheme:     ep.scheme,
			Datacenter: cfg.Datacenter,
			Token:      cfg.Token,
			HttpClient: hc,
		})
		if err != nil {
			return nil, fmt.Errorf("consul: client for %s: %w: %w", ep, err, core.ErrInvalidArgument)
		}
		s.agents = append(s.agents, &agent{addr: ep.String(), cli: cli})
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if cfg.Token != "" {
		if err := s.checkToken(); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// checkToken asks Consul about the Store's own token. An agent with ACLs
// disabled ignores tokens and says so with a 401, which is not an error.
func (s *Store) checkToken() error {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	defer cancel()
	err := s.call(ctx, true, func(c *api.Client) error {
		_, _, err := c.ACL().TokenReadSelf((&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
		s.log.Warn("consul: Config.Token is set but the agent has ACLs disabled", "agent", s.agents[s.cur.Load()].addr)
		return nil
	}
	if err != nil && ctx.Err() != nil {
		// Every agent was tried until DialTimeout passed.
		return fmt.Errorf("consul: check the ACL token at %v: %w (%w)", s.cfg.Endpoints, core.ErrUnavailable, err)
	}
	if err != nil {
		return s.convertError(context.Background(), "check the ACL token", "", err)
	}
	return nil
}

// resolved returns c with its defaults applied, or an error naming the
// field that is out of range.
func (c Config) resolved() (Config, error) {
	if len(c.Endpoints) == 0 {
		return c, fmt.Errorf("consul: Config.Endpoints is empty: give the HTTP address of at least one agent, e.g. \"127.0.0.1:8500\": %w", core.ErrInvalidArgument)
	}
	if c.DialTimeout < 0 {
		return c, fmt.Errorf("consul: Config.DialTimeout %v is negative: %w", c.DialTimeout, core.ErrInvalidArgument)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.KeepAliveInterval < 0 {
		return c, fmt.Errorf("consul: Config.KeepAliveInterval %v is negative: %w", c.KeepAliveInterval, core.ErrInvalidArgument)
	}
	switch {
	case c.LockDelay < 0:
		return c, fmt.Errorf("consul: Config.LockDelay %v is negative: %w", c.LockDelay, core.ErrInvalidArgument)
	case c.LockDelay == 0:
		c.LockDelay = DefaultLockDelay
	case c.LockDelay > maxLockDelay:
		return c, fmt.Errorf("consul: Config.LockDelay %v exceeds Consul's largest, %v: %w", c.LockDelay, maxLockDelay, core.ErrInvalidArgument)
	}
	switch {
	case c.MaxTxnOps == 0:
		c.MaxTxnOps = DefaultMaxTxnOps
	case c.MaxTxnOps < 2:
		return c, fmt.Errorf("consul: Config.MaxTxnOps %d: want at least 2, or 0 for %d: %w", c.MaxTxnOps, DefaultMaxTxnOps, core.ErrInvalidArgument)
	}
	return c, nil
}

// endpoint is one parsed Config.Endpoints entry.
type endpoint struct{ scheme, hostPort string }

func (e endpoint) String() string { return e.scheme + "://" + e.hostPort }

// parseEndpoints checks the endpoints and gives each its scheme:
// scheme-less ones get https with TLS files, http without.
func parseEndpoints(raw []string, withTLS bool) ([]endpoint, error) {
	eps := make([]endpoint, 0, len(raw))
	for i, r := range raw {
		field := fmt.Sprintf("Config.Endpoints[%d]", i)
		ep := endpoint{scheme: "http", hostPort: r}
		if withTLS {
			ep.scheme = "https"
		}
		if scheme, rest, ok := strings.Cut(r, "://"); ok {
			if scheme != "http" && scheme != "https" {
				return nil, fmt.Errorf("consul: %s %q: scheme %q: want http or https: %w", field, r, scheme, core.ErrInvalidArgument)
			}
			ep = endpoint{scheme: scheme, hostPort: strings.TrimSuffix(rest, "/")}
		}
		host, port, err := net.SplitHostPort(ep.hostPort)
		if err != nil || host == "" || strings.ContainsAny(ep.hostPort, "/?#") {
			return nil, fmt.Errorf("consul: %s %q: want host:port or http(s)://host:port: %w", field, r, core.ErrInvalidArgument)
		}
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return nil, fmt.Errorf("consul: %s %q: bad port %q: %w", field, r, port, core.ErrInvalidArgument)
		}
		eps = append(eps, ep)
	}
	for _, ep := range eps[1:] {
		if ep.scheme != eps[0].scheme {
			return nil, fmt.Errorf("consul: Config.Endpoints mixes %s and %s: give them all the same scheme: %w", eps[0], ep, core.ErrInvalidArgument)
		}
	}
	if withTLS && eps[0].scheme == "http" {
		return nil, fmt.Errorf("consul: Config.TLS is set but Config.Endpoints %v are plaintext: use https:// endpoints, or leave TLS nil: %w", raw, core.ErrInvalidArgument)
	}
	return eps, nil
}

// Client returns the Consul client of the agent in use.
func (s *Store) Client() *api.Client { return s.agents[s.cur.Load()].cli }

func (s *Store) isClosed() bool { return s.ctx.Err() != nil }

// begin checks that a call can run, and returns its context: ctx, also
// cancelled when the Store closes. The caller must call end when the
// call is over, so that Close can wait for it.
func (s *Store) begin(ctx context.Context, op string) (cctx context.Context, end func(), err error) {
	if ctx == nil {
		return nil, nil, fmt.Errorf("consul: %s: nil context: %w", op, core.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("consul: %s: %w", op, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("consul: %s: store closed: %w", op, core.ErrClosed)
	}
	s.calls.Add(1)
	s.mu.Unlock()
	cctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	return cctx, func() {
		stop()
		cancel()
		s.calls.Done()
	}, nil
}

// call runs f against the agent in use. If f fails because the agent
// could not be reached, the next agent becomes the one in use, and f is
// tried there too, once around the list: at once when the request never
// left (a failed dial or TLS handshake), and for any transport error
// when idempotent is set. A write that may have reached an agent is not
// sent again: a second attempt could report the first one's effect as a
// conflict.
func (s *Store) call(ctx context.Context, idempotent bool, f func(*api.Client) error) error {
	n := int64(len(s.agents))
	start := s.cur.Load()
	var err error
	for i := int64(0); i < n; i++ {
		k := (start + i) % n
		err = f(s.agents[k].cli)
		if err == nil || ctx.Err() != nil || !isTransport(err) {
			return err
		}
		next := (k + 1) % n
		if s.cur.CompareAndSwap(k, next) && n > 1 {
			s.log.Debug("consul: agent unreachable; moving to the next", "agent", s.agents[k].addr, "next", s.agents[next].addr, "err", err)
		}
		if !idempotent && !notSent(err) {
			return err
		}
	}
	return err
}

// query is the options of a consistent read on ctx.
func query(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
}

// write is the options of a write on ctx.
func write(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

// Close ends the Store's watches (each delivers a last snapshot whose Err
// wraps core.ErrClosed) and its sessions (Done fires with
// core.ErrSessionLost; they are not destroyed, so Consul expires them
// after their TTL), cancels the calls in flight, waits for its
// goroutines, and closes its idle connections. Close is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	clear(s.sessions)
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.fire(ss.lost("its store was closed"))
	}
	s.wg.Wait()
	s.calls.Wait()
	s.tr.CloseIdleConnections()
	return nil
}
