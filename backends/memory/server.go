package memory

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// DefaultMaxTxnOps is the MaxTxnOps of a Server whose Options leave it 0.
const DefaultMaxTxnOps = 128

// Options configure a Server. The zero value is a valid configuration: the
// system clock, DefaultMaxTxnOps, and a reaper that expires sessions on
// time.
type Options struct {
	// Clock is where the server reads time and sets its timers, and where
	// clients measure latency and keep-alive deadlines. nil means
	// core.SystemClock().
	Clock core.Clock
	// MaxTxnOps is the largest number of ops one Txn accepts. 0 (or less)
	// means DefaultMaxTxnOps.
	MaxTxnOps int
	// ManualExpiry, when true, starts no reaper: sessions whose deadline
	// has passed are expired only when ExpireDue (or ExpireSession) is
	// called. When false, a reaper goroutine waits on Clock timers and
	// expires each session once its deadline passes.
	ManualExpiry bool
}

// record is one key as the server holds it.
type record struct {
	kv      core.KV
	session string // the session the key is bound to; "" if none
}

// lease is the server side of a session.
type lease struct {
	id       string
	client   string
	ttl      time.Duration
	deadline time.Time
	keys     map[string]struct{}
	// ended is closed when the session ends at the server, which lets an
	// in-process client session learn of it without waiting for its next
	// keep-alive.
	ended chan struct{}
}

type observer struct {
	id int
	fn func(Change)
}

// Server is an in-process store. Its zero value is not usable; call New.
// All its methods are safe for concurrent use.
type Server struct {
	clock        core.Clock
	maxTxnOps    int
	manualExpiry bool

	// mu guards everything below, the fields of every Client marked as
	// guarded by it, and every lease and record.
	mu      sync.Mutex
	closed  bool
	done    chan struct{} // closed by Close
	rev     int64
	records map[string]*record
	tombs   map[string]int64 // key -> revision of its last deletion, while absent
	// index holds every key ever written (live or tombstoned), sorted, so
	// that a prefix is listed without scanning the whole store.
	index     []string
	leases    map[string]*lease
	lastLease int64
	watchers  map[*watcher]struct{}
	observers []observer
	lastObs   int

	faults         []*faultRule
	latency        map[string]time.Duration
	defaultLatency time.Duration
	hung           bool
	unhung         chan struct{} // closed when a hang ends
	isolated       map[string]bool

	wake chan struct{} // tells the reaper that an earlier deadline may exist
	// wg counts the goroutines the server and its clients start: the
	// reaper, watches and session keep-alive loops. Add is called only
	// while mu is held and closed is false, so Close can Wait for them.
	wg sync.WaitGroup
}

// New returns a running Server.
func New(opts Options) *Server {
	s := &Server{
		clock:        opts.Clock,
		maxTxnOps:    opts.MaxTxnOps,
		manualExpiry: opts.ManualExpiry,
		done:         make(chan struct{}),
		records:      make(map[string]*record),
		tombs:        make(map[string]int64),
		leases:       make(map[string]*lease),
		watchers:     make(map[*watcher]struct{}),
		latency:      make(map[string]time.Duration),
		isolated:     make(map[string]bool),
		wake:         make(chan struct{}, 1),
	}
	if s.clock == nil {
		s.clock = core.SystemClock()
	}
	if s.maxTxnOps <= 0 {
		s.maxTxnOps = DefaultMaxTxnOps
	}
	if !s.manualExpiry {
		s.wg.Add(1)
		go s.reap()
	}
	return s
}

// Close shuts the server down. Every session ends (its keys are deleted,
// reported to observers with an empty Client), every watch delivers a last
// snapshot whose Err is core.ErrClosed and closes, and every later call
// of a Client, or of Do, Txn, DeleteVersion, Grant, KeepAlive, Register
// and Revoke, returns an error wrapping core.ErrClosed. Close waits for the goroutines
// of the server and of its clients to stop. It is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return
	}
	for _, id := range s.leaseIDsLocked(func(*lease) bool { return true }) {
		s.endLeaseLocked(id, "")
	}
	s.closed = true
	close(s.done)
	ws := s.takeWatchersLocked(func(*watcher) bool { return true })
	s.mu.Unlock()
	for _, w := range ws {
		w.end(core.ErrClosed)
	}
	s.wg.Wait()
}

// Client returns a new, independent client of the server. The name
// identifies it for fault injection, latency and isolation; several
// clients may share a name and are then targeted together.
func (s *Server) Client(name string) *Client {
	return &Client{
		srv:      s,
		name:     name,
		done:     make(chan struct{}),
		sessions: make(map[*session]struct{}),
		watchers: make(map[*watcher]struct{}),
	}
}

