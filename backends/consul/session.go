package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/backends/internal/deadline"
	"github.com/concordha/concord/core"
)

var (
	_ core.Session         = (*session)(nil)
	_ core.SessionDeadline = (*session)(nil)
)

// maxSessionTTL is Consul's largest session TTL (structs.SessionTTLMax).
const maxSessionTTL = 24 * time.Hour

// minKeepAliveInterval keeps a tiny TTL from turning the renewal into a
// busy loop against Consul.
const minKeepAliveInterval = time.Millisecond

// minDestroyBound is the least time Session.Close gives its destroy, so
// that a short TTL does not make it give up on a merely busy agent.
const minDestroyBound = time.Second

// sessionName names the Store's sessions in Consul, for operators.
const sessionName = "concord"

// session is one Consul session: TTL only, with no health checks (not
// even the agent's serfHealth), Behavior delete, and the Store's
// lock-delay. Its renewal runs in a goroutine of the session, on a
// context of the session's own (never the caller's), and sends one renew
// every interval, so that it knows when each renewal that succeeded was
// sent. Consul keeps a session for twice its TTL after it handled the
// creation or the last renewal; the client's deadline, (send time of the
// last successful renewal, or of the creation) + TTL, is therefore
// always earlier, by at least a TTL.
type session struct {
	s     *Store
	id    string
	ttl   time.Duration
	every time.Duration // renewal interval

	ctx    context.Context // the renewal loop's; cancelled by halt
	cancel context.CancelFunc
	exited chan struct{} // closed when the loop returns

	done   chan struct{}
	once   sync.Once
	err    error // written once, before done is closed
	closed atomic.Bool

	dl deadline.Deadline // the client's deadline; see Deadline
}

// NewSession implements core.Store. It creates a Consul session with
// the TTL, renews it every Config.KeepAliveInterval, or TTL/3, and fires
// Done with core.ErrSessionLost once a TTL has passed since the send time
// of the last successful renewal, or as soon as Consul says the session
// is gone.
// Errors: core.ErrInvalidArgument if TTL is not positive, exceeds 24h,
// or is not more than twice the renewal interval, or if Consul refuses
// it (under its session_ttl_min, 10s by default).
func (s *Store) NewSession(ctx context.Context, opts core.SessionOptions) (core.Session, error) {
	ttl := opts.TTL
	switch {
	case ttl <= 0:
		return nil, fmt.Errorf("consul: session TTL %v is not positive: %w", ttl, core.ErrInvalidArgument)
	case ttl > maxSessionTTL:
		return nil, fmt.Errorf("consul: session TTL %v is more than Consul's largest, %v: %w", ttl, maxSessionTTL, core.ErrInvalidArgument)
	}
	every := s.cfg.KeepAliveInterval
	if every == 0 {
		every = ttl / 3
	}
	if every < minKeepAliveInterval || ttl <= 2*every {
		return nil, fmt.Errorf("consul: session TTL %v must be more than twice the renewal interval %v (Config.KeepAliveInterval, or TTL/3 when 0), which must be at least %v: %w",
			ttl, every, minKeepAliveInterval, core.ErrInvalidArgument)
	}
	cctx, end, err := s.begin(ctx, opSession)
	if err != nil {
		return nil, err
	}
	defer end()
	entry := &api.SessionEntry{
		Name:      sessionName,
		TTL:       ttl.String(),
		Behavior:  api.SessionBehaviorDelete,
		LockDelay: s.cfg.LockDelay,
	}
	sent := time.Now()
	var id string
	err = s.call(cctx, false, func(c *api.Client) error {
		var err error
		// CreateNoChecks sends empty NodeChecks: without them, Consul
		// ties the session to the agent's serfHealth check.
		id, _, err = c.Session().CreateNoChecks(entry, write(cctx))
		return err
	})
	if err != nil {
		return nil, s.convertError(ctx, opSession, "", err)
	}
	if !time.Now().Before(sent.Add(ttl)) {
		_ = s.destroy(ctx, id, minDestroyBound)
		return nil, fmt.Errorf("consul: new session: the creation took longer than the TTL %v: %w", ttl, core.ErrUnavailable)
	}
	sctx, cancel := context.WithCancel(s.ctx)
	ss := &session{
		s:      s,
		id:     id,
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
		return nil, fmt.Errorf("consul: new session: store closed: %w", core.ErrClosed)
	}
	s.sessions[id] = ss
	s.wg.Add(1)
	s.mu.Unlock()
	ss.dl.Advance(sent.Add(ttl))
	go ss.run(sent)
	return ss, nil
}

