package zookeeper

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/concordha/concord/backends/internal/tlsfiles"
	"github.com/concordha/concord/core"
)

var (
	_ core.Store   = (*Store)(nil)
	_ core.Expirer = (*Store)(nil)
	_ core.Deleter = (*Store)(nil)
)

// Defaults of Config, applied where a field is zero.
const (
	DefaultDialTimeout = 5 * time.Second
	// DefaultPort is ZooKeeper's client port, for endpoints without one.
	DefaultPort = 2181
)

// storeSessionTimeout is the session timeout the Store's own connection
// asks for. Nothing is bound to that session: it only decides how soon
// ZooKeeper forgets the connection's watches after it breaks. The server
// clamps it to between 2 and 20 ticks.
const storeSessionTimeout = 10 * time.Second

// TLSFiles locate the certificates of a TLS connection to ZooKeeper; every
// backend takes the same fields.
type TLSFiles = tlsfiles.Files

// Config describes how to reach a ZooKeeper ensemble.
type Config struct {
	// Endpoints are the client addresses of some servers, "host" or
	// "host:port" (port 2181 when left out; IPv6 addresses in brackets).
	// Required. go-zookeeper has no chroot: a "/path" suffix is refused.
	// With TLS, name the servers' secureClientPort: ZooKeeper has no
	// standard one, and a port left out is still 2181.
	Endpoints []string
	// TLS secures every connection to the servers (the Store's, each
	// session's, and ExpireSession's), which must then be their
	// secureClientPort. nil means plaintext.
	TLS *TLSFiles
	// DialTimeout bounds each connection attempt (TCP, and the TLS
	// handshake with TLS), New's authentication when Digest is set, and
	// how long NewSession waits for ZooKeeper to open the session; 0
	// means 5s.
	DialTimeout time.Duration
	// Digest is "user:password" for ZooKeeper's digest scheme. When set,
	// every connection of the Store authenticates with it, and every
	// znode the Store creates gets an ACL that grants all permissions to
	// that identity and nothing to anyone else. Empty means no
	// authentication, and znodes open to anyone.
	Digest string
	// Logger receives the client's and the Store's messages; nil
	// discards them.
	Logger *slog.Logger
}