// Revision returns the store's current revision: that of the latest write,
// or 0 before the first one.
func (s *Server) Revision() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// Snapshot returns the content of prefix, as List would, without faults,
// latency or isolation. It also works after Close.
func (s *Server) Snapshot(prefix string) core.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listLocked(prefix)
}

// SessionAlive reports whether the session exists at the server and its
// deadline has not passed.
func (s *Server) SessionAlive(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.leases[id]
	return ok && s.clock.Now().Before(l.deadline)
}

// ExpireSession ends the session now, as if its TTL had passed: its keys
// are deleted (reported with an empty Client) and its holder sees
// core.ErrSessionLost. It ignores faults and isolation. A session past its
// deadline that has not been expired yet counts as live here.
// Errors: core.ErrNotFound if no session has that id.
func (s *Server) ExpireSession(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expireLocked("", id)
}

// ExpireDue expires every session whose deadline is at or before
// Clock.Now() and returns their ids, sorted (which is creation order).
func (s *Server) ExpireDue() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	ids := s.leaseIDsLocked(func(l *lease) bool { return !l.deadline.After(now) })
	for _, id := range ids {
		s.endLeaseLocked(id, "")
	}
	return ids
}

// reap expires sessions on time. It sleeps on a Clock timer until the
// earliest deadline, or until Grant signals that an earlier one may exist.
func (s *Server) reap() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		next, ok := s.nextDeadlineLocked()
		s.mu.Unlock()
		var timer core.Timer
		var fire <-chan time.Time
		if ok {
			timer = s.clock.NewTimer(next.Sub(s.clock.Now()))
			fire = timer.C()
		}
		select {
		case <-fire:
			s.ExpireDue()
		case <-s.wake:
		case <-s.done:
		}
		if timer != nil {
			timer.Stop()
		}
		select {
		case <-s.done:
			return
		default:
		}
	}
}

func (s *Server) nextDeadlineLocked() (time.Time, bool) {
	var next time.Time
	found := false
	for _, l := range s.leases {
		if !found || l.deadline.Before(next) {
			next, found = l.deadline, true
		}
	}
	return next, found
}

