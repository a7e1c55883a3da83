package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/concordha/concord/backends/consul"
	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/backends/zookeeper"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/config"
)

// nodeStore is the store a node runs on, with whatever runs it in this
// process (the embedded etcd, the memory server). The backend is a named
// field, not embedded, so that core gets the backend itself and sees its
// optional capabilities (Txner, Expirer, Deleter), which a wrapper would hide.
type nodeStore struct {
	store   core.Store
	done    <-chan struct{} // closed if an in-process server stops; nil if none
	err     func() error
	closers []func() error // run in reverse order by Close
}

// Done is closed if the in-process server under the store stops.
func (s *nodeStore) Done() <-chan struct{} { return s.done }

// Err tells why Done fired.
func (s *nodeStore) Err() error {
	if s.err == nil {
		return nil
	}
	return s.err()
}

// Close closes the client, then the server under it.
func (s *nodeStore) Close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	return errors.Join(errs...)
}

func storeSummary(f *config.File) string {
	switch f.Store.Type {
	case config.StoreEmbedded:
		e := f.Store.Embedded
		return fmt.Sprintf("embedded etcd (member %s, data %s, clients %s)", e.Name, e.DataDir, e.ClientURL)
	case config.StoreMemory:
		return "memory (this process only)"
	default:
		return fmt.Sprintf("%s at %s", f.Store.Type, strings.Join(f.Store.Endpoints, ","))
	}
}

// openStore opens the store the config names. The embedded etcd is
// started here, and retried with backoff while it cannot start (its peers
// may not be up yet); it returns early only when ctx ends.
func openStore(ctx context.Context, f *config.File, log *slog.Logger) (*nodeStore, error) {
	s := f.Store
	switch s.Type {
	case config.StoreMemory:
		log.Warn("store.type is memory: the store lives in this process; no other node can join, and nothing survives a restart")
		srv := memory.New(memory.Options{MaxTxnOps: s.MaxTxnOps})
		return &nodeStore{store: srv.Client(f.Node.ID), closers: []func() error{func() error { srv.Close(); return nil }}}, nil

	case config.StoreEmbedded:
		srv, err := startEmbedded(ctx, f, log)
		if err != nil {
			return nil, err
		}
		st, err := etcd.New(etcd.Config{
			Endpoints: srv.Endpoints(), TLS: nodeClientTLS(s.Embedded.ClientTLS),
			DialTimeout: s.DialTimeout, KeepAliveInterval: s.KeepaliveInterval,
			MaxTxnOps: embeddedMaxTxnOps(s.MaxTxnOps), Logger: log,
		})
		if err != nil {
			_ = srv.Close()
			return nil, fmt.Errorf("%s: store.embedded: %w", f.Path, err)
		}
		return &nodeStore{store: st, done: srv.Done(), err: srv.Err,
			closers: []func() error{srv.Close, st.Close}}, nil

	case config.StoreEtcd:
		cfg := etcd.Config{
			Endpoints: s.Endpoints, DialTimeout: s.DialTimeout,
			Username: s.Auth.Username, KeepAliveInterval: s.KeepaliveInterval,
			MaxTxnOps: s.MaxTxnOps, Logger: log,
		}
		if s.Auth.Username != "" {
			pw, err := s.Auth.PasswordValue()
			if err != nil {
				return nil, fmt.Errorf("%s: store.auth: %w", f.Path, err)
			}
			cfg.Password = pw
		}
		if s.TLS.Enabled() {
			cfg.TLS = &etcd.TLSFiles{CAFile: s.TLS.CAFile, CertFile: s.TLS.CertFile, KeyFile: s.TLS.KeyFile,
				ServerName: s.TLS.ServerName, InsecureSkipVerify: s.TLS.InsecureSkipVerify}
		}
		// New authenticates a username at once: an unreachable etcd is
		// retried here, as waitReachable does without one.
		st, err := retryUnavailable(ctx, f, log, "etcd", func() (*etcd.Store, error) { return etcd.New(cfg) })
		if err != nil {
			return nil, err
		}
		return &nodeStore{store: st, closers: []func() error{st.Close}}, nil

	case config.StoreConsul:
		cfg := consul.Config{
			Endpoints: s.Endpoints, DialTimeout: s.DialTimeout, KeepAliveInterval: s.KeepaliveInterval,
			MaxTxnOps: s.MaxTxnOps, Logger: log,
		}
		token, err := s.Auth.TokenValue()
		if err != nil {
			return nil, fmt.Errorf("%s: store.auth: %w", f.Path, err)
		}
		cfg.Token = token
		if s.TLS.Enabled() {
			cfg.TLS = &consul.TLSFiles{CAFile: s.TLS.CAFile, CertFile: s.TLS.CertFile, KeyFile: s.TLS.KeyFile,
				ServerName: s.TLS.ServerName, InsecureSkipVerify: s.TLS.InsecureSkipVerify}
		}
		// New checks a token at once: retried as for etcd.
		st, err := retryUnavailable(ctx, f, log, "consul", func() (*consul.Store, error) { return consul.New(cfg) })
		if err != nil {
			return nil, err
		}
		return &nodeStore{store: st, closers: []func() error{st.Close}}, nil

	case config.StoreZooKeeper:
		cfg := zookeeper.Config{Endpoints: s.Endpoints, DialTimeout: s.DialTimeout, Digest: s.Auth.Digest, Logger: log}
		if s.TLS.Enabled() {
			cfg.TLS = &zookeeper.TLSFiles{CAFile: s.TLS.CAFile, CertFile: s.TLS.CertFile, KeyFile: s.TLS.KeyFile,
				ServerName: s.TLS.ServerName, InsecureSkipVerify: s.TLS.InsecureSkipVerify}
		}
		// New authenticates a digest at once: retried as for consul.
		st, err := retryUnavailable(ctx, f, log, "zookeeper", func() (*zookeeper.Store, error) { return zookeeper.New(cfg) })
		if err != nil {
			return nil, err
		}
		return &nodeStore{store: st, closers: []func() error{st.Close}}, nil

	default:
		return nil, fmt.Errorf("%s: store.type %q is not known to this build of concord; use one of %s", f.Path, s.Type, strings.Join(config.StoreTypes, ", "))
	}
}

