package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Node runs this process's side of the election against a Store: it
// keeps a session, watches the membership and the primary records, runs
// the store operations its Machine asks for, and reports role changes.
//
// One goroutine (the loop) owns the Machine; store calls run in goroutines
// the Node owns, at most Config.MaxInflight at once, batched into Txns when
// the store has them. Close stops every goroutine the Node started.
type Node struct {
	cfg   Config
	st    Store
	txn   Txner
	m     *Machine
	log   *slog.Logger
	clock Clock

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}

	calls    chan func()
	results  chan opDone
	sessions chan sessionUp
	views    chan Snapshot
	prims    chan Snapshot
	rosters  chan Snapshot

	// Owned by the loop.
	sess        Session
	lostIDs     []string // sessions this node lost, newest last (a few)
	opening     bool
	waiters     []waiter
	rosterWaits map[uint64]chan error

	events *eventQueue

	mu       sync.Mutex
	status   map[string]Status
	liveSess Session // the session the published status is valid under
	closed   bool
	done     chan struct{}
}

type opDone struct {
	id  uint64
	res OpResult
}

type sessionUp struct {
	s  Session
	kv KV
}

type waiter struct {
	cond func() bool
	ch   chan struct{}
}

// Start starts a node on st with cfg and returns at once; the node joins
// the cluster in the background, retrying with backoff while the store is
// unreachable. The node runs until Close or StepDown. If ctx ends first,
// the node stops acting and leaves, and Close must still be called to
// release it.
// Errors: a configuration error from Validate.
func Start(ctx context.Context, st Store, cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid node config: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := NewMachine(MachineConfig{
		Node: cfg.NodeID, Prefix: cfg.Prefix, Services: cfg.Services,
		RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, ElectionTimeout: cfg.ElectionTimeout,
		Seed: uint64(cfg.Clock.Now().UnixNano()),
	})
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg: cfg, st: st, m: m, clock: cfg.Clock,
		log:         cfg.Logger.With("node", cfg.NodeID),
		sem:         make(chan struct{}, cfg.MaxInflight),
		calls:       make(chan func()),
		results:     make(chan opDone, 256),
		sessions:    make(chan sessionUp),
		views:       make(chan Snapshot),
		prims:       make(chan Snapshot),
		rosters:     make(chan Snapshot),
		rosterWaits: map[uint64]chan error{},
		events:      newEventQueue(),
		status:      map[string]Status{},
		done:        make(chan struct{}),
	}
	if t, ok := st.(Txner); ok && t.MaxTxnOps() > 0 {
		n.txn = t
	}
	n.ctx, n.cancel = context.WithCancel(ctx)
	n.publish(m.Services()) // Status answers for every service from the start
	members, prims, rosters := m.Prefixes()
	n.goWatch(members, n.views)
	n.goWatch(prims, n.prims)
	n.goWatch(rosters, n.rosters)
	n.wg.Add(1)
	go n.loop()
	return n, nil
}

// Events returns the node's role changes, in order. The channel is closed
// when the node stops. The node never blocks on a slow reader: events
// queue up until read. When an event is sent, Status and Fence already
// reflect it (or something newer).
func (n *Node) Events() <-chan Event { return n.events.out }

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.done }

