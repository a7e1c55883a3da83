package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/concordha/concord/core"
)

var (
	_ core.Session         = (*session)(nil)
	_ core.SessionDeadline = (*session)(nil)
)

// session is one ZooKeeper session on a connection of its own. A monitor
// goroutine fires Done with core.ErrSessionLost when ZooKeeper says the
// session expired, when a reconnection got another session, or when
// 90% of the negotiated timeout has passed since the send time of the
// latest request ZooKeeper answered (see tracker): ZooKeeper cannot
// expire the session before that. The connection is then closed and
// never reused.
type session struct {
	s       *Store
	conn    *zk.Conn
	tr      *tracker
	id      int64
	ttl     time.Duration
	timeout time.Duration // negotiated, at most ttl

	poke   chan struct{} // the tracker or go-zookeeper saw something
	stop   chan struct{} // closed by halt
	halted sync.Once
	exited chan struct{} // closed when the monitor returns

	done   chan struct{}
	once   sync.Once
	err    error // written once, before done is closed
	closed atomic.Bool

	// dmu orders Deadline with fire: done is closed under it, and final
	// is set then, to what Deadline returns from then on.
	dmu   sync.Mutex
	final time.Time

	shut sync.Once // closing the connection
}

// NewSession implements core.Store. It opens a connection with TTL as
// the session timeout and waits, within DialTimeout, for ZooKeeper to
// open the session; then it authenticates the connection if
// Config.Digest is set.
// Errors: core.ErrInvalidArgument if TTL is not positive, not a whole
// number of milliseconds between 1ms and 2^31-1ms, or shorter than the
// timeout ZooKeeper negotiates (its minSessionTimeout, 2 ticks by
// default: the client must give up before the server could expire the
// session, and no earlier than the server might); core.ErrUnavailable
// if no server opens a session within DialTimeout.
func (s *Store) NewSession(ctx context.Context, opts core.SessionOptions) (core.Session, error) {
	ttl := opts.TTL
	if ttl <= 0 || ttl%time.Millisecond != 0 || ttl > math.MaxInt32*time.Millisecond {
		return nil, fmt.Errorf("zookeeper: new session: TTL %v: want a whole number of milliseconds from 1ms to %v: %w",
			ttl, math.MaxInt32*time.Millisecond, core.ErrInvalidArgument)
	}
	if err := s.usable(ctx, opSession); err != nil {
		return nil, err
	}
	ss := &session{
		s:      s,
		ttl:    ttl,
		poke:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		exited: make(chan struct{}),
		done:   make(chan struct{}),
	}
	ss.tr = newTracker(ss.kick)
	conn, _, err := zk.Connect(s.cfg.Endpoints, ttl,
		zk.WithDialer(s.dialer(ss.tr)),
		zk.WithEventCallback(func(zk.Event) { ss.kick() }),
		zk.WithLogger(zkLogger{s.log, "session"}),
		zk.WithLogInfo(false))
	if err != nil {
		return nil, fmt.Errorf("zookeeper: new session: %w (%w)", core.ErrUnavailable, err)
	}
	ss.conn = conn
	wait := time.NewTimer(s.cfg.DialTimeout)
	defer wait.Stop()
	select {
	case <-ss.tr.up:
	case <-ctx.Done():
		ss.abandon()
		return nil, fmt.Errorf("zookeeper: new session: %w", s.withConnErrors(ctx.Err()))
	case <-s.ctx.Done():
		ss.abandon()
		return nil, fmt.Errorf("zookeeper: new session: %w", errStoreClosed)
	case <-wait.C:
		ss.abandon()
		return nil, fmt.Errorf("zookeeper: new session: %w", s.withConnErrors(fmt.Errorf(
			"no server of %v opened a session within %v (Config.DialTimeout): %w", s.cfg.Endpoints, s.cfg.DialTimeout, core.ErrUnavailable)))
	}
	st := ss.tr.state()
	ss.id, ss.timeout = st.id, st.timeout
	if st.timeout > ttl {
		ss.abandon()
		return nil, fmt.Errorf("zookeeper: new session: ZooKeeper raised the session timeout from the TTL %v to %v (its minSessionTimeout, 2 ticks unless configured): the client could not give up before the server; ask for a TTL of at least %v: %w",
			ttl, st.timeout, st.timeout, core.ErrInvalidArgument)
	}
	if s.auth != nil {
		if err := s.authenticate(ctx, conn); err != nil {
			ss.abandon()
			return nil, fmt.Errorf("zookeeper: new session: %w", err)
		}
	}
	if !time.Now().Before(ss.deadline(ss.tr.state())) {
		ss.abandon()
		return nil, fmt.Errorf("zookeeper: new session: opening it took longer than its timeout %v: %w", st.timeout, core.ErrUnavailable)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ss.abandon()
		return nil, fmt.Errorf("zookeeper: new session: %w", errStoreClosed)
	}
	s.sessions[ss] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	sessions.add(ss.id, st.passwd, st.timeout, ss)
	go ss.run()
	return ss, nil
}

