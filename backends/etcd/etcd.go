package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/concordha/concord/backends/etcd/internal/zapslog"
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
	// DefaultMaxTxnOps is etcd's own default of --max-txn-ops.
	DefaultMaxTxnOps = 128
)

// gRPC keep-alive of the connection, so that a silently dead connection
// (a peer gone without a FIN) is noticed and redialled. etcd refuses
// pings more often than every 5s by default.
const (
	dialKeepAliveTime    = 10 * time.Second
	dialKeepAliveTimeout = 5 * time.Second
)

// TLSFiles locate the certificates of a TLS connection to etcd; every
// backend takes the same fields.
type TLSFiles = tlsfiles.Files

// Config describes how to reach an etcd cluster.
type Config struct {
	// Endpoints are the client URLs of some members, e.g.
	// "http://10.0.0.1:2379". Required.
	Endpoints []string
	// DialTimeout bounds authentication at New when Username is set; 0
	// means 5s. New never waits for the cluster otherwise: calls wait for
	// it, each bounded by its own context.
	DialTimeout time.Duration
	// Username and Password authenticate to an etcd with auth enabled;
	// both or neither.
	Username, Password string
	// TLS secures the connection to https:// endpoints, which it then
	// requires. nil means plaintext to http:// endpoints, or TLS verified
	// by the system's roots to https:// ones. All endpoints must have the
	// same scheme.
	TLS *TLSFiles
	// KeepAliveInterval is how often a session renews its lease; 0 means
	// a third of the session's TTL. A session's TTL must exceed twice
	// the interval.
	KeepAliveInterval time.Duration
	// MaxTxnOps is the server's --max-txn-ops; 0 means 128, etcd's
	// default. It must not exceed the server's: etcd would refuse large
	// batches. Txn accepts up to MaxTxnOps - 8 ops (see Store.MaxTxnOps).
	MaxTxnOps int
	// Logger receives the client's warnings and the Store's own; nil
	// discards them.
	Logger *slog.Logger
}

// Store is a core.Store on an etcd v3 cluster. It also implements
// core.Txner, core.Expirer and core.Deleter. It is safe for concurrent use.
type Store struct {
	cli    *clientv3.Client
	owned  bool // Close closes cli
	cfg    Config
	cfgErr error // an invalid Config given to NewFromClient
	log    *slog.Logger
	conns  *connErrors // why TLS connections fail; nil without TLS or from NewFromClient

	// ctx is the parent of every watch's and session's own context; Close
	// cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Store started

	mu       sync.Mutex
	closed   bool
	sessions map[clientv3.LeaseID]*session
}

// New connects to the etcd cluster cfg names. It does not wait for the
// cluster to be reachable, unless Username is set: then it authenticates
// at once, as clientv3 does, and fails after at most DialTimeout with an
// error wrapping core.ErrUnavailable if no member answers (saying why,
// if the TLS connections fail), or at once with one wrapping
// rpctypes.ErrAuthFailed if etcd refuses the credentials. A Config it
// cannot use (TLS files it cannot load among others) fails with
// core.ErrInvalidArgument and names the field.
func New(cfg Config) (*Store, error) {
	cfg, err := cfg.resolved()
	if err != nil {
		return nil, err
	}
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("etcd: Config.Endpoints is empty: give the client URL of at least one member: %w", core.ErrInvalidArgument)
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		return nil, fmt.Errorf("etcd: set both Config.Username and Config.Password, or neither: %w", core.ErrInvalidArgument)
	}
	files, err := tlsFor(cfg.Endpoints, cfg.TLS)
	if err != nil {
		return nil, err
	}
	var (
		tlsCfg *tls.Config
		conns  *connErrors
		dial   []grpc.DialOption
	)
	if files != nil {
		if tlsCfg, err = files.Config("etcd: Config.TLS"); err != nil {
			return nil, err
		}
		// The same credentials clientv3 would make, watched so that a
		// call that times out can say why no connection works. Options
		// of DialOptions come last and so replace clientv3's.
		conns = &connErrors{}
		dial = []grpc.DialOption{grpc.WithTransportCredentials(recordingCreds{credentials.NewTLS(tlsCfg), conns})}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    dialKeepAliveTime,
		DialKeepAliveTimeout: dialKeepAliveTimeout,
		TLS:                  tlsCfg,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialOptions:          dial,
		// clientv3 warns on every failed attempt of a call; the Store
		// returns those errors, so only its errors are worth a log line.
		Logger: zapslog.New(cfg.Logger, zapcore.ErrorLevel, nil),
	})
	if err != nil {
		// Only authentication talks to the cluster in clientv3.New.
		err = rpctypes.Error(err)
		kind := classify(err)
		if kind == nil && errors.Is(err, context.DeadlineExceeded) {
			kind = core.ErrUnavailable
			if cerr := conns.Err(); cerr != nil {
				err = fmt.Errorf("%w: %w", err, noConnection(cerr))
			}
		}
		if kind != nil {
			return nil, fmt.Errorf("etcd: connect to %v: %w (%w)", cfg.Endpoints, kind, err)
		}
		return nil, fmt.Errorf("etcd: connect to %v: %w", cfg.Endpoints, err)
	}
	s := newStore(cli, cfg, true)
	s.conns = conns
	return s, nil
}

