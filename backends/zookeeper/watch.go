package zookeeper

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/concordha/concord/backends/internal/latest"
	"github.com/concordha/concord/backends/internal/watchutil"
	"github.com/concordha/concord/core"
)

// Backoff between attempts to read a watched prefix again after a
// transient failure (the server unreachable, the prefix changing under
// every read).
const (
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = 2 * time.Second
)

// watchKind is one of go-zookeeper's kinds of watch on a path, each
// cleared by its own events.
type watchKind uint8

const (
	kindData  watchKind = 1 << iota // GetW, or ExistsW on a znode that exists
	kindExist                       // ExistsW on a znode that does not exist
	kindChild                       // ChildrenW
	kindAll   = kindData | kindExist | kindChild
)

func kindIndex(k watchKind) int {
	switch k {
	case kindData:
		return 0
	case kindExist:
		return 1
	}
	return 2
}

// armState is what is known of the watches set on one path.
type armState struct {
	set     watchKind // set on the server, not fired since
	pending [3]int    // W calls in flight, by kind
	spoiled watchKind // an event of that kind came while a W call was in flight
}

// armed tracks the one-shot watches set on the Store's connection, so
// that each is set once and set again only after it fired: go-zookeeper
// keeps a channel for every W call until its watch fires, and would
// otherwise pile them up for znodes that never change. It also hands
// every event to the watchers it may concern.
type armed struct {
	mu       sync.Mutex
	paths    map[string]*armState
	watchers map[*watcher]struct{}
}

func newArmed() *armed {
	return &armed{paths: make(map[string]*armState), watchers: make(map[*watcher]struct{})}
}

// begin reports whether a watch of kind k on p must be set; if so, the
// caller makes the W call and then calls end.
func (a *armed) begin(p string, k watchKind) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.paths[p]
	if st == nil {
		st = &armState{}
		a.paths[p] = st
	}
	if st.set&k != 0 {
		return false
	}
	st.pending[kindIndex(k)]++
	return true
}

// end records the W call that begin allowed: ok if it set the watch. A
// watch whose event came while the call was in flight counts as not set:
// it may have fired already.
func (a *armed) end(p string, k watchKind, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.paths[p]
	if st == nil {
		return
	}
	i := kindIndex(k)
	st.pending[i]--
	if ok && st.spoiled&k == 0 {
		st.set |= k
	}
	if st.pending[i] == 0 {
		st.spoiled &^= k
	}
	a.tidy(p, st)
}

func (a *armed) isArmed(p string, k watchKind) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.paths[p]
	return st != nil && st.set&k != 0
}

// clear records that the watches of kinds ks on p fired (or were lost).
func (a *armed) clear(p string, ks watchKind) {
	st := a.paths[p]
	if st == nil {
		return
	}
	st.set &^= ks
	for _, k := range []watchKind{kindData, kindExist, kindChild} {
		if ks&k != 0 && st.pending[kindIndex(k)] > 0 {
			st.spoiled |= k
		}
	}
	a.tidy(p, st)
}

func (a *armed) tidy(p string, st *armState) {
	if st.set == 0 && st.pending == [3]int{} {
		delete(a.paths, p)
	}
}

// onEvent is the event callback of the Store's connection. It runs in
// go-zookeeper's receiving goroutine, before any answer that reflects the
// change, and must not block.
func (a *armed) onEvent(ev zk.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ks watchKind
	switch ev.Type {
	case zk.EventNodeCreated:
		ks = kindExist
	case zk.EventNodeDataChanged:
		ks = kindExist | kindData
	case zk.EventNodeChildrenChanged:
		ks = kindChild
	case zk.EventNodeDeleted, zk.EventNotWatching:
		ks = kindAll
	case zk.EventSession:
		switch ev.State {
		case zk.StateExpired:
			// A new session follows, without the old one's watches.
			for p := range a.paths {
				a.clear(p, kindAll)
			}
		case zk.StateHasSession:
		default:
			return
		}
		for w := range a.watchers {
			w.kick()
		}
		return
	default:
		return
	}
	a.clear(ev.Path, ks)
	for w := range a.watchers {
		if w.t.f.concerns(ev.Path) {
			w.kick()
		}
	}
}

func (a *armed) add(w *watcher) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.watchers[w] = struct{}{}
}

func (a *armed) remove(w *watcher) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.watchers, w)
}