// abandon drops a session NewSession does not return: its connection is
// closed in the background, which ends the session at the server.
func (ss *session) abandon() {
	ss.tr.stop()
	ss.s.spawn(ss.shutdown)
}

// spawn runs f in a goroutine the Store waits for, or at once if the
// Store is closed.
func (s *Store) spawn(f func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		f()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// deadline is when the client gives the session up without a newer
// answer: 90% of the negotiated timeout (or of the TTL, if a server
// negotiated more on a reconnection) after the send time of the latest
// request answered. The tenth absorbs timers that fire late on a loaded
// machine.
func (ss *session) deadline(st trackState) time.Time {
	timeout := min(st.timeout, ss.ttl)
	return st.confirmed.Add(timeout - timeout/10)
}

// kick wakes the monitor; it never blocks.
func (ss *session) kick() {
	select {
	case ss.poke <- struct{}{}:
	default:
	}
}

// run is the monitor.
func (ss *session) run() {
	defer ss.s.wg.Done()
	defer close(ss.exited)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		st := ss.tr.state()
		deadline := ss.deadline(st)
		var why string
		switch {
		case st.expired:
			why = "ZooKeeper reports that it expired"
		case st.replaced:
			why = "a reconnection got another session"
		case !time.Now().Before(deadline):
			why = fmt.Sprintf("ZooKeeper answered no request sent in the last %v (90%% of the session timeout %v)",
				time.Since(st.confirmed).Round(time.Millisecond), st.timeout)
		}
		if why != "" {
			ss.end(why, st.expired)
			return
		}
		t.Reset(time.Until(deadline))
		select {
		case <-ss.stop:
			return
		case <-ss.poke:
		case <-t.C:
		}
	}
}

// end ends a lost session from the monitor or from outside it: Done
// fires, no connection is made again, and the connection closes, which
// asks ZooKeeper to end the session if it still can. gone says that
// ZooKeeper has ended it already.
func (ss *session) end(why string, gone bool) {
	ss.tr.stop()
	ss.fire(ss.lost(why))
	if gone {
		sessions.remove(ss.id)
	} else {
		sessions.lost(ss.id)
	}
	ss.s.forget(ss)
	ss.shutdown()
}

// lose ends the session from outside the monitor (Store.Close).
func (ss *session) lose(why string, gone bool) {
	ss.halt()
	ss.end(why, gone)
}

// halt stops the monitor and waits for it.
func (ss *session) halt() {
	ss.halted.Do(func() { close(ss.stop) })
	<-ss.exited
}

// shutdown closes the connection, once. go-zookeeper sends a close
// request first and waits up to a second for its answer.
func (ss *session) shutdown() {
	ss.shut.Do(ss.conn.Close)
}

// forget removes ss from its Store's sessions.
func (s *Store) forget(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, ss)
}

func (ss *session) lost(why string) error {
	return fmt.Errorf("zookeeper: session %s: %s: %w", ss.ID(), why, core.ErrSessionLost)
}

// fire closes Done with err, the first time only. It freezes the
// deadline Deadline reports, brought back to now if it is later (the
// session was closed or ended early), so that Deadline never reports a
// future time after Done.
func (ss *session) fire(err error) {
	ss.once.Do(func() {
		ss.dmu.Lock()
		defer ss.dmu.Unlock()
		ss.final = ss.deadline(ss.tr.state())
		if now := time.Now(); now.Before(ss.final) {
			ss.final = now
		}
		ss.err = err
		close(ss.done)
	})
}