// run is the renewal loop.
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
	deadline := sent.Add(ss.ttl)
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
		err := ss.renew(deadline, expire)
		switch {
		case errors.Is(err, errStopped):
			return // halted, or lost
		case err == nil:
			deadline = sent.Add(ss.ttl)
			ss.dl.Advance(deadline) // before the timer is armed at the same time
			expire.Reset(time.Until(deadline))
			renew.Reset(time.Until(sent.Add(ss.every)))
		case errors.Is(err, errGone):
			ss.fire(ss.lost("Consul no longer knows it"))
			return
		case ss.ctx.Err() != nil:
			return
		case isPermanent(err):
			ss.fire(ss.lost(fmt.Sprintf("its renewal is refused: %v", err)))
			return
		case !time.Now().Before(deadline):
			ss.fire(ss.lost(fmt.Sprintf("no renewal answered within the TTL %v (last: %v)", ss.ttl, err)))
			return
		default:
			// The renewal may have failed without reaching Consul: try
			// again soon, the deadline stands.
			ss.s.log.Debug("consul: session renewal failed", "session", ss.id, "err", err)
			renew.Reset(max(ss.every/4, 10*time.Millisecond))
		}
	}
}

var (
	// errStopped: renew gave up because the session was halted or lost.
	errStopped = errors.New("renewal stopped")
	// errGone: Consul answered the renewal that it has no such session.
	errGone = errors.New("session not found")
)

// renew sends one renewal and waits for its answer, but no longer than
// the local deadline: when that passes first, it fires Done and returns
// errStopped, as it does if the session is halted. The call runs in a
// helper goroutine so that the deadline timer decides, not the call's
// return; renew waits for the helper in every case.
func (ss *session) renew(deadline time.Time, expire *time.Timer) error {
	ctx, cancel := context.WithDeadline(ss.ctx, deadline)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- ss.renewOnce(ctx) }()
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

// renewOnce renews the session once. It goes through the raw API, which
// keeps the status code and body of a failure: the client's Renew says
// only "Unexpected response code".
func (ss *session) renewOnce(ctx context.Context) error {
	var entries []*api.SessionEntry
	err := ss.s.call(ctx, true, func(c *api.Client) error {
		_, err := c.Raw().Write("/v1/session/renew/"+ss.id, nil, &entries, write(ctx))
		return err
	})
	var se api.StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return errGone
	case err != nil:
		return ss.s.convertError(ctx, "renew session", ss.id, err)
	case len(entries) == 0:
		return errGone
	}
	return nil
}

func (ss *session) lost(why string) error {
	return fmt.Errorf("consul: session %s: %s: %w", ss.id, why, core.ErrSessionLost)
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

// Deadline implements core.SessionDeadline: the send time of the latest
// renewal Consul answered (or of the creation) plus the TTL, the time at
// which the renewal loop's timer fires Done unless a newer renewal
// succeeds. Consul keeps the session for twice the TTL after it handled
// that renewal.
func (ss *session) Deadline() time.Time { return ss.dl.Get() }

// halt stops the renewal loop and waits for it.
func (ss *session) halt() {
	ss.cancel()
	<-ss.exited
}

// ID implements core.Session: Consul's session ID, a UUID.
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

// Register implements core.Session: a transaction of "check-not-exists"
// then "lock" with the session, so that an existing key, locked or not,
// is never taken over.
// Errors besides the contract's: one that wraps no core error when
// Consul's lock-delay still holds the key, after a session that held it
// ended (Config.LockDelay); the caller may retry.
func (ss *session) Register(ctx context.Context, key string, value []byte) (core.KV, error) {
	if err := checkKey(opRegister, key); err != nil {
		return core.KV{}, err
	}
	select {
	case <-ss.done:
		return core.KV{}, fmt.Errorf("consul: register %q: session %s has ended (%v): %w", key, ss.id, ss.err, core.ErrSessionLost)
	default:
	}
	s := ss.s
	cctx, end, err := s.begin(ctx, opRegister)
	if err != nil {
		return core.KV{}, err
	}
	defer end()
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: key}},
		{KV: &api.KVTxnOp{Verb: api.KVLock, Key: key, Value: value, Session: ss.id}},
	}
	resp, failed, err := s.txn(cctx, ops, false)
	if err != nil {
		return core.KV{}, s.convertError(ctx, opRegister, key, err)
	}
	if !failed {
		return written(key, value, resp.Results, 0)
	}
	for _, e := range resp.Errors {
		if e.OpIndex == 0 {
			return core.KV{}, fmt.Errorf("consul: register %q: %w", key, core.ErrExists)
		}
	}
	what := resp.Errors[0].What
	if invalidSession.MatchString(what) {
		lost := ss.lost("Consul no longer knows it")
		ss.fire(lost)
		return core.KV{}, fmt.Errorf("consul: register %q: %w", key, lost)
	}
	return core.KV{}, fmt.Errorf("consul: register %q: %s", key, what)
}