// retryUnavailable calls open until it succeeds, fails with an error
// other than core.ErrUnavailable (a config or a credential no retry
// mends, reported with the config file's name), or ctx ends. Attempts are
// logged and spaced by the store's backoff.
func retryUnavailable[S any](ctx context.Context, f *config.File, log *slog.Logger, what string, open func() (S, error)) (S, error) {
	delay := f.Store.RetryMin
	for attempt := 1; ; attempt++ {
		st, err := open()
		if err == nil {
			return st, nil
		}
		if !errors.Is(err, core.ErrUnavailable) {
			var zero S
			return zero, fmt.Errorf("%s: store: %w", f.Path, err)
		}
		log.Warn(what+" unreachable; retrying", "attempt", attempt, "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			var zero S
			return zero, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, f.Store.RetryMax)
	}
}

// embeddedMaxTxnOps is what the embedded server allows and its client
// uses: concord batches the writes of many services into one transaction,
// so the embedded etcd allows more than etcd's default of 128.
func embeddedMaxTxnOps(configured int) int {
	if configured > 0 {
		return configured
	}
	return embedded.DefaultMaxTxnOps
}

// memberTLS is the embedded member's setup of one listener; nil, for
// plaintext, when the config sets none of its keys.
func memberTLS(t config.EmbeddedTLS) *embedded.TLS {
	if !t.Enabled() {
		return nil
	}
	return &embedded.TLS{CertFile: t.CertFile, KeyFile: t.KeyFile, TrustedCAFile: t.CAFile, ClientCertAuth: t.ClientCertAuth}
}

// nodeClientTLS is how this node's own client reaches its embedded member
// when the member serves clients over TLS (nil otherwise): it verifies
// the member's certificate against client_tls.ca_file (the system's
// roots if empty) for the host of client_url, and with client_cert_auth
// presents the certificate that EmbeddedClientTLS.NodeClientCert names.
// The config has checked that the member's certificate and that one pass
// these checks.
func nodeClientTLS(t config.EmbeddedClientTLS) *etcd.TLSFiles {
	if !t.Enabled() {
		return nil
	}
	cert, key := t.NodeClientCert()
	return &etcd.TLSFiles{CAFile: t.CAFile, CertFile: cert, KeyFile: key}
}

func startEmbedded(ctx context.Context, f *config.File, log *slog.Logger) (*embedded.Server, error) {
	e := f.Store.Embedded
	cfg := embedded.Config{
		Name: e.Name, DataDir: e.DataDir, ClientURL: e.ClientURL, PeerURL: e.PeerURL,
		ClientTLS: memberTLS(e.ClientTLS.Listener()), PeerTLS: memberTLS(e.PeerTLS),
		InitialCluster: e.InitialCluster, ClusterState: e.ClusterState, ClusterToken: e.ClusterToken,
		MaxTxnOps: embeddedMaxTxnOps(f.Store.MaxTxnOps), Logger: log,
	}
	// What no retry mends fails at once: a config the member refuses, a
	// data directory that cannot be made.
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: store.embedded: %w", f.Path, err)
	}
	if err := os.MkdirAll(e.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%s: store.embedded.data_dir: cannot create %q: %w; choose a directory this process can write", f.Path, e.DataDir, err)
	}
	delay := f.Store.RetryMin
	for attempt := 1; ; attempt++ {
		srv, err := embedded.Start(ctx, cfg)
		if err == nil {
			log.Info("embedded etcd serving", "member", e.Name, "clients", strings.Join(srv.Endpoints(), ","), "data_dir", e.DataDir)
			return srv, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("embedded etcd could not start; retrying", "attempt", attempt, "retry_in", delay, "data_dir", e.DataDir, "initial_cluster", e.InitialCluster, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, f.Store.RetryMax)
	}
}
