package memory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/concordha/concord/core"
)

var (
	_ core.Store   = (*Client)(nil)
	_ core.Txner   = (*Client)(nil)
	_ core.Expirer = (*Client)(nil)
	_ core.Deleter = (*Client)(nil)
)

// Client is one connection to a Server. It implements core.Store,
// core.Txner, core.Expirer and core.Deleter. Every call first honours its context, then
// the client's isolation (failing at once), then the latency and hang set
// on the server, and finally faults, under the server's lock, where it
// runs.
type Client struct {
	srv  *Server
	name string
	done chan struct{} // closed by Close

	// Guarded by srv.mu.
	closed   bool
	sessions map[*session]struct{}
	watchers map[*watcher]struct{}
}

// Name returns the name the client was created with.
func (c *Client) Name() string {
	if c == nil {
		return ""
	}
	return c.name
}

// call carries one request to the server: fn runs with the server locked,
// once the request is admitted.
func (c *Client) call(ctx context.Context, op string, keys []string, fn func() error) error {
	if c == nil || c.srv == nil {
		return fmt.Errorf("memory: %s: client not created by Server.Client: %w", op, core.ErrClosed)
	}
	if ctx == nil {
		return fmt.Errorf("memory: %s: nil context: %w", op, core.ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory: %s: %w", op, err)
	}
	s := c.srv
	s.mu.Lock()
	err := c.closedLocked(op)
	if err == nil && s.isolated[c.name] {
		err = fmt.Errorf("memory: %s: client %q is cut off: %w", op, c.name, core.ErrUnavailable)
	}
	delay := s.latencyLocked(c.name)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if delay > 0 {
		if err := c.wait(ctx, op, delay); err != nil {
			return err
		}
	}
	if err := c.waitUnhung(ctx, op); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := c.closedLocked(op); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory: %s: %w", op, err)
	}
	if err := s.admitLocked(c.name, op, keys); err != nil {
		return err
	}
	return fn()
}

func (c *Client) closedLocked(op string) error {
	if c.closed {
		return fmt.Errorf("memory: %s: client closed: %w", op, core.ErrClosed)
	}
	if c.srv.closed {
		return fmt.Errorf("memory: %s: server closed: %w", op, core.ErrClosed)
	}
	return nil
}

func emptyKey(op string) error {
	return fmt.Errorf("memory: %s: empty key: %w", op, core.ErrInvalidArgument)
}

// Get implements core.Store.
func (c *Client) Get(ctx context.Context, key string) (core.KV, error) {
	if key == "" {
		return core.KV{}, emptyKey(opGet)
	}
	var kv core.KV
	err := c.call(ctx, opGet, []string{key}, func() (err error) {
		kv, err = c.srv.getLocked(key)
		return err
	})
	return kv, err
}

// List implements core.Store. The empty prefix lists every key.
func (c *Client) List(ctx context.Context, prefix string) (core.Snapshot, error) {
	var snap core.Snapshot
	err := c.call(ctx, opList, []string{prefix}, func() error {
		snap = c.srv.listLocked(prefix)
		return nil
	})
	return snap, err
}

// Create implements core.Store.
func (c *Client) Create(ctx context.Context, key string, value []byte) (core.KV, error) {
	return c.write(ctx, opCreate, core.Op{Kind: core.OpCreate, Key: key, Value: value})
}

// CompareAndSwap implements core.Store.
func (c *Client) CompareAndSwap(ctx context.Context, key string, value []byte, version int64) (core.KV, error) {
	return c.write(ctx, opCAS, core.Op{Kind: core.OpCAS, Key: key, Value: value, Version: version})
}

func (c *Client) write(ctx context.Context, op string, o core.Op) (core.KV, error) {
	if o.Key == "" {
		return core.KV{}, emptyKey(op)
	}
	var kv core.KV
	err := c.call(ctx, op, []string{o.Key}, func() error {
		r := c.srv.applyLocked(c.name, o)
		kv = r.KV
		return r.Err
	})
	return kv, err
}

// DeleteVersion implements core.Deleter. Its fault name is "delete". The
// deletion takes a revision of its own, reaches watches and observers as
// a session's deletions do (Change.Deleted, with this client's name and
// no Session), and unbinds a registered key from its session.
func (c *Client) DeleteVersion(ctx context.Context, key string, version int64) error {
	if key == "" {
		return emptyKey(opDelete)
	}
	return c.call(ctx, opDelete, []string{key}, func() error {
		return c.srv.deleteVersionLocked(c.name, key, version)
	})
}

