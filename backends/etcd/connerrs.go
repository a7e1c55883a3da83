package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/grpc/credentials"

	"github.com/concordha/concord/backends/internal/tlsfiles"
)

// connErrors remembers why the TLS connections to each member fail
// (see tlsfiles.ConnErrors): clientv3 keeps redialling such a member, and
// a call then ends only with its context; convertError adds these errors
// to it. TLS 1.3 reports a handshake the server refused only after the
// client's side of it, as the error of the first read, or as a write or
// read on a connection the server has already closed: conn records those.
type connErrors = tlsfiles.ConnErrors

// recordingCreds are TLS transport credentials that tell connErrors how
// each connection's handshake and first read went.
type recordingCreds struct {
	credentials.TransportCredentials
	errs *connErrors
}

func (r recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	addr := raw.RemoteAddr().String()
	conn, info, err := r.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		if ctx.Err() == nil {
			r.errs.Fail(addr, fmt.Errorf("TLS handshake with %s: %w", addr, err), false)
		}
		return nil, nil, err
	}
	return &firstReadConn{Conn: conn, addr: addr, errs: r.errs}, info, nil
}

func (r recordingCreds) Clone() credentials.TransportCredentials {
	return recordingCreds{TransportCredentials: r.TransportCredentials.Clone(), errs: r.errs}
}

// firstReadConn reports how a connection went until its first read: the
// server's verdict on the client's certificate arrives only then with
// TLS 1.3.
type firstReadConn struct {
	net.Conn
	addr string
	errs *connErrors
	done atomic.Bool // the first read has returned
}

func (c *firstReadConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if (n > 0 || err != nil) && c.done.CompareAndSwap(false, true) {
		switch {
		case n > 0:
			c.errs.OK(c.addr)
		case !errors.Is(err, net.ErrClosed): // closed by the client
			c.failed(err)
		}
	}
	return n, err
}

func (c *firstReadConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && !c.done.Load() {
		c.failed(err)
	}
	return n, err
}

// failed records err, of a connection that has not carried anything
// yet. A TLS alert from the server says why it refused; anything else
// (a reset, a broken pipe, an EOF) only that it closed the connection.
func (c *firstReadConn) failed(err error) {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		c.errs.Fail(c.addr, fmt.Errorf("TLS connection to %s: %w", c.addr, err), false)
		return
	}
	c.errs.Fail(c.addr, fmt.Errorf("TLS connection to %s closed by the server right after the handshake (as when it requires a client certificate and got none, or one it does not trust): %w", c.addr, err), true)
}