// Status returns the service's state on this node.
// Errors: ErrUnknownService.
func (n *Node) Status(service string) (Status, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st, ok := n.status[service]
	if !ok {
		return Status{}, fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	return st, nil
}

// Fence returns the fencing token to attach to a write this node makes as
// the service's primary. It fails unless the node is the primary and its
// session is still valid, so a caller that checks it right before each
// write never writes as a stale primary; the service should still reject
// tokens older than the newest it has seen.
// Errors: ErrUnknownService; ErrNotPrimary.
func (n *Node) Fence(service string) (int64, error) {
	token, _, err := n.FenceUntil(service)
	return token, err
}

// FenceUntil is Fence, and also returns until, the deadline of the
// session the node holds the primary role under (see SessionDeadline):
// the store cannot expire that session before until. Since another node
// takes the role over only once that session has ended, this node stays
// the primary until then at least, unless it gives the role up itself
// (Resign, StepDown, Close) or an operator ends its session
// (ExpireSession). until is read on the clock of the store's backend, the
// real clock in production. It is the zero time when the store's sessions
// do not implement SessionDeadline: then it proves nothing. The deadline
// is read before the session is checked to be still live, so a deadline
// returned without error was vouched for by a live session.
// Errors: ErrUnknownService; ErrNotPrimary.
func (n *Node) FenceUntil(service string) (token int64, until time.Time, err error) {
	n.mu.Lock()
	st, ok := n.status[service]
	sess := n.liveSess
	n.mu.Unlock()
	if !ok {
		return 0, time.Time{}, fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	if st.Role != RolePrimary || sess == nil {
		return 0, time.Time{}, fmt.Errorf("%w: %q", ErrNotPrimary, service)
	}
	if sd, ok := sess.(SessionDeadline); ok {
		until = sd.Deadline()
	}
	if isDone(sess) {
		return 0, time.Time{}, fmt.Errorf("%w: %q: session lost", ErrNotPrimary, service)
	}
	return st.Token, until, nil
}

// Resign hands the service's primary role over: this node stops acting as
// primary at once, clears the primary record, and ranks last in the
// election that follows. Resign returns once the record is cleared.
// Errors: ErrUnknownService; ErrNotPrimary; ctx's error.
func (n *Node) Resign(ctx context.Context, service string) error {
	var err error
	if cerr := n.call(ctx, func() { err = n.m.Resign(service) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	return n.wait(ctx, func() bool { return !n.m.Resigning(service) })
}

// Promote makes a live provider a secondary of a service this node is
// primary of. Demote makes it a spare; Acknowledge records the newest
// checkpoint a secondary holds. Each returns once the roster is written.
// Errors: as Machine.Promote, Demote and Acknowledge; ctx's error.
func (n *Node) Promote(ctx context.Context, service, node string) error {
	return n.roster(ctx, func() (uint64, error) { return n.m.Promote(service, node) })
}

// Demote: see Promote.
func (n *Node) Demote(ctx context.Context, service, node string) error {
	return n.roster(ctx, func() (uint64, error) { return n.m.Demote(service, node) })
}

// Acknowledge: see Promote.
func (n *Node) Acknowledge(ctx context.Context, service, node string, seq int64) error {
	return n.roster(ctx, func() (uint64, error) { return n.m.Acknowledge(service, node, seq) })
}

func (n *Node) roster(ctx context.Context, f func() (uint64, error)) error {
	var err error
	var ch chan error
	if cerr := n.call(ctx, func() {
		var id uint64
		id, err = f()
		if err == nil {
			ch = make(chan error, 1)
			n.rosterWaits[id] = ch
		}
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrClosed
	}
}

// Members returns the node's membership view: the live members, by node
// ID, with the addresses and services they published.
// Errors: ctx's error; ErrClosed.
func (n *Node) Members(ctx context.Context) (map[string]MemberRecord, error) {
	var out map[string]MemberRecord
	if err := n.call(ctx, func() { out = n.m.Members() }); err != nil {
		// f may still run on the loop: leave out alone.
		return nil, err
	}
	return out, nil
}

// Roster returns the newest roster the node knows for the service: which
// providers are secondaries and which checkpoint each acknowledged.
// Errors: ErrUnknownService; ctx's error; ErrClosed.
func (n *Node) Roster(ctx context.Context, service string) (RosterRecord, error) {
	var out RosterRecord
	var rerr error
	if err := n.call(ctx, func() { out, rerr = n.m.Roster(service) }); err != nil {
		return RosterRecord{}, err
	}
	return out, rerr
}

// StepDown leaves the cluster gracefully: the node resigns every service
// it is primary of, so that successors are elected without waiting for the
// session TTL, then closes its session and stops.
func (n *Node) StepDown(ctx context.Context) error {
	var errs []error
	var primaries []string
	if err := n.call(ctx, func() {
		for _, s := range n.m.Services() {
			if n.m.IsPrimary(s) {
				primaries = append(primaries, s)
			}
		}
	}); err != nil {
		return err
	}
	for _, s := range primaries {
		if err := n.Resign(ctx, s); err != nil && !errors.Is(err, ErrNotPrimary) {
			errs = append(errs, fmt.Errorf("resign %q: %w", s, err))
		}
	}
	errs = append(errs, n.Close())
	return errors.Join(errs...)
}

// Close stops the node: it stops acting as primary, closes its session
// (so the store deletes its member record at once, and the others elect
// successors), and stops every goroutine it started. It is idempotent.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		<-n.done
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.cancel()
	n.wg.Wait()
	n.events.close()
	close(n.done)
	return nil
}

// call runs f on the loop and waits for it.
func (n *Node) call(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case n.calls <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrClosed
	case <-n.ctx.Done():
		return ErrClosed
	}
	select {
	case <-done:
		return nil
	case <-n.ctx.Done():
		return ErrClosed
	}
}

// wait blocks until cond, evaluated on the loop, holds.
func (n *Node) wait(ctx context.Context, cond func() bool) error {
	ch := make(chan struct{})
	if err := n.call(ctx, func() {
		if cond() {
			close(ch)
			return
		}
		n.waiters = append(n.waiters, waiter{cond: cond, ch: ch})
	}); err != nil {
		return err
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.ctx.Done():
		return ErrClosed
	}
}

func (n *Node) loop() {
	defer n.wg.Done()
	defer n.shutdown()
	n.openSession()
	for {
		n.m.Advance(n.clock.Now())
		n.flush()
		var timerC <-chan time.Time
		var timer Timer
		if at, ok := n.m.NextDeadline(); ok {
			timer = n.clock.NewTimer(max(at.Sub(n.clock.Now()), 0))
			timerC = timer.C()
		}
		var sessDone <-chan struct{}
		if n.sess != nil {
			sessDone = n.sess.Done()
		}
		select {
		case <-n.ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case r := <-n.results:
			n.m.Advance(n.clock.Now())
			n.m.Deliver(r.id, r.res)
			// Take every answer already here before acting on them, so
			// that the operations they lead to go out in few batches.
			for more := true; more; {
				select {
				case r := <-n.results:
					n.m.Deliver(r.id, r.res)
				default:
					more = false
				}
			}
		case up := <-n.sessions:
			n.opening = false
			n.sess = up.s
			n.setLiveSession(up.s)
			n.log.Info("joined the cluster", "session", up.s.ID())
			n.m.SetSession(up.s.ID(), up.kv)
		case <-sessDone:
			n.sessionLost()
		case snap := <-n.views:
			n.m.Advance(n.clock.Now())
			n.m.SetView(snap)
		case snap := <-n.prims:
			n.m.SetPrimaries(snap)
		case snap := <-n.rosters:
			n.m.SetRosters(snap)
		case f := <-n.calls:
			f()
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// flush hands the machine's Ready to the store and to the listeners.
func (n *Node) flush() {
	r := n.m.Ready()
	if r.Empty() && len(n.waiters) == 0 {
		return
	}
	for _, w := range r.Warnings {
		n.log.Warn("bad record in the store", "err", w)
	}
	// Status first: whoever reads an event finds Status and Fence
	// already saying the same.
	n.publish(r.Changed)
	for _, ev := range r.Events {
		n.log.Info("role", "service", ev.Service, "role", ev.Role.String(), "primary", ev.Primary, "epoch", ev.Epoch, "token", ev.Token)
		n.events.push(ev)
	}
	for _, rep := range r.Reports {
		if n.cfg.OnElection != nil {
			n.cfg.OnElection(rep)
		}
		n.log.Debug("election", "service", rep.Service, "round", rep.Round.String(), "outcome", string(rep.Outcome), "ops", rep.Ops, "round_trips", rep.RoundTrips)
	}
	for _, rr := range r.Roster {
		if ch, ok := n.rosterWaits[rr.ID]; ok {
			ch <- rr.Err
			delete(n.rosterWaits, rr.ID)
		}
	}
	kept := n.waiters[:0]
	for _, w := range n.waiters {
		if w.cond() {
			close(w.ch)
			continue
		}
		kept = append(kept, w)
	}
	n.waiters = kept
	n.dispatch(r.Requests)
}

// publish makes the Status of the named services visible to callers.
func (n *Node) publish(services []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range services {
		st, _ := n.m.Status(s)
		n.status[s] = st
	}
}

func (n *Node) setLiveSession(s Session) {
	n.mu.Lock()
	n.liveSess = s
	n.mu.Unlock()
}

func (n *Node) sessionLost() {
	old := n.sess
	n.sess = nil
	n.setLiveSession(nil)
	n.m.LoseSession()
	n.lostIDs = append(n.lostIDs, old.ID())
	if len(n.lostIDs) > 4 {
		n.lostIDs = n.lostIDs[1:]
	}
	n.log.Warn("session lost: stopped acting as primary; rejoining", "session", old.ID(), "err", old.Err())
	// Revoke it in case the store still holds it, so that our member
	// record goes now instead of at the TTL. Bounded, and not the loop's
	// context, which may be ending.
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.OpTimeout)
		defer cancel()
		_ = old.Close(ctx)
	}()
	n.openSession()
}

// openSession opens a session and registers the member record, retrying
// with backoff, in a goroutine; the loop gets the result on n.sessions.
// While the member record of a previous session lingers (until the store
// expires it), the same new session keeps trying to register.
func (n *Node) openSession() {
	if n.opening {
		return
	}
	n.opening = true
	lost := append([]string(nil), n.lostIDs...)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var s Session
		drop := func() {
			if s != nil {
				ctx, cancel := context.WithTimeout(context.Background(), n.cfg.OpTimeout)
				_ = s.Close(ctx)
				cancel()
				s = nil
			}
		}
		fails := 0
		for {
			if s != nil && isDone(s) {
				s = nil
			}
			var err error
			if s == nil {
				ctx, cancel := context.WithTimeout(n.ctx, n.cfg.OpTimeout)
				s, err = n.st.NewSession(ctx, SessionOptions{TTL: n.cfg.SessionTTL})
				cancel()
				if err != nil {
					s, err = nil, fmt.Errorf("open session: %w", err)
				}
			}
			if s != nil {
				var kv KV
				key, val := n.m.MemberRecord(s.ID(), n.cfg.Address)
				ctx, cancel := context.WithTimeout(n.ctx, n.cfg.OpTimeout)
				kv, err = s.Register(ctx, key, val)
				cancel()
				if err == nil {
					select {
					case n.sessions <- sessionUp{s: s, kv: kv}:
					case <-n.ctx.Done():
						drop()
					}
					return
				}
				err = fmt.Errorf("register %q: %w", key, err)
				if !errors.Is(err, ErrExists) {
					drop()
				}
			}
			if n.ctx.Err() != nil {
				drop()
				return
			}
			fails++
			d := min(n.cfg.RetryMin<<min(fails, 16), n.cfg.RetryMax)
			if errors.Is(err, ErrExists) && n.expireOwnRecord(&lost) {
				continue
			}
			if errors.Is(err, ErrExists) {
				n.log.Warn("cannot join yet: the member record already exists; either another node runs with this NodeID, or this node's previous session has not expired yet (it will within SessionTTL)", "key", n.memberKey(), "retry_in", d)
			} else {
				n.log.Warn("cannot join the cluster: store unreachable or failing; retrying", "err", err, "retry_in", d)
			}
			if !n.sleep(d) {
				drop()
				return
			}
		}
	}()
}

// expireOwnRecord ends the session that holds this node's member record
// if it is one this node lost (the store kept it, for example across its
// own restart, which renews every lease), so that the node rejoins now
// rather than a TTL later. It needs a store that is an Expirer, and
// touches no other node's session. It tries each lost session once
// (removing it from *lost), and reports whether it ended one.
func (n *Node) expireOwnRecord(lost *[]string) bool {
	exp, ok := n.st.(Expirer)
	if !ok || len(*lost) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.OpTimeout)
	defer cancel()
	key := n.memberKey()
	kv, err := n.st.Get(ctx, key)
	if err != nil {
		return false
	}
	rec, err := DecodeMember(kv)
	if err != nil {
		return false
	}
	i := slices.Index(*lost, rec.Session)
	if i < 0 {
		return false
	}
	*lost = slices.Delete(*lost, i, i+1)
	if err := exp.ExpireSession(ctx, rec.Session); err != nil && !errors.Is(err, ErrNotFound) {
		n.log.Warn("could not end this node's previous session; waiting for the store to expire it", "session", rec.Session, "err", err)
		return false
	}
	n.log.Info("ended this node's previous session, which the store still held, to rejoin at once", "session", rec.Session, "key", key)
	return true
}

// memberKey is this node's member record's key.
func (n *Node) memberKey() string { return n.m.keys.Member(n.cfg.NodeID) }

func isDone(s Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// sleep waits d on the node's clock; it returns false if the node stops
// first.
func (n *Node) sleep(d time.Duration) bool {
	t := n.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-n.ctx.Done():
		return false
	}
}

func (n *Node) shutdown() {
	n.m.LoseSession()
	n.flush()
	n.setLiveSession(nil)
	for id, ch := range n.rosterWaits {
		ch <- ErrClosed
		delete(n.rosterWaits, id)
	}
	if n.sess != nil {
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.OpTimeout)
		if err := n.sess.Close(ctx); err != nil {
			n.log.Warn("closing the session failed; the store will expire it after the TTL", "err", err)
		}
		cancel()
		n.sess = nil
	}
}

// goWatch keeps a watch on prefix open, forwarding snapshots to ch and
// re-watching with backoff after errors.
func (n *Node) goWatch(prefix string, ch chan<- Snapshot) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fails := 0
		for n.ctx.Err() == nil {
			err := n.watchOnce(prefix, ch)
			if n.ctx.Err() != nil {
				return
			}
			fails++
			d := min(n.cfg.RetryMin<<min(fails, 16), n.cfg.RetryMax)
			n.log.Warn("watch failed; watching again", "prefix", prefix, "err", err, "retry_in", d)
			if !n.sleep(d) {
				return
			}
		}
	}()
}