// resolved returns c with its defaults applied and its endpoints in
// host:port form, or an error naming the field that is wrong.
func (c Config) resolved() (Config, error) {
	if len(c.Endpoints) == 0 {
		return c, fmt.Errorf("zookeeper: Config.Endpoints is empty: give the host:port of at least one server: %w", core.ErrInvalidArgument)
	}
	eps := make([]string, 0, len(c.Endpoints))
	for _, ep := range c.Endpoints {
		norm, err := endpoint(ep)
		if err != nil {
			return c, fmt.Errorf("zookeeper: Config.Endpoints: %q: %v: %w", ep, err, core.ErrInvalidArgument)
		}
		eps = append(eps, norm)
	}
	c.Endpoints = eps
	if c.DialTimeout < 0 {
		return c, fmt.Errorf("zookeeper: Config.DialTimeout %v is negative: %w", c.DialTimeout, core.ErrInvalidArgument)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Digest != "" {
		user, pass, ok := strings.Cut(c.Digest, ":")
		if !ok || user == "" || pass == "" {
			return c, fmt.Errorf("zookeeper: Config.Digest must be \"user:password\" with neither part empty: %w", core.ErrInvalidArgument)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// endpoint checks one address and returns it as host:port.
func endpoint(ep string) (string, error) {
	switch {
	case ep == "":
		return "", fmt.Errorf("empty address")
	case strings.Contains(ep, "://"):
		return "", fmt.Errorf("give host:port, without a scheme")
	case strings.Contains(ep, "/"):
		return "", fmt.Errorf("a chroot path is not supported: give host:port only, and put the path in the keys")
	case strings.ContainsAny(ep, " ,"):
		return "", fmt.Errorf("give one address per entry")
	}
	host, port := ep, strconv.Itoa(DefaultPort)
	switch {
	case strings.HasPrefix(ep, "[") && strings.HasSuffix(ep, "]"):
		host = ep[1 : len(ep)-1]
	case strings.HasPrefix(ep, "[") || strings.Count(ep, ":") == 1:
		h, p, err := net.SplitHostPort(ep)
		if err != nil {
			return "", err
		}
		host, port = h, p
	case strings.Contains(ep, ":"):
		return "", fmt.Errorf("an IPv6 address must be in brackets, as in [::1]:2181")
	}
	if host == "" {
		return "", fmt.Errorf("no host")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return net.JoinHostPort(host, port), nil
}

// Store is a core.Store on a ZooKeeper ensemble, through one connection
// (one ZooKeeper session, to which nothing is bound) for reads, writes
// and watches, plus one connection per core.Session. It also implements
// core.Deleter, and core.Expirer for the sessions this process opened. It
// is safe for concurrent use.
type Store struct {
	cfg  Config
	log  *slog.Logger
	acl  []zk.ACL
	auth []byte  // digest credentials, nil without Config.Digest
	sec  *secure // TLS, nil without Config.TLS
	conn *zk.Conn

	// ctx ends when the Store closes; watches and sessions stop with it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Store started

	mu       sync.Mutex
	closed   bool
	sessions map[*session]struct{}

	arms *armed // the watches set on conn, shared by the Store's watchers
}

// New connects to the ensemble cfg names. Without Config.Digest it does
// not wait for a server: calls made while none answers end with their
// context, or with core.ErrUnavailable once go-zookeeper has tried every
// server. With Digest it authenticates at once and fails, after at most
// DialTimeout, with an error wrapping core.ErrUnavailable if no server
// answers. A Config it cannot use (TLS files it cannot load among
// others) fails with core.ErrInvalidArgument and names the field.
func New(cfg Config) (*Store, error) {
	cfg, err := cfg.resolved()
	if err != nil {
		return nil, err
	}
	var sec *secure
	if f := cfg.TLS; f != nil {
		tc, err := tlsfiles.Files{
			CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: f.KeyFile,
			ServerName: f.ServerName, InsecureSkipVerify: f.InsecureSkipVerify,
		}.Config("zookeeper: Config.TLS")
		if err != nil {
			return nil, err
		}
		sec = newSecure(tc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg:      cfg,
		log:      cfg.Logger,
		acl:      zk.WorldACL(zk.PermAll),
		sec:      sec,
		ctx:      ctx,
		cancel:   cancel,
		sessions: make(map[*session]struct{}),
		arms:     newArmed(),
	}
	if cfg.Digest != "" {
		user, pass, _ := strings.Cut(cfg.Digest, ":")
		s.acl = zk.DigestACL(zk.PermAll, user, pass)
		s.auth = []byte(cfg.Digest)
	}
	conn, _, err := zk.Connect(cfg.Endpoints, storeSessionTimeout,
		zk.WithDialer(s.dialer(nil)),
		zk.WithEventCallback(s.arms.onEvent),
		zk.WithLogger(zkLogger{s.log, "store"}),
		zk.WithLogInfo(false))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("zookeeper: connect to %v: %w (%w)", cfg.Endpoints, core.ErrUnavailable, err)
	}
	s.conn = conn
	if s.auth != nil {
		actx, acancel := context.WithTimeout(ctx, cfg.DialTimeout)
		err := s.authenticate(actx, conn)
		timedOut := actx.Err() != nil
		acancel()
		if err != nil {
			_ = s.Close()
			if timedOut {
				return nil, fmt.Errorf("zookeeper: connect to %v: no server answered within %v (Config.DialTimeout): %w (%w)", cfg.Endpoints, cfg.DialTimeout, core.ErrUnavailable, err)
			}
			return nil, fmt.Errorf("zookeeper: connect to %v: %w", cfg.Endpoints, err)
		}
	}
	return s, nil
}

// authenticate adds the digest credentials to conn, which resends them
// on every reconnection. Requests queued on conn after it are sent after
// it, so no request of the Store goes out unauthenticated.
func (s *Store) authenticate(ctx context.Context, conn *zk.Conn) error {
	_, err := do(s, ctx, func() (struct{}, error) {
		return struct{}{}, conn.AddAuth("digest", s.auth)
	})
	return s.convertError(ctx, "authenticate", "", err)
}

// dialer returns the Dialer of a connection: TCP, and TLS with
// Config.TLS, bounded by DialTimeout (see Store.dial), through t when
// the connection carries a core.Session. t sees the plaintext, so it
// wraps the TLS connection.
func (s *Store) dialer(t *tracker) zk.Dialer {
	return func(network, address string, _ time.Duration) (net.Conn, error) {
		if t != nil && t.refused() {
			return nil, errRefused
		}
		c, err := s.dial(s.ctx, network, address)
		if err != nil || t == nil {
			return c, err
		}
		return t.wrap(c), nil
	}
}

// usable returns an error if the Store cannot serve a call now.
func (s *Store) usable(ctx context.Context, op string) error {
	if ctx == nil {
		return fmt.Errorf("zookeeper: %s: nil context: %w", op, core.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("zookeeper: %s: %w", op, err)
	}
	if s.isClosed() {
		return fmt.Errorf("zookeeper: %s: store closed: %w", op, core.ErrClosed)
	}
	return nil
}

func (s *Store) isClosed() bool { return s.ctx.Err() != nil }

// do runs f, a blocking go-zookeeper call, in a goroutine of the Store,
// and returns its result, or ctx's error as soon as ctx ends: the call
// then finishes in the background, which it does when ZooKeeper answers,
// when go-zookeeper gives up on the connection, or at the latest when
// the Store closes its connections.
func do[T any](s *Store, ctx context.Context, f func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return zero, errStoreClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer s.wg.Done()
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// Close ends the Store's watches (each delivers a last snapshot whose Err
// wraps core.ErrClosed) and its sessions (Done fires with
// core.ErrSessionLost, and each connection is closed, which asks
// ZooKeeper to end the session and delete its keys at once), closes the
// Store's connection, and waits for its goroutines. Close is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	clear(s.sessions)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, ss := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ss.lose("its store was closed", false)
		}()
	}
	wg.Wait()
	if s.conn != nil {
		s.conn.Close()
	}
	s.wg.Wait()
	return nil
}

// zkLogger hands go-zookeeper's log lines to slog, at debug level: the
// Store returns the errors that matter, and go-zookeeper logs every
// failed connection attempt.
type zkLogger struct {
	l    *slog.Logger
	conn string
}

func (z zkLogger) Printf(format string, args ...any) {
	z.l.Debug("zookeeper client: "+fmt.Sprintf(format, args...), "conn", z.conn)
}