// NewFromClient builds a Store on a client the caller made and keeps:
// Close ends the Store's watches and sessions but does not close c. Of
// cfg, only KeepAliveInterval, MaxTxnOps and Logger matter. If cfg is
// invalid (see New), every call of the Store fails with that error.
func NewFromClient(c *clientv3.Client, cfg Config) *Store {
	resolved, err := cfg.resolved()
	if err != nil {
		resolved = Config{Logger: cfg.Logger, MaxTxnOps: DefaultMaxTxnOps}
	}
	s := newStore(c, resolved, false)
	s.cfgErr = err
	return s
}

func newStore(cli *clientv3.Client, cfg Config, owned bool) *Store {
	ctx, cancel := context.WithCancel(context.Background())
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &Store{
		cli:      cli,
		owned:    owned,
		cfg:      cfg,
		log:      lg,
		ctx:      ctx,
		cancel:   cancel,
		sessions: make(map[clientv3.LeaseID]*session),
	}
}

// resolved returns cfg with its defaults applied, or an error naming the
// field that is out of range.
func (c Config) resolved() (Config, error) {
	if c.DialTimeout < 0 {
		return c, fmt.Errorf("etcd: Config.DialTimeout %v is negative: %w", c.DialTimeout, core.ErrInvalidArgument)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.KeepAliveInterval < 0 {
		return c, fmt.Errorf("etcd: Config.KeepAliveInterval %v is negative: %w", c.KeepAliveInterval, core.ErrInvalidArgument)
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = DefaultMaxTxnOps
	}
	if c.MaxTxnOps <= txnReserve {
		return c, fmt.Errorf("etcd: Config.MaxTxnOps %d: want more than %d (etcd counts a nested transaction's conditions against it too), or 0 for %d: %w",
			c.MaxTxnOps, txnReserve, DefaultMaxTxnOps, core.ErrInvalidArgument)
	}
	return c, nil
}

// tlsFor returns the TLS files to dial endpoints with, nil for
// plaintext. clientv3 dials every endpoint with the scheme of the first
// and drops TLS for http://, so a mix of schemes, or TLS with http://
// endpoints, would silently not be what the Config says.
func tlsFor(endpoints []string, files *TLSFiles) (*TLSFiles, error) {
	var plain, secure []string
	for _, ep := range endpoints {
		switch scheme, _, _ := strings.Cut(ep, "://"); scheme {
		case "http":
			plain = append(plain, ep)
		case "https", "unixs":
			secure = append(secure, ep)
		}
	}
	switch {
	case len(plain) > 0 && len(secure) > 0:
		return nil, fmt.Errorf("etcd: Config.Endpoints mixes plaintext %v and TLS %v: give them all the same scheme: %w", plain, secure, core.ErrInvalidArgument)
	case files != nil && len(plain) > 0:
		return nil, fmt.Errorf("etcd: Config.TLS is set but Config.Endpoints %v are plaintext: use https:// endpoints, or leave TLS nil: %w", plain, core.ErrInvalidArgument)
	case files == nil && len(secure) > 0:
		return &TLSFiles{}, nil
	}
	return files, nil
}

// Client returns the clientv3 client the Store uses.
func (s *Store) Client() *clientv3.Client { return s.cli }

func (s *Store) isClosed() bool { return s.ctx.Err() != nil }

// usable returns an error if the Store cannot serve a call now.
func (s *Store) usable(ctx context.Context, op string) error {
	if ctx == nil {
		return fmt.Errorf("etcd: %s: nil context: %w", op, core.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcd: %s: %w", op, err)
	}
	if s.isClosed() {
		return fmt.Errorf("etcd: %s: store closed: %w", op, core.ErrClosed)
	}
	if s.cfgErr != nil {
		return s.cfgErr
	}
	if s.cli == nil {
		return fmt.Errorf("etcd: %s: no client: %w", op, core.ErrClosed)
	}
	return nil
}

// Close ends the Store's watches (each delivers a last snapshot whose Err
// wraps core.ErrClosed) and its sessions (Done fires with
// core.ErrSessionLost; their leases are not revoked, so etcd expires them
// after their TTL), waits for its goroutines, and closes the client if
// New made it. Close is idempotent.
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
	if s.owned && s.cli != nil {
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("etcd: close client: %w", err)
		}
	}
	return nil
}
