package memory

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/concordha/concord/backends/internal/deadline"
	"github.com/concordha/concord/core"
)

var (
	_ core.Session         = (*session)(nil)
	_ core.SessionDeadline = (*session)(nil)
)

// session is the client side of a session. One goroutine, owned by the
// session, keeps it alive; it runs on a context of its own, never on the
// caller's.
type session struct {
	c      *Client
	id     string
	ttl    time.Duration
	ended  <-chan struct{} // closed when the server ends the session
	done   chan struct{}
	once   sync.Once
	err    error // written once, before done is closed
	stop   chan struct{}
	halted sync.Once
	exited chan struct{}
	closed atomic.Bool // Close has been called

	dl deadline.Deadline // the client's deadline; see Deadline
}

func newSession(c *Client, l *lease) *session {
	return &session{
		c:      c,
		id:     l.id,
		ttl:    l.ttl,
		ended:  l.ended,
		done:   make(chan struct{}),
		stop:   make(chan struct{}),
		exited: make(chan struct{}),
	}
}

// margin is how much earlier than the server the client gives up. It is
// never zero, so the client's deadline is strictly the earlier one.
func (ss *session) margin() time.Duration { return max(ss.ttl/10, 1) }

// renewEvery is the keep-alive period; retryEvery the period after a
// keep-alive that failed without proving the session gone.
func (ss *session) renewEvery() time.Duration { return max(ss.ttl/3, 1) }
func (ss *session) retryEvery() time.Duration { return max(ss.ttl/10, 1) }

// start arms the timers before returning, so a ManualClock advanced right
// after NewSession still counts from the grant, and starts the keep-alive
// loop. sent is the Clock's time read before the grant was sent.
func (ss *session) start(sent time.Time) {
	clock := ss.c.srv.clock
	deadline := sent.Add(ss.ttl - ss.margin())
	ss.dl.Advance(deadline)
	now := clock.Now()
	renew := clock.NewTimer(sent.Add(ss.renewEvery()).Sub(now))
	expire := clock.NewTimer(deadline.Sub(now))
	go ss.run(renew, expire, deadline)
}

func (ss *session) run(renew, expire core.Timer, deadline time.Time) {
	s := ss.c.srv
	defer s.wg.Done()
	defer close(ss.exited)
	defer func() {
		renew.Stop()
		expire.Stop()
		s.mu.Lock()
		delete(ss.c.sessions, ss)
		s.mu.Unlock()
	}()
	clock := s.clock
	ended := ss.ended
	for {
		select {
		case <-ss.stop:
			return
		case <-ended:
			if ss.c.cutOff() {
				// A cut-off client hears nothing from the server; it
				// finds out by its own deadline.
				ended = nil
				continue
			}
			ss.fire(ss.lost("ended by the store"))
			return
		case <-expire.C():
			ss.fire(ss.lost("no keep-alive answered before the local deadline"))
			return
		case <-renew.C():
		}
		sent := clock.Now()
		if !sent.Before(deadline) {
			ss.fire(ss.lost("no keep-alive answered before the local deadline"))
			return
		}
		err := ss.keepAlive(expire)
		switch {
		case errors.Is(err, errHalted):
			return
		case err == nil:
			deadline = sent.Add(ss.ttl - ss.margin())
			ss.dl.Advance(deadline) // before the timer is armed at the same time
			expire.Stop()
			now := clock.Now()
			expire = clock.NewTimer(deadline.Sub(now))
			renew = clock.NewTimer(sent.Add(ss.renewEvery()).Sub(now))
		case errors.Is(err, core.ErrNotFound), errors.Is(err, core.ErrClosed):
			ss.fire(ss.lost(fmt.Sprintf("keep-alive failed: %v", err)))
			return
		case errors.Is(err, errLocalDeadline):
			ss.fire(ss.lost("no keep-alive answered before the local deadline"))
			return
		default:
			renew = clock.NewTimer(ss.retryEvery())
		}
	}
}

// Why keepAlive gave up without an answer.
var (
	errLocalDeadline = errors.New("local deadline passed")
	errHalted        = errors.New("session halted")
)