// watcher is one Watch: a tree read with watches, read again whenever
// an event may concern it.
type watcher struct {
	s     *Store
	t     *tree
	out   chan core.Snapshot
	poke  chan struct{} // something may have changed
	last  core.Snapshot // the last snapshot offered
	retry time.Duration
}

func (w *watcher) kick() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// Watch implements core.Store. It reads the prefix as List does while
// setting ZooKeeper's one-shot watches on the base and on every znode
// below it (data and children), and reads again, checking the whole
// tree, whenever one fires; the first snapshot is in the channel when
// Watch returns. Each snapshot is one state of the store with List's
// revision, exact for a prefix ending in "/" (for another, the base's
// Pzxid is used when a deletion left the revision behind). A watch
// outlives lost connections and the expiry of the Store's own session:
// go-zookeeper sets its watches again on reconnection, a new session
// loses them, and either way the watch reads the prefix again (retrying
// with backoff while ZooKeeper cannot be reached) and sets what is
// missing. It ends with a last snapshot whose Err wraps core.ErrClosed
// when the Store closes, or core.ErrDenied when the ACLs refuse this
// client; it closes without Err when ctx ends.
func (s *Store) Watch(ctx context.Context, prefix string) (<-chan core.Snapshot, error) {
	f, err := parsePrefix(opWatch, prefix)
	if err != nil {
		return nil, err
	}
	if err := s.usable(ctx, opWatch); err != nil {
		return nil, err
	}
	w := &watcher{
		s:     s,
		t:     newTree(f, s.conn, s.arms),
		out:   make(chan core.Snapshot, 1),
		poke:  make(chan struct{}, 1),
		retry: watchRetryMin,
	}
	// Registered before the first read, so that no event is missed.
	s.arms.add(w)
	first, err := do(s, ctx, func() (core.Snapshot, error) {
		if err := w.t.sync(ctx, []string{f.base}); err != nil {
			return core.Snapshot{}, err
		}
		return w.t.snapshot(), nil
	})
	if err != nil {
		s.arms.remove(w)
		return nil, s.convertError(ctx, opWatch, prefix, err)
	}
	w.last = first
	w.out <- first

	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		stop()
		cancel()
		s.arms.remove(w)
		return nil, fmt.Errorf("zookeeper: watch %q: %w", prefix, errStoreClosed)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(w.out)
		defer s.arms.remove(w)
		defer stop()
		defer cancel()
		w.run(wctx, ctx)
	}()
	return w.out, nil
}

// run reads the prefix again on every kick until ctx ends or the watch
// fails for good. callerCtx tells the caller's end from the Store's.
func (w *watcher) run(ctx, callerCtx context.Context) {
	prefix := w.t.f.prefix
	for {
		select {
		case <-ctx.Done():
			if callerCtx.Err() == nil && w.s.isClosed() {
				w.end(fmt.Errorf("zookeeper: watch %q: %w", prefix, errStoreClosed))
			}
			return
		case <-w.poke:
		}
		if err := w.t.sync(ctx, nil); err != nil {
			if ctx.Err() != nil {
				continue
			}
			err = w.s.convertError(ctx, opWatch, prefix, err)
			if isPermanent(err) {
				w.end(err)
				return
			}
			w.s.log.Debug("zookeeper: watch: read failed; reading again", "prefix", prefix, "err", err)
			watchutil.Sleep(ctx, watchutil.Jitter(w.retry))
			w.retry = min(2*w.retry, watchRetryMax)
			w.kick()
			continue
		}
		w.retry = watchRetryMin
		w.deliver(w.t.snapshot())
	}
}

// deliver offers snap if its content differs from the last one offered,
// with a revision strictly greater.
func (w *watcher) deliver(snap core.Snapshot) {
	if watchutil.SameKVs(snap.KVs, w.last.KVs) {
		return
	}
	if snap.Revision <= w.last.Revision {
		// A deletion right below the base of a prefix that does not end
		// in "/" shows only in the base's Pzxid.
		snap.Revision = max(snap.Revision, w.t.basePzxid())
	}
	if snap.Revision < w.last.Revision {
		snap.Revision = w.last.Revision
	}
	if snap.Revision == w.last.Revision {
		w.s.log.Warn("zookeeper: watch: content changed without a greater revision", "prefix", w.t.f.prefix, "revision", snap.Revision)
	}
	w.last = snap
	latest.Offer(w.out, snap)
}

// end offers the last snapshot, carrying err; the caller then closes the
// channel.
func (w *watcher) end(err error) {
	latest.Offer(w.out, core.Snapshot{Revision: w.last.Revision, Err: err})
}
