package zookeeper

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"

	"github.com/concordha/concord/backends/internal/tlsfiles"
)

// secure is the TLS of a Store's connections (Config.TLS): the client
// configuration, and, for each server address, why the latest
// connection to it failed before it carried anything. go-zookeeper only
// logs a failed dial and tries the next server, and its calls fail with
// zk.ErrNoServer once it has tried them all, which says nothing of why;
// convertError adds these errors to it. An address is forgotten once a
// connection to it carries an answer.
type secure struct {
	cfg     *tls.Config
	hasCert bool // Config.TLS has a client certificate

	errs tlsfiles.ConnErrors
}

func newSecure(cfg *tls.Config) *secure {
	return &secure{cfg: cfg, hasCert: cfg.GetClientCertificate != nil}
}

// err joins why the connections to each server fail; nil if none do,
// or without TLS.
func (t *secure) err() error {
	if t == nil {
		return nil
	}
	return t.errs.Err()
}

// withConnErrors adds to err, a call's failure to reach ZooKeeper, why
// the TLS connections to the servers fail, if they do.
func (s *Store) withConnErrors(err error) error {
	if cerr := s.sec.err(); cerr != nil {
		return fmt.Errorf("%w: no working TLS connection: %w", err, cerr)
	}
	return err
}

// dial opens a connection to addr for go-zookeeper or ExpireSession,
// over TLS with Config.TLS: the TCP connection and the TLS handshake
// together are bounded by DialTimeout, and by ctx. A failed handshake
// is recorded for convertError, and returned, saying why it failed.
func (s *Store) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(dctx, network, addr)
	if err != nil || s.sec == nil {
		return raw, err
	}
	cfg := s.sec.cfg
	if cfg.ServerName == "" {
		// As tls.Dial does: the certificate must name the host dialled.
		host, _, _ := net.SplitHostPort(addr)
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(dctx); err != nil {
		_ = raw.Close()
		err = fmt.Errorf("TLS handshake with %s failed: %s: %w", addr, s.sec.why(err), err)
		if ctx.Err() == nil {
			s.sec.errs.Fail(addr, err, false)
		}
		return nil, err
	}
	return &firstReadConn{Conn: c, addr: addr, sec: s.sec, tls13: c.ConnectionState().Version >= tls.VersionTLS13}, nil
}

// why tells what a failed handshake means, as far as the error shows.
func (t *secure) why(err error) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		header   tls.RecordHeaderError
		op       *net.OpError
	)
	switch {
	case errors.As(err, &unknown):
		return "the server's certificate is not signed by a CA of Config.TLS.CAFile (the system's roots without it)"
	case errors.As(err, &hostname):
		return "the server's certificate does not name the address dialled; set Config.TLS.ServerName to a name it holds"
	case errors.As(err, &invalid):
		return "the server's certificate is not valid"
	case errors.As(err, &header):
		return "the server does not speak TLS (is this ZooKeeper's secureClientPort?)"
	case errors.As(err, &op) && op.Op == "remote error":
		return "the server refused the handshake, " + t.refusalHint()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "the server closed the connection (is this ZooKeeper's secureClientPort? its plaintext clientPort drops a TLS hello)"
	case errors.Is(err, context.DeadlineExceeded):
		return "it did not finish within Config.DialTimeout"
	}
	return "an error"
}

// refusalHint guesses why a server refused this client.
func (t *secure) refusalHint() string {
	if t.hasCert {
		return "as when it does not trust the client certificate of Config.TLS.CertFile"
	}
	return "as when it requires a client certificate, which Config.TLS has none of (CertFile, KeyFile)"
}

// firstReadConn records how a TLS connection went until its first read.
// With TLS 1.3 the server checks the client's certificate after the
// client has finished its side of the handshake, and its refusal comes
// as the error of the first read, or of a write or read on a connection
// it has already closed.
type firstReadConn struct {
	net.Conn
	addr  string
	sec   *secure
	tls13 bool
	done  atomic.Bool // the first read has returned
}

func (c *firstReadConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if (n > 0 || err != nil) && c.done.CompareAndSwap(false, true) {
		switch {
		case n > 0:
			c.sec.errs.OK(c.addr)
		case errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ETIMEDOUT), isTimeout(err):
			// Closed by the client, or no answer: nothing about TLS.
		default:
			c.failed(err)
		}
	}
	return n, err
}

func (c *firstReadConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && !c.done.Load() && !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
		c.failed(err)
	}
	return n, err
}

// failed records err, of a connection that has not carried anything
// yet. A TLS alert from the server says why it refused; anything else
// (a reset, a broken pipe, an EOF) only that it closed the connection,
// which after a TLS 1.2 handshake (the server accepted the client's
// certificate by then) has nothing to do with TLS.
func (c *firstReadConn) failed(err error) {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		c.sec.errs.Fail(c.addr, fmt.Errorf("TLS connection to %s refused by the server after the handshake, %s: %w", c.addr, c.sec.refusalHint(), err), false)
		return
	}
	if c.tls13 {
		c.sec.errs.Fail(c.addr, fmt.Errorf("TLS connection to %s closed by the server right after the handshake, %s: %w", c.addr, c.sec.refusalHint(), err), true)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
