package memory

import (
	"context"
	"sync"

	"github.com/concordha/concord/backends/internal/latest"
	"github.com/concordha/concord/core"
)

// watcher is one Watch. Commits signal it without blocking; its goroutine
// then reads the prefix and offers the snapshot on out, replacing one the
// consumer has not taken yet, so the server never waits for a consumer.
type watcher struct {
	c       *Client
	prefix  string
	out     chan core.Snapshot
	wake    chan struct{}
	stop    chan struct{}
	stopped sync.Once
	err     error // why the watch ended; written before stop is closed
	exited  chan struct{}
	first   int64 // revision of the first snapshot, put in out by Watch
}

func newWatcher(c *Client, prefix string) *watcher {
	return &watcher{
		c:      c,
		prefix: prefix,
		out:    make(chan core.Snapshot, 1),
		wake:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		exited: make(chan struct{}),
	}
}

// signal tells the watcher that its prefix changed. It never blocks.
func (w *watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// end makes the watch deliver a last snapshot carrying err and close. The
// caller has already removed it from the server and the client.
func (w *watcher) end(err error) {
	w.stopped.Do(func() {
		w.err = err
		close(w.stop)
	})
}

func (w *watcher) run(ctx context.Context) {
	s := w.c.srv
	defer s.wg.Done()
	defer close(w.exited)
	defer close(w.out)
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		delete(w.c.watchers, w)
		s.mu.Unlock()
	}()
	last := w.first
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.stop:
			// Keep the revision so that revisions never decrease.
			w.offer(core.Snapshot{Revision: last, Err: w.err})
			return
		case <-w.wake:
		}
		s.mu.Lock()
		snap := s.listLocked(w.prefix)
		s.mu.Unlock()
		// Revisions are exact, so an unchanged revision means unchanged
		// content: the signal was for a change already delivered.
		if snap.Revision <= last {
			continue
		}
		last = snap.Revision
		w.offer(snap)
	}
}

// offer puts snap in the channel, replacing the undelivered one if any.
func (w *watcher) offer(snap core.Snapshot) { latest.Offer(w.out, snap) }