// keepAlive sends one keep-alive. It gives up when the local deadline
// passes or the session is halted, without waiting for a hung server
// beyond that: the call runs in a helper goroutine whose context is
// cancelled then, and keepAlive waits for it to return.
func (ss *session) keepAlive(expire core.Timer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan error, 1)
	go func() {
		res <- ss.c.call(ctx, opKeepAlive, nil, func() error {
			return ss.c.srv.keepAliveLocked(ss.id)
		})
	}()
	select {
	case err := <-res:
		return err
	case <-expire.C():
		cancel()
		<-res
		return errLocalDeadline
	case <-ss.stop:
		cancel()
		<-res
		return errHalted
	}
}

func (ss *session) lost(why string) error {
	return fmt.Errorf("memory: session %s: %s: %w", ss.id, why, core.ErrSessionLost)
}

// fire closes Done with err, the first time only. It brings the
// deadline back to now if it is later (the session was closed or ended
// early), so that Deadline never reports a future time after Done.
func (ss *session) fire(err error) {
	ss.once.Do(func() {
		ss.dl.End(ss.c.srv.clock.Now(), func() {
			ss.err = err
			close(ss.done)
		})
	})
}

// Deadline implements core.SessionDeadline: the send time of the latest
// keep-alive the server answered (or of the grant), plus the TTL less the
// margin, read on the server's Clock. The server expires the session a
// TTL after it handled that keep-alive, which is no earlier than its send
// time.
func (ss *session) Deadline() time.Time { return ss.dl.Get() }

// halt stops the keep-alive loop and waits for it.
func (ss *session) halt() {
	ss.halted.Do(func() { close(ss.stop) })
	<-ss.exited
}

func (c *Client) cutOff() bool {
	c.srv.mu.Lock()
	defer c.srv.mu.Unlock()
	return c.srv.isolated[c.name]
}

// ID implements core.Session.
func (ss *session) ID() string { return ss.id }

// Done implements core.Session.
func (ss *session) Done() <-chan struct{} { return ss.done }

// Err implements core.Session.
func (ss *session) Err() error {
	select {
	case <-ss.done:
		return ss.err
	default:
		return nil
	}
}

// Register implements core.Session.
func (ss *session) Register(ctx context.Context, key string, value []byte) (core.KV, error) {
	if key == "" {
		return core.KV{}, emptyKey(opRegister)
	}
	select {
	case <-ss.done:
		return core.KV{}, fmt.Errorf("memory: register %q: session %s has ended (%v): %w",
			key, ss.id, ss.err, core.ErrSessionLost)
	default:
	}
	var kv core.KV
	err := ss.c.call(ctx, opRegister, []string{key}, func() (err error) {
		kv, err = ss.c.srv.registerLocked(ss.c.name, ss.id, key, value)
		return err
	})
	if errors.Is(err, core.ErrSessionLost) {
		ss.fire(ss.lost("the store no longer knows it"))
	}
	return kv, err
}

// minRevokeBound is the least time Session.Close gives its revoke, so that
// a tiny TTL does not make it give up on a merely busy machine.
const minRevokeBound = time.Second

// Close implements core.Session. It fires Done with ErrSessionClosed
// (unless the session was already lost), stops the keep-alive loop, and
// revokes the session at the server with a context of its own, bounded by
// the TTL (after which the server expires the session anyway) or
// minRevokeBound if longer, and cut short if the caller's ctx, live when
// Close was called, ends first. If the client or the server is closed,
// nothing is sent.
func (ss *session) Close(ctx context.Context) error {
	if !ss.closed.CompareAndSwap(false, true) {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ss.fire(fmt.Errorf("memory: session %s: %w", ss.id, core.ErrSessionClosed))
	ss.halt()
	s := ss.c.srv
	s.mu.Lock()
	gone := ss.c.closed || s.closed // nothing to send, or nothing left to revoke
	s.mu.Unlock()
	if gone {
		return nil
	}
	return ss.c.revoke(ctx, ss.id, max(ss.ttl, minRevokeBound))
}
