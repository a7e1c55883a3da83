package etcd

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordha/concord/backends/internal/deadline"
	"github.com/concordha/concord/core"
)

var (
	_ core.Session         = (*session)(nil)
	_ core.SessionDeadline = (*session)(nil)
)

// maxLeaseTTL is etcd's largest lease TTL, in seconds (lease.MaxLeaseTTL).
const maxLeaseTTL = 9_000_000_000

// minKeepAliveInterval keeps a tiny TTL from turning the keep-alive into
// a busy loop against etcd.
const minKeepAliveInterval = time.Millisecond

// minRevokeBound is the least time Session.Close gives its revoke, so
// that a short TTL does not make it give up on a merely busy server.
const minRevokeBound = time.Second

// session is one etcd lease. Its keep-alive runs in a goroutine of the
// session, on a context of the session's own (never the caller's), and
// sends one KeepAliveOnce every interval, so that it knows when each
// renewal that succeeded was sent. etcd counts a lease's TTL from when
// it handled the grant or the renewal, which is after the client sent
// it: the client's deadline, (send time of the last successful renewal,
// or of the grant) + 90% of the TTL the caller asked for, is therefore
// earlier than the server's, all the more since etcd grants whole
// seconds, rounded up, and never less than its minimum TTL.
type session struct {
	s     *Store
	id    clientv3.LeaseID
	ttl   time.Duration // as asked: the client's deadline counts with it
	every time.Duration // keep-alive interval

	ctx    context.Context // the keep-alive loop's; cancelled by halt
	cancel context.CancelFunc
	exited chan struct{} // closed when the loop returns

	done   chan struct{}
	once   sync.Once
	err    error // written once, before done is closed
	closed atomic.Bool

	dl deadline.Deadline // the client's deadline; see Deadline
}

// NewSession implements core.Store. It grants a lease of TTL rounded up
// to whole seconds (etcd may grant more: it never grants less than 1.5
// election timeouts), and renews it every Config.KeepAliveInterval, or
// TTL/3. Done fires with core.ErrSessionLost once the client's deadline
// passes without a newer successful renewal, or as soon as etcd says the
// lease is gone.
// Errors: core.ErrInvalidArgument if TTL is not positive, exceeds etcd's
// largest lease, or is not more than twice the keep-alive interval, or
// if that interval is under 1ms.
func (s *Store) NewSession(ctx context.Context, opts core.SessionOptions) (core.Session, error) {
	ttl := opts.TTL
	if ttl <= 0 {
		return nil, fmt.Errorf("etcd: session TTL %v is not positive: %w", ttl, core.ErrInvalidArgument)
	}
	every := s.cfg.KeepAliveInterval
	if every == 0 {
		every = ttl / 3
	}
	if every < minKeepAliveInterval || ttl <= 2*every {
		return nil, fmt.Errorf("etcd: session TTL %v must be more than twice the keep-alive interval %v (Config.KeepAliveInterval, or TTL/3 when 0), which must be at least %v: %w",
			ttl, every, minKeepAliveInterval, core.ErrInvalidArgument)
	}
	secs := int64(math.Ceil(ttl.Seconds()))
	if secs > maxLeaseTTL {
		return nil, fmt.Errorf("etcd: session TTL %v is more than etcd's largest lease, %ds: %w", ttl, int64(maxLeaseTTL), core.ErrInvalidArgument)
	}
	if err := s.usable(ctx, opSession); err != nil {
		return nil, err
	}
	sent := time.Now()
	resp, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return nil, s.convertError(ctx, opSession, "", err)
	}
	if resp.Error != "" {
		_ = s.revoke(ctx, resp.ID, minRevokeBound)
		return nil, fmt.Errorf("etcd: new session: grant of %ds: %s: %w", secs, resp.Error, core.ErrUnavailable)
	}
	if !time.Now().Before(sent.Add(ttl - ttl/10)) {
		_ = s.revoke(ctx, resp.ID, minRevokeBound)
		return nil, fmt.Errorf("etcd: new session: the grant took longer than the TTL %v: %w", ttl, core.ErrUnavailable)
	}
	sctx, cancel := context.WithCancel(s.ctx)
	ss := &session{
		s:      s,
		id:     resp.ID,
		ttl:    ttl,
		every:  every,
		ctx:    sctx,
		cancel: cancel,
		exited: make(chan struct{}),
		done:   make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("etcd: new session: store closed: %w", core.ErrClosed)
	}
	s.sessions[ss.id] = ss
	s.wg.Add(1)
	s.mu.Unlock()
	ss.dl.Advance(ss.deadlineFrom(sent))
	go ss.run(sent)
	return ss, nil
}

