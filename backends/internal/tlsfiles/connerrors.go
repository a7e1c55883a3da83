package tlsfiles

import (
	"errors"
	"slices"
	"sync"
)

// ConnErrors remembers, for each server address, why the latest TLS
// connection to it failed before it carried anything: a handshake the
// client refused (a certificate its CA does not verify), or one the
// server refused (no client certificate, or one it does not trust). A
// client library that keeps redialling such a server ends a call only
// with its context, or a bare "no server", saying nothing of why; a
// backend adds Err to that error. An address is forgotten once a
// connection to it works. The zero value is ready to use.
type ConnErrors struct {
	mu   sync.Mutex
	last map[string]connError
}

type connError struct {
	err error
	// vague: the server closed the connection without saying why; a
	// clearer error of an earlier attempt is kept.
	vague bool
}

// Fail records why the connection to addr failed. A vague error (the
// server closed the connection without saying why) does not replace a
// clearer one.
func (c *ConnErrors) Fail(addr string, err error, vague bool) {
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

// OK forgets addr: a connection to it works.
func (c *ConnErrors) OK(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.last, addr)
}

// Err joins the errors of every address with no working connection since,
// in the order of the addresses; nil if there are none, or if c is nil.
func (c *ConnErrors) Err() error {
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