// Txn implements core.Txner. The writes of one Txn take consecutive
// revisions in the order of ops. Conditions, guards included, are all
// evaluated against the state before the Txn. A malformed op (unknown
// kind, empty key, empty guard key) fails the whole batch with
// ErrInvalidArgument.
func (c *Client) Txn(ctx context.Context, ops []core.Op) ([]core.OpResult, error) {
	if c == nil || c.srv == nil {
		return nil, fmt.Errorf("memory: txn: client not created by Server.Client: %w", core.ErrClosed)
	}
	if err := validateTxn(ops, c.srv.maxTxnOps); err != nil {
		return nil, err
	}
	var results []core.OpResult
	err := c.call(ctx, opTxn, txnKeys(ops), func() error {
		results = c.srv.txnLocked(c.name, ops)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// MaxTxnOps implements core.Txner.
func (c *Client) MaxTxnOps() int {
	if c == nil || c.srv == nil {
		return DefaultMaxTxnOps
	}
	return c.srv.maxTxnOps
}

// ExpireSession implements core.Expirer. Its fault name is "expire".
func (c *Client) ExpireSession(ctx context.Context, sessionID string) error {
	return c.call(ctx, opExpire, nil, func() error {
		return c.srv.expireLocked(c.name, sessionID)
	})
}

// NewSession implements core.Store. The session renews itself every TTL/3
// and declares itself lost at (send time of its last successful
// keep-alive, read on the Clock before the call) + TTL - TTL/10, or at
// once when the store no longer knows it.
// Errors: ErrInvalidArgument if TTL <= 0.
func (c *Client) NewSession(ctx context.Context, opts core.SessionOptions) (core.Session, error) {
	if opts.TTL <= 0 {
		return nil, fmt.Errorf("memory: session TTL %v: %w", opts.TTL, core.ErrInvalidArgument)
	}
	if c == nil || c.srv == nil {
		return nil, fmt.Errorf("memory: session: client not created by Server.Client: %w", core.ErrClosed)
	}
	clock := c.srv.clock
	sent := clock.Now()
	var ss *session
	err := c.call(ctx, opSession, nil, func() error {
		l, err := c.srv.grantLocked(c.name, opts.TTL)
		if err != nil {
			return err
		}
		ss = newSession(c, l)
		c.sessions[ss] = struct{}{}
		c.srv.wg.Add(1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	ss.start(sent)
	return ss, nil
}

// Watch implements core.Store. The first snapshot is in the channel when
// Watch returns. The watch ends with a last snapshot whose Err is
// core.ErrClosed when the client or server closes, or wraps
// core.ErrUnavailable when the client is cut off. The empty prefix watches
// every key.
func (c *Client) Watch(ctx context.Context, prefix string) (<-chan core.Snapshot, error) {
	var w *watcher
	err := c.call(ctx, opWatch, []string{prefix}, func() error {
		w = newWatcher(c, prefix)
		first := c.srv.listLocked(prefix)
		w.first = first.Revision
		w.out <- first
		c.srv.watchers[w] = struct{}{}
		c.watchers[w] = struct{}{}
		c.srv.wg.Add(1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	go w.run(ctx)
	return w.out, nil
}

// Close implements core.Store. The client's sessions fire Done with
// ErrSessionLost without being revoked (the server expires them after
// their TTL), its watches end with a last snapshot whose Err is
// core.ErrClosed, and calls in flight or later return core.ErrClosed.
// Close waits for the client's goroutines to stop.
func (c *Client) Close() error {
	if c == nil || c.srv == nil {
		return nil
	}
	s := c.srv
	s.mu.Lock()
	if c.closed {
		s.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	ws := s.takeWatchersLocked(func(w *watcher) bool { return w.c == c })
	var sessions []*session
	for ss := range c.sessions {
		sessions = append(sessions, ss)
	}
	clear(c.sessions)
	s.mu.Unlock()
	for _, w := range ws {
		w.end(core.ErrClosed)
		<-w.exited
	}
	for _, ss := range sessions {
		ss.fire(fmt.Errorf("memory: session %s: client closed: %w", ss.id, core.ErrSessionLost))
		ss.halt()
	}
	return nil
}

// revoke ends a session at the server for Session.Close. It uses its own
// context, bounded by bound, so that a caller whose ctx has already ended
// still cleans up; a live caller ctx can still cut it short.
func (c *Client) revoke(ctx context.Context, id string, bound time.Duration) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	if ctx.Err() == nil {
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
	}
	err := c.call(rctx, opRevoke, nil, func() error {
		return c.srv.revokeLocked(c.name, id)
	})
	if errors.Is(err, core.ErrNotFound) {
		return nil // already ended at the server
	}
	return err
}
