package embedded

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	"github.com/concordha/concord/backends/etcd/internal/zapslog"
)

// ErrClosed is what Err returns once Close has stopped the server.
var ErrClosed = errors.New("embedded etcd: server closed")

// Server is one running etcd member.
type Server struct {
	cfg Config // resolved: every default applied, every port chosen
	e   *embed.Etcd

	mu    sync.Mutex
	grpcs []*grpc.Server // the client-facing gRPC servers, for a hard stop

	stopping  atomic.Bool   // set once the member is being stopped
	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	done      chan struct{} // closed once the member has stopped
	err       error         // why; written before done is closed
	exited    chan struct{} // closed when the monitor goroutine returns
}

// Start starts a member and returns once it serves clients: for a
// cluster, once a leader is elected and the member has joined. It fails
// with an error that says what to fix when a URL is taken, DataDir cannot
// be written, or the member is not ready within StartTimeout (for a
// cluster, usually because too few members of InitialCluster run).
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("embedded etcd: start: %w", err)
	}
	c, err := cfg.resolved()
	if err != nil {
		return nil, err
	}
	if err := checkDataDir(c.DataDir); err != nil {
		return nil, err
	}
	if err := c.ClientTLS.load("ClientTLS"); err != nil {
		return nil, err
	}
	if err := c.PeerTLS.load("PeerTLS"); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     c,
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	ec, err := s.etcdConfig()
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, s.startError(err)
	}
	s.e = e
	if err := s.waitReady(ctx); err != nil {
		// etcd's Close waits for its client servers, which wait for the
		// member to be ready or stopping: stop the member first.
		s.stopping.Store(true)
		s.e.Server.HardStop()
		s.halt()
		return nil, err
	}
	go s.monitor()
	return s, nil
}

// etcdConfig translates the resolved Config into etcd's.
func (s *Server) etcdConfig() (*embed.Config, error) {
	c := s.cfg
	ec := embed.NewConfig()
	ec.Name = c.Name
	ec.Dir = c.DataDir
	client, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: ClientURL %q: %w", c.ClientURL, err)
	}
	peer, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: PeerURL %q: %w", c.PeerURL, err)
	}
	ec.ListenClientUrls = []url.URL{*client}
	ec.AdvertiseClientUrls = []url.URL{*client}
	ec.ListenPeerUrls = []url.URL{*peer}
	ec.AdvertisePeerUrls = []url.URL{*peer}
	ec.ClientTLSInfo = c.ClientTLS.info()
	ec.PeerTLSInfo = c.PeerTLS.info()
	ec.InitialCluster = c.InitialCluster
	ec.ClusterState = c.ClusterState
	ec.InitialClusterToken = c.ClusterToken
	ec.TickMs = uint(c.HeartbeatInterval / time.Millisecond)
	ec.ElectionMs = uint(c.ElectionTimeout / time.Millisecond)
	ec.MaxTxnOps = uint(c.MaxTxnOps)
	if c.QuotaBackendBytes > 0 {
		ec.QuotaBackendBytes = c.QuotaBackendBytes
	}
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "0"
	if c.CompactionRetention > 0 {
		ec.AutoCompactionRetention = c.CompactionRetention.String()
	}
	ec.UnsafeNoFsync = c.UnsafeNoFsync
	// concord speaks gRPC only: no HTTP/JSON gateway and its internal
	// client connection, no metrics listener.
	ec.EnableGRPCGateway = false
	ec.ListenMetricsUrls = nil
	ec.LogLevel = "warn"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapslog.New(c.Logger, zapcore.WarnLevel, s.demote))
	ec.ServiceRegister = s.addGRPC
	return ec, nil
}

// info is etcd's form of t; the zero TLSInfo, plaintext, for a nil t.
func (t *TLS) info() transport.TLSInfo {
	if t == nil {
		return transport.TLSInfo{}
	}
	return transport.TLSInfo{
		CertFile:       t.CertFile,
		KeyFile:        t.KeyFile,
		TrustedCAFile:  t.TrustedCAFile,
		ClientCertAuth: t.ClientCertAuth,
	}
}

// addGRPC remembers each gRPC server etcd builds for clients, so that
// Close can end open streams at once. etcd itself stops them gracefully
// and so waits, for its whole request timeout (7s by default), on every
// watch a client still holds.
func (s *Server) addGRPC(g *grpc.Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.grpcs = append(s.grpcs, g)
}