func (n *Node) watchOnce(prefix string, ch chan<- Snapshot) error {
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	w, err := n.st.Watch(ctx, prefix)
	if err != nil {
		return err
	}
	for snap := range w {
		if snap.Err != nil {
			return snap.Err
		}
		select {
		case ch <- snap:
		case <-n.ctx.Done():
			return n.ctx.Err()
		}
	}
	return errors.New("watch channel closed")
}

// dispatch runs requests, batched into Txns where the store has them.
func (n *Node) dispatch(reqs []Request) {
	if len(reqs) == 0 {
		return
	}
	var groups [][]Request
	if n.txn != nil {
		groups = batch(reqs, n.txn.MaxTxnOps())
	} else {
		for _, r := range reqs {
			groups = append(groups, []Request{r})
		}
	}
	for _, g := range groups {
		n.wg.Add(1)
		go n.exec(g)
	}
}

func (n *Node) exec(g []Request) {
	defer n.wg.Done()
	select {
	case n.sem <- struct{}{}:
	case <-n.ctx.Done():
		return
	}
	defer func() { <-n.sem }()
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.OpTimeout)
	defer cancel()
	results := make([]OpResult, len(g))
	if n.txn != nil && (len(g) > 1 || len(g[0].Op.Guards) > 0) {
		ops := make([]Op, len(g))
		for i, r := range g {
			ops[i] = r.Op
		}
		rs, err := n.txn.Txn(ctx, ops)
		for i := range g {
			if err != nil {
				results[i].Err = err
			} else {
				results[i] = rs[i]
			}
		}
	} else {
		for i, r := range g {
			op := r.Op
			op.Guards = nil
			results[i] = run(ctx, n.st, op)
		}
	}
	for i, r := range g {
		select {
		case n.results <- opDone{id: r.ID, res: results[i]}:
		case <-n.ctx.Done():
			return
		}
	}
}