// leaseIDsLocked returns the sorted ids of the leases that match.
func (s *Server) leaseIDsLocked(match func(*lease) bool) []string {
	var ids []string
	for id, l := range s.leases {
		if match(l) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// takeWatchersLocked removes the matching watchers from the server and
// from their clients, and returns them for the caller to end.
func (s *Server) takeWatchersLocked(match func(*watcher) bool) []*watcher {
	var ws []*watcher
	for w := range s.watchers {
		if match(w) {
			ws = append(ws, w)
			delete(s.watchers, w)
			delete(w.c.watchers, w)
		}
	}
	return ws
}

// ---- the store's state machine; every method below runs with mu held ----

func cloneKV(kv core.KV) core.KV {
	kv.Value = bytes.Clone(kv.Value)
	return kv
}

func (s *Server) getLocked(key string) (core.KV, error) {
	r, ok := s.records[key]
	if !ok {
		return core.KV{}, fmt.Errorf("memory: get %q: %w", key, core.ErrNotFound)
	}
	return cloneKV(r.kv), nil
}

// listLocked returns the snapshot of prefix with its exact revision: the
// largest revision among the live keys and the tombstones under prefix.
func (s *Server) listLocked(prefix string) core.Snapshot {
	var snap core.Snapshot
	for i := sort.SearchStrings(s.index, prefix); i < len(s.index) && strings.HasPrefix(s.index[i], prefix); i++ {
		key := s.index[i]
		if r, ok := s.records[key]; ok {
			snap.KVs = append(snap.KVs, cloneKV(r.kv))
			snap.Revision = max(snap.Revision, r.kv.Revision)
		} else {
			snap.Revision = max(snap.Revision, s.tombs[key])
		}
	}
	return snap
}

// checkWriteLocked evaluates the condition of a write op (its own first,
// then its guards) against the current state.
func (s *Server) checkWriteLocked(op core.Op) error {
	r, exists := s.records[op.Key]
	switch op.Kind {
	case core.OpCreate:
		if exists {
			return fmt.Errorf("memory: create %q: %w", op.Key, core.ErrExists)
		}
	case core.OpCAS:
		if !exists {
			return fmt.Errorf("memory: compare-and-swap %q: %w", op.Key, core.ErrNotFound)
		}
		if r.kv.Version != op.Version {
			return fmt.Errorf("memory: compare-and-swap %q: version is %d, not %d: %w",
				op.Key, r.kv.Version, op.Version, core.ErrConflict)
		}
	default:
		return fmt.Errorf("memory: op kind %d is not a write: %w", op.Kind, core.ErrInvalidArgument)
	}
	for _, g := range op.Guards {
		gr, ok := s.records[g.Key]
		if !ok {
			return fmt.Errorf("memory: guard on %q: key does not exist: %w", g.Key, core.ErrConflict)
		}
		if gr.kv.Revision != g.Revision {
			return fmt.Errorf("memory: guard on %q: revision is %d, not %d: %w",
				g.Key, gr.kv.Revision, g.Revision, core.ErrConflict)
		}
	}
	return nil
}

// putLocked writes key (creating it if absent) and commits the change.
func (s *Server) putLocked(client, session, key string, value []byte) core.KV {
	s.rev++
	ch := Change{Revision: s.rev, Key: key, Client: client, Session: session}
	r, ok := s.records[key]
	if ok {
		ch.Prev = r.kv
		r.kv = core.KV{Key: key, Value: bytes.Clone(value), Version: r.kv.Version + 1, Revision: s.rev}
	} else {
		r = &record{
			kv:      core.KV{Key: key, Value: bytes.Clone(value), Version: 1, Revision: s.rev},
			session: session,
		}
		s.records[key] = r
		if _, was := s.tombs[key]; was {
			delete(s.tombs, key)
		} else {
			i := sort.SearchStrings(s.index, key)
			s.index = slices.Insert(s.index, i, key)
		}
	}
	ch.KV = r.kv
	s.commitLocked(ch)
	return cloneKV(r.kv)
}

// deleteVersionLocked deletes key if it holds version. A registered key
// leaves its session's keys, so that the end of the session cannot
// delete a key created again under the same name.
func (s *Server) deleteVersionLocked(client, key string, version int64) error {
	r, ok := s.records[key]
	if !ok {
		return fmt.Errorf("memory: delete %q: %w", key, core.ErrNotFound)
	}
	if r.kv.Version != version {
		return fmt.Errorf("memory: delete %q: version is %d, not %d: %w", key, r.kv.Version, version, core.ErrConflict)
	}
	if l, ok := s.leases[r.session]; ok {
		delete(l.keys, key)
	}
	s.deleteLocked(client, "", key)
	return nil
}

// deleteLocked removes key and commits the change.
func (s *Server) deleteLocked(client, session, key string) {
	r, ok := s.records[key]
	if !ok {
		return
	}
	s.rev++
	delete(s.records, key)
	s.tombs[key] = s.rev
	s.commitLocked(Change{Revision: s.rev, Key: key, Deleted: true, Prev: r.kv, Client: client, Session: session})
}

// commitLocked tells observers and the watches of every prefix of the key.
func (s *Server) commitLocked(ch Change) {
	for _, o := range s.observers {
		c := ch
		c.Prev, c.KV = cloneKV(c.Prev), cloneKV(c.KV)
		o.fn(c)
	}
	for w := range s.watchers {
		if strings.HasPrefix(ch.Key, w.prefix) {
			w.signal()
		}
	}
}

// applyLocked runs one op as its single-op method would.
func (s *Server) applyLocked(client string, op core.Op) core.OpResult {
	if err := validateOp(op); err != nil {
		return core.OpResult{Err: err}
	}
	switch op.Kind {
	case core.OpGet:
		kv, err := s.getLocked(op.Key)
		return core.OpResult{KV: kv, Err: err}
	case core.OpList:
		return core.OpResult{List: s.listLocked(op.Key)}
	default:
		if err := s.checkWriteLocked(op); err != nil {
			return core.OpResult{Err: err}
		}
		return core.OpResult{KV: s.putLocked(client, "", op.Key, op.Value)}
	}
}

// txnLocked runs a validated batch: every read and every condition is
// evaluated against the state before the batch, then the writes whose
// condition held are applied in the order of ops, each with its own
// revision.
func (s *Server) txnLocked(client string, ops []core.Op) []core.OpResult {
	results := make([]core.OpResult, len(ops))
	for i, op := range ops {
		switch op.Kind {
		case core.OpGet:
			results[i].KV, results[i].Err = s.getLocked(op.Key)
		case core.OpList:
			results[i].List = s.listLocked(op.Key)
		default:
			results[i].Err = s.checkWriteLocked(op)
		}
	}
	for i, op := range ops {
		if isWrite(op.Kind) && results[i].Err == nil {
			results[i].KV = s.putLocked(client, "", op.Key, op.Value)
		}
	}
	return results
}

func (s *Server) grantLocked(client string, ttl time.Duration) (*lease, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("memory: session TTL %v: %w", ttl, core.ErrInvalidArgument)
	}
	s.lastLease++
	l := &lease{
		id:       fmt.Sprintf("s%010d", s.lastLease),
		client:   client,
		ttl:      ttl,
		deadline: s.clock.Now().Add(ttl),
		keys:     make(map[string]struct{}),
		ended:    make(chan struct{}),
	}
	s.leases[l.id] = l
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return l, nil
}

// liveLeaseLocked returns the session if it exists and its deadline has
// not passed.
func (s *Server) liveLeaseLocked(id string) (*lease, bool) {
	l, ok := s.leases[id]
	if !ok || !s.clock.Now().Before(l.deadline) {
		return nil, false
	}
	return l, true
}

func (s *Server) keepAliveLocked(id string) error {
	l, ok := s.liveLeaseLocked(id)
	if !ok {
		return fmt.Errorf("memory: keep-alive of session %q: %w", id, core.ErrNotFound)
	}
	l.deadline = s.clock.Now().Add(l.ttl)
	return nil
}

func (s *Server) registerLocked(client, id, key string, value []byte) (core.KV, error) {
	if key == "" {
		return core.KV{}, fmt.Errorf("memory: register: empty key: %w", core.ErrInvalidArgument)
	}
	l, ok := s.liveLeaseLocked(id)
	if !ok {
		return core.KV{}, fmt.Errorf("memory: register %q: session %q has ended: %w", key, id, core.ErrSessionLost)
	}
	if _, exists := s.records[key]; exists {
		return core.KV{}, fmt.Errorf("memory: register %q: %w", key, core.ErrExists)
	}
	l.keys[key] = struct{}{}
	return s.putLocked(client, id, key, value), nil
}

func (s *Server) revokeLocked(client, id string) error {
	if _, ok := s.leases[id]; !ok {
		return fmt.Errorf("memory: revoke session %q: %w", id, core.ErrNotFound)
	}
	s.endLeaseLocked(id, client)
	return nil
}

func (s *Server) expireLocked(client, id string) error {
	if _, ok := s.leases[id]; !ok {
		return fmt.Errorf("memory: expire session %q: %w", id, core.ErrNotFound)
	}
	s.endLeaseLocked(id, client)
	return nil
}

// endLeaseLocked ends a session: its keys are deleted in key order, each a
// change of its own, and its holder is told.
func (s *Server) endLeaseLocked(id, client string) {
	l, ok := s.leases[id]
	if !ok {
		return
	}
	delete(s.leases, id)
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.deleteLocked(client, id, k)
	}
	close(l.ended)
}