// Deadline implements core.SessionDeadline. While Done is open it is
// computed from the tracker, as the monitor computes the time at which it
// fires Done: the send time of the latest request ZooKeeper answered, plus
// 90% of the negotiated timeout. ZooKeeper restarted its clock for the
// session when it received that request, so it cannot expire the session
// before a full timeout after it. The tracker may learn of an answer
// before the monitor wakes up: Deadline then already reports the later
// time, which the monitor adopts instead of firing Done when its timer
// runs out.
//
// One case breaks the rule that it only moves forward: a reconnection to
// a server that negotiates a shorter session timeout than before (servers
// configured with different session timeout bounds) can bring it back.
// The monitor then fires Done at the earlier time, and Deadline follows
// it, so that it never reports a time later than the one the monitor
// goes by.
func (ss *session) Deadline() time.Time {
	ss.dmu.Lock()
	defer ss.dmu.Unlock()
	if ss.isDone() {
		return ss.final
	}
	return ss.deadline(ss.tr.state())
}

func (ss *session) isDone() bool {
	select {
	case <-ss.done:
		return true
	default:
		return false
	}
}

// ID implements core.Session: ZooKeeper's session ID, in hexadecimal as
// ZooKeeper logs it ("0x" and lower-case digits).
func (ss *session) ID() string { return formatSessionID(ss.id) }

func formatSessionID(id int64) string { return "0x" + strconv.FormatUint(uint64(id), 16) }

func parseSessionID(s string) (int64, bool) {
	hex, ok := strings.CutPrefix(s, "0x")
	if !ok || hex == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(hex, 16, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return int64(n), true
}

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

// Register implements core.Session: Create of an ephemeral znode through
// the session's own connection, so that ZooKeeper binds it to the
// session. A compare-and-swap by any client keeps it bound.
// Errors: as Create; core.ErrSessionLost once Done has fired; and
// core.ErrInvalidArgument for a key with keys below it, or below a key
// bound to a session (ZooKeeper's ephemeral znodes have no children).
func (ss *session) Register(ctx context.Context, key string, value []byte) (core.KV, error) {
	if _, err := znodePath(opRegister, key); err != nil {
		return core.KV{}, err
	}
	if ss.isDone() {
		return core.KV{}, fmt.Errorf("zookeeper: register %q: session %s has ended (%v): %w", key, ss.ID(), ss.err, core.ErrSessionLost)
	}
	kv, err := ss.s.create(ctx, ss.conn, opRegister, key, value, zk.FlagEphemeral)
	if errors.Is(err, zk.ErrSessionExpired) || ss.tr.state().expired {
		ss.lose("ZooKeeper reports that it expired", true)
	}
	if ss.isDone() && ctx.Err() == nil && (err == nil || errors.Is(err, core.ErrUnavailable)) {
		// A key written just before the session ended goes with it.
		return core.KV{}, fmt.Errorf("zookeeper: register %q: session %s ended (%v): %w", key, ss.ID(), ss.err, core.ErrSessionLost)
	}
	return kv, err
}

// Close implements core.Session. It fires Done with ErrSessionClosed
// (unless the session was lost already), stops the monitor and closes
// the connection, which sends ZooKeeper a close request: ZooKeeper ends
// the session and deletes its keys at once. Close returns an error
// wrapping core.ErrUnavailable if ZooKeeper did not answer the close
// request (the session then expires after its timeout), or ctx's error
// if ctx ends first (the close goes on in the background).
func (ss *session) Close(ctx context.Context) error {
	if !ss.closed.CompareAndSwap(false, true) {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ss.fire(fmt.Errorf("zookeeper: session %s: %w", ss.ID(), core.ErrSessionClosed))
	ss.halt()
	ss.s.forget(ss)
	if !errors.Is(ss.err, core.ErrSessionClosed) {
		ss.shutdown() // lost before: closed already
		return nil
	}
	sessions.remove(ss.id)
	closed := make(chan struct{})
	ss.s.spawn(func() {
		ss.shutdown()
		close(closed)
	})
	select {
	case <-closed:
	case <-ctx.Done():
		return fmt.Errorf("zookeeper: close session %s: %w", ss.ID(), ctx.Err())
	}
	if !ss.tr.state().closeOK {
		return fmt.Errorf("zookeeper: close session %s: ZooKeeper did not confirm the close; it will expire the session after its timeout %v: %w",
			ss.ID(), ss.timeout, core.ErrUnavailable)
	}
	return nil
}