// run is the keep-alive loop.
func (ss *session) run(sent time.Time) {
	defer ss.s.wg.Done()
	defer close(ss.exited)
	defer func() {
		ss.s.mu.Lock()
		if ss.s.sessions[ss.id] == ss {
			delete(ss.s.sessions, ss.id)
		}
		ss.s.mu.Unlock()
	}()
	deadline := ss.deadlineFrom(sent)
	expire := time.NewTimer(time.Until(deadline))
	defer expire.Stop()
	renew := time.NewTimer(time.Until(sent.Add(ss.every)))
	defer renew.Stop()
	for {
		select {
		case <-ss.ctx.Done():
			return
		case <-expire.C:
			ss.fire(ss.lost(fmt.Sprintf("no renewal answered within the TTL %v", ss.ttl)))
			return
		case <-renew.C:
		}
		sent := time.Now()
		err := ss.keepAlive(deadline, expire)
		switch {
		case errors.Is(err, errStopped):
			return // halted, or lost
		case err == nil:
			deadline = ss.deadlineFrom(sent)
			ss.dl.Advance(deadline) // before the timer is armed at the same time
			expire.Reset(time.Until(deadline))
			renew.Reset(time.Until(sent.Add(ss.every)))
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			ss.fire(ss.lost("etcd no longer knows its lease"))
			return
		case ss.ctx.Err() != nil:
			return
		case ss.s.cli.Ctx().Err() != nil:
			ss.fire(ss.lost("its client was closed"))
			return
		case !time.Now().Before(deadline):
			ss.fire(ss.lost(fmt.Sprintf("no renewal answered within the TTL %v (last: %v)", ss.ttl, err)))
			return
		default:
			// The renewal may have failed without reaching etcd: try
			// again soon, the deadline stands.
			ss.s.log.Debug("etcd: session renewal failed", "session", ss.ID(), "err", err)
			renew.Reset(max(ss.every/4, 10*time.Millisecond))
		}
	}
}

// deadlineFrom is the client's deadline after a successful renewal (or
// grant) sent at sent: a tenth of the TTL before sent+TTL, itself before
// the server's expiry. The margin absorbs timer lateness on a loaded
// machine, which would otherwise eat the client's head start: with a
// whole-second TTL, sent+TTL is only the request's transit time ahead of
// etcd's own expiry.
func (ss *session) deadlineFrom(sent time.Time) time.Time {
	return sent.Add(ss.ttl - ss.ttl/10)
}

// errStopped: keepAlive gave up because the session was halted or lost.
var errStopped = errors.New("keep-alive stopped")

// keepAlive sends one renewal and waits for its answer, but no longer
// than the local deadline: when that passes first, it fires Done and
// returns errStopped, as it does if the session is halted. The call runs
// in a helper goroutine so that the deadline timer decides, not the
// call's return; keepAlive waits for the helper in every case.
func (ss *session) keepAlive(deadline time.Time, expire *time.Timer) error {
	ctx, cancel := context.WithDeadline(ss.ctx, deadline)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		_, err := ss.s.cli.KeepAliveOnce(ctx, ss.id)
		res <- err
	}()
	select {
	case err := <-res:
		return err
	case <-expire.C:
		ss.fire(ss.lost(fmt.Sprintf("no renewal answered within the TTL %v", ss.ttl)))
		cancel()
		<-res
		return errStopped
	case <-ss.ctx.Done():
		cancel()
		<-res
		return errStopped
	}
}

func (ss *session) lost(why string) error {
	return fmt.Errorf("etcd: session %s: %s: %w", ss.ID(), why, core.ErrSessionLost)
}