// invalidSession matches the error of a "lock" whose session Consul does
// not know.
var invalidSession = regexp.MustCompile(`^invalid session `)

// Close implements core.Session. It fires Done with ErrSessionClosed
// (unless the session was already lost), stops the renewal, and destroys
// the session, which deletes its keys at once. The destroy has a context
// of its own, bounded by the TTL (after which Consul may expire the
// session anyway) or minDestroyBound if longer, and cut short if ctx,
// live when Close was called, ends first. After the Store is closed,
// nothing is sent.
func (ss *session) Close(ctx context.Context) error {
	if !ss.closed.CompareAndSwap(false, true) {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ss.fire(fmt.Errorf("consul: session %s: %w", ss.id, core.ErrSessionClosed))
	ss.halt()
	return ss.s.destroy(ctx, ss.id, max(ss.ttl, minDestroyBound))
}

// destroy ends a session at Consul, with its own context bounded by
// bound, so that a caller whose ctx has already ended still cleans up; a
// live caller ctx can still cut it short. Consul answers a destroy of an
// unknown session with success.
func (s *Store) destroy(ctx context.Context, id string, bound time.Duration) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	if ctx.Err() == nil {
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
	}
	cctx, end, err := s.begin(dctx, "destroy session")
	if errors.Is(err, core.ErrClosed) {
		return nil
	}
	if err != nil {
		return err
	}
	defer end()
	err = s.call(cctx, true, func(c *api.Client) error {
		_, err := c.Session().Destroy(id, write(cctx))
		return err
	})
	return s.convertError(dctx, "destroy session", id, err)
}

// uuid matches Consul's session IDs.
var uuid = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ExpireSession implements core.Expirer: it destroys the session whose
// ID is sessionID, which deletes its keys. The holder learns it at its
// next renewal, or at once if it belongs to this Store.
// Errors: core.ErrNotFound if Consul has no such session (Consul's own
// destroy succeeds for any ID, so the session is looked up first).
func (s *Store) ExpireSession(ctx context.Context, sessionID string) error {
	cctx, end, err := s.begin(ctx, opExpire)
	if err != nil {
		return err
	}
	defer end()
	if !uuid.MatchString(sessionID) {
		return fmt.Errorf("consul: expire session %q: not a session ID: %w", sessionID, core.ErrNotFound)
	}
	var entry *api.SessionEntry
	err = s.call(cctx, true, func(c *api.Client) error {
		var err error
		entry, _, err = c.Session().Info(sessionID, query(cctx))
		return err
	})
	if err != nil {
		return s.convertError(ctx, opExpire, sessionID, err)
	}
	if entry == nil {
		return fmt.Errorf("consul: expire session %q: %w", sessionID, core.ErrNotFound)
	}
	// A session of this Store learns first, so that its Done fires before
	// Consul deletes its keys, as the contract requires.
	s.mu.Lock()
	ss := s.sessions[sessionID]
	s.mu.Unlock()
	if ss != nil {
		ss.fire(ss.lost("expired by ExpireSession"))
		ss.cancel()
	}
	err = s.call(cctx, true, func(c *api.Client) error {
		_, err := c.Session().Destroy(sessionID, write(cctx))
		return err
	})
	return s.convertError(ctx, opExpire, sessionID, err)
}
