package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
)

// connErrors remembers, for each server address, why the latest TLS
// connection to it failed before it carried anything: a handshake the
// client refused (a certificate its CA does not verify), or one the
// server refused (no client certificate, or one it does not trust),
// which TLS 1.3 reports only after the client's side of the handshake,
// as the error of the first read, or as a write or read on a connection
// the server has already closed. clientv3 keeps redialling such a
// server, and a call then ends only with its context, saying nothing of
// why; convertError adds these errors to it. An address is forgotten
// once a connection to it works.
type connErrors struct {
	mu   sync.Mutex
	last map[string]connError
}

type connError struct {
	err error
	// vague: the server closed the connection without saying why; a
	// clearer error of an earlier attempt is kept.
	vague bool
}

func (c *connErrors) fail(addr string, err error, vague bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil {
		c.last = make(map[string]connError)
	}
	if old, ok := c.last[addr]; ok && vague && !old.vague {
		return
	}
	c.last[addr] = connError{err: err, vague: vague}
}

func (c *connErrors) ok(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.last, addr)
}

// err joins the errors of every address that has no working connection
// since, in the order of the addresses; nil if there are none.
func (c *connErrors) err() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := make([]string, 0, len(c.last))
	for a := range c.last {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	errs := make([]error, len(addrs))
	for i, a := range addrs {
		errs[i] = c.last[a].err
	}
	return errors.Join(errs...)
}

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
			r.errs.fail(addr, fmt.Errorf("TLS handshake with %s: %w", addr, err), false)
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
			c.errs.ok(c.addr)
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
		c.errs.fail(c.addr, fmt.Errorf("TLS connection to %s: %w", c.addr, err), false)
		return
	}
	c.errs.fail(c.addr, fmt.Errorf("TLS connection to %s closed by the server right after the handshake (as when it requires a client certificate and got none, or one it does not trust): %w", c.addr, err), true)
}