func (s *Server) waitReady(ctx context.Context) error {
	c := s.cfg
	timer := time.NewTimer(c.StartTimeout)
	defer timer.Stop()
	select {
	case <-s.e.Server.ReadyNotify():
		return nil
	case err, ok := <-s.e.Err():
		if !ok {
			err = errors.New("stopped")
		}
		return fmt.Errorf("embedded etcd: member %q failed while starting: %w", c.Name, err)
	case <-s.e.Server.StopNotify():
		return fmt.Errorf("embedded etcd: member %q stopped while starting (see its logs; a DataDir from another cluster, or a member removed from its cluster, does this)", c.Name)
	case <-timer.C:
		if c.InitialCluster == c.Name+"="+c.PeerURL {
			return fmt.Errorf("embedded etcd: member %q not ready after %v (StartTimeout)", c.Name, c.StartTimeout)
		}
		return fmt.Errorf("embedded etcd: member %q not ready after %v (StartTimeout): a majority of the members of InitialCluster %q must run and reach each other on their peer URLs; start the others, or raise StartTimeout",
			c.Name, c.StartTimeout, c.InitialCluster)
	case <-ctx.Done():
		return fmt.Errorf("embedded etcd: member %q: start: %w", c.Name, ctx.Err())
	}
}

// startError explains a failure of embed.StartEtcd.
func (s *Server) startError(err error) error {
	c := s.cfg
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("embedded etcd: member %q: %w: ClientURL %q or PeerURL %q is taken by another process; choose free ports, or leave them empty to pick free ones",
			c.Name, err, c.ClientURL, c.PeerURL)
	}
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("embedded etcd: member %q: %w: DataDir %q must be writable by this process", c.Name, err, c.DataDir)
	}
	return fmt.Errorf("embedded etcd: member %q: start: %w", c.Name, err)
}

// checkDataDir makes sure DataDir exists and can be written, so that the
// error names the field rather than a file deep inside etcd.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("embedded etcd: DataDir %q cannot be created: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".concord-probe-*")
	if err != nil {
		return fmt.Errorf("embedded etcd: DataDir %q is not writable: %w", dir, err)
	}
	name := f.Name()
	_ = f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("embedded etcd: DataDir %q: remove probe file: %w", dir, err)
	}
	return nil
}

// monitor waits for the member to stop, whoever stops it, and then
// releases everything it holds.
func (s *Server) monitor() {
	defer close(s.exited)
	var err error
	select {
	case <-s.closing:
		err = ErrClosed
	case <-s.e.Server.StopNotify():
		err = fmt.Errorf("embedded etcd: member %q stopped on its own (removed from the cluster, or a fatal error it logged)", s.cfg.Name)
	case e, ok := <-s.e.Err():
		if !ok || e == nil {
			e = errors.New("a listener stopped")
		}
		err = fmt.Errorf("embedded etcd: member %q failed: %w", s.cfg.Name, e)
	}
	s.halt()
	s.err = err
	close(s.done)
}

// expectedWarnings are etcd warnings that say nothing about a member
// inside concord: its client port carries gRPC only, and the package
// documents that etcd's authentication, if a client enables it, uses
// simple tokens (etcd warns about them at every start, auth or not).
var expectedWarnings = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

// demote tells the logger which of etcd's warnings and errors are noise:
// the expected ones, and everything logged while the member stops (etcd
// reports its own closed listeners as errors).
func (s *Server) demote(e zapcore.Entry) bool {
	return s.stopping.Load() || expectedWarnings[e.Message]
}

// halt stops the client servers at once, then the member.
func (s *Server) halt() {
	s.stopping.Store(true)
	s.mu.Lock()
	grpcs := s.grpcs
	s.grpcs = nil
	s.mu.Unlock()
	for _, g := range grpcs {
		g.Stop()
	}
	s.e.Close()
}

// Endpoints returns the client URLs to give clientv3.
func (s *Server) Endpoints() []string { return []string{s.cfg.ClientURL} }

// Config returns the configuration the member runs with: every default
// applied and every port chosen. Restart a member with it to keep its
// URLs.
func (s *Server) Config() Config { return s.cfg }

// Close stops the member and waits until it has released its listeners,
// files and goroutines. Clients' open calls and watches end at once. If
// the member leads a cluster, it hands leadership over first. Close is
// idempotent and always returns nil.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	<-s.exited
	return nil
}

// Done is closed once the member has stopped, for whatever reason.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err returns nil while the member runs; then ErrClosed after Close, or
// the error that stopped it.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}