// ---- validation that needs no state ----

func isWrite(k core.OpKind) bool { return k == core.OpCreate || k == core.OpCAS }

// opName is the fault-injection name of an op kind.
func opName(k core.OpKind) string {
	switch k {
	case core.OpGet:
		return opGet
	case core.OpList:
		return opList
	case core.OpCreate:
		return opCreate
	case core.OpCAS:
		return opCAS
	}
	return ""
}

func validateOp(op core.Op) error {
	if opName(op.Kind) == "" {
		return fmt.Errorf("memory: unknown op kind %d: %w", op.Kind, core.ErrInvalidArgument)
	}
	if op.Kind != core.OpList && op.Key == "" {
		return fmt.Errorf("memory: %s: empty key: %w", opName(op.Kind), core.ErrInvalidArgument)
	}
	for _, g := range op.Guards {
		if g.Key == "" {
			return fmt.Errorf("memory: %s %q: guard with an empty key: %w", opName(op.Kind), op.Key, core.ErrInvalidArgument)
		}
	}
	return nil
}

// validateTxn checks the rules that make a batch run or fail as a whole.
func validateTxn(ops []core.Op, maxOps int) error {
	if len(ops) > maxOps {
		return fmt.Errorf("memory: txn of %d ops, more than %d: %w", len(ops), maxOps, core.ErrInvalidArgument)
	}
	if err := core.CheckTxn(ops); err != nil {
		return fmt.Errorf("memory: %w", err)
	}
	return nil
}

func txnKeys(ops []core.Op) []string {
	keys := make([]string, len(ops))
	for i, op := range ops {
		keys[i] = op.Key
	}
	return keys
}