// fire closes Done with err, the first time only. It brings the
// deadline back to now if it is later (the session was closed or ended
// early), so that Deadline never reports a future time after Done.
func (ss *session) fire(err error) {
	ss.once.Do(func() {
		ss.dl.End(time.Now(), func() {
			ss.err = err
			close(ss.done)
		})
	})
}

// Deadline implements core.SessionDeadline: deadlineFrom of the send time
// of the latest renewal etcd answered (or of the grant), the time at which
// the keep-alive loop's timer fires Done unless a newer renewal succeeds.
func (ss *session) Deadline() time.Time { return ss.dl.Get() }

// halt stops the keep-alive loop and waits for it.
func (ss *session) halt() {
	ss.cancel()
	<-ss.exited
}

// ID implements core.Session: the lease ID in decimal.
func (ss *session) ID() string { return strconv.FormatInt(int64(ss.id), 10) }

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

// Register implements core.Session: a create-if-absent Txn whose put
// carries the session's lease.
func (ss *session) Register(ctx context.Context, key string, value []byte) (core.KV, error) {
	if key == "" {
		return core.KV{}, emptyKey(opRegister)
	}
	select {
	case <-ss.done:
		return core.KV{}, fmt.Errorf("etcd: register %q: session %s has ended (%v): %w", key, ss.ID(), ss.err, core.ErrSessionLost)
	default:
	}
	kv, err := ss.s.write(ctx, opRegister, core.Op{Kind: core.OpCreate, Key: key, Value: value}, ss.id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		lost := ss.lost("etcd no longer knows its lease")
		ss.fire(lost)
		return core.KV{}, fmt.Errorf("etcd: register %q: %w", key, lost)
	}
	return kv, err
}

// Close implements core.Session. It fires Done with ErrSessionClosed
// (unless the session was already lost), stops the keep-alive, and
// revokes the lease, which deletes the session's keys at once. The revoke
// has a context of its own, bounded by the TTL (after which etcd expires
// the lease anyway) or minRevokeBound if longer, and cut short if ctx,
// live when Close was called, ends first. After the Store is closed,
// nothing is sent.
func (ss *session) Close(ctx context.Context) error {
	if !ss.closed.CompareAndSwap(false, true) {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ss.fire(fmt.Errorf("etcd: session %s: %w", ss.ID(), core.ErrSessionClosed))
	ss.halt()
	if ss.s.isClosed() {
		return nil
	}
	return ss.s.revoke(ctx, ss.id, max(ss.ttl, minRevokeBound))
}

// revoke ends a lease at the server, with its own context bounded by
// bound, so that a caller whose ctx has already ended still cleans up; a
// live caller ctx can still cut it short. A lease already gone is not an
// error.
func (s *Store) revoke(ctx context.Context, id clientv3.LeaseID, bound time.Duration) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	if ctx.Err() == nil {
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
	}
	_, err := s.cli.Revoke(rctx, id)
	if err == nil || errors.Is(rpctypes.Error(err), rpctypes.ErrLeaseNotFound) {
		return nil
	}
	return s.convertError(rctx, "revoke session", strconv.FormatInt(int64(id), 10), err)
}

// ExpireSession implements core.Expirer: it revokes the lease whose ID
// is sessionID, which deletes its keys. The holder learns it at its next
// renewal, or at once if it belongs to this Store.
// Errors: core.ErrNotFound if etcd has no such lease.
func (s *Store) ExpireSession(ctx context.Context, sessionID string) error {
	if err := s.usable(ctx, opExpire); err != nil {
		return err
	}
	n, perr := strconv.ParseInt(sessionID, 10, 64)
	if perr != nil || n == int64(clientv3.NoLease) {
		return fmt.Errorf("etcd: expire session %q: not a lease ID: %w", sessionID, core.ErrNotFound)
	}
	id := clientv3.LeaseID(n)
	// A session of this Store learns first, so that its Done fires before
	// etcd deletes its keys, as the contract requires.
	s.mu.Lock()
	ss := s.sessions[id]
	s.mu.Unlock()
	if ss != nil {
		ss.fire(ss.lost("expired by ExpireSession"))
		ss.cancel()
	}
	if _, err := s.cli.Revoke(ctx, id); err != nil {
		return s.convertError(ctx, opExpire, sessionID, err)
	}
	return nil
}