// eventQueue is an unbounded FIFO in front of a channel, so that the loop
// never blocks on a slow reader of Events.
type eventQueue struct {
	mu     sync.Mutex
	q      []Event
	wake   chan struct{}
	out    chan Event
	stop   chan struct{}
	exited chan struct{}
}

func newEventQueue() *eventQueue {
	e := &eventQueue{wake: make(chan struct{}, 1), out: make(chan Event), stop: make(chan struct{}), exited: make(chan struct{})}
	go e.run()
	return e
}

func (e *eventQueue) push(ev Event) {
	e.mu.Lock()
	e.q = append(e.q, ev)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *eventQueue) run() {
	defer close(e.exited)
	defer close(e.out)
	for {
		e.mu.Lock()
		var next *Event
		if len(e.q) > 0 {
			ev := e.q[0]
			next = &ev
		}
		e.mu.Unlock()
		if next == nil {
			select {
			case <-e.wake:
				continue
			case <-e.stop:
				return
			}
		}
		select {
		case e.out <- *next:
			e.mu.Lock()
			e.q = e.q[1:]
			e.mu.Unlock()
		case <-e.wake:
		case <-e.stop:
			return
		}
	}
}

// close stops the queue; events not yet read are dropped, and the channel
// is closed.
func (e *eventQueue) close() {
	close(e.stop)
	<-e.exited
}
