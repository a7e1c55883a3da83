package consul

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/backends/internal/latest"
	"github.com/concordha/concord/backends/internal/watchutil"
	"github.com/concordha/concord/core"
)

// Timing of a watch's blocking queries.
const (
	// watchWait is how long Consul holds a blocking query open when
	// nothing changes (it adds up to 1/16 of it as jitter).
	watchWait = time.Minute
	// watchSlack is how much longer than watchWait the client waits for
	// the answer before it counts the connection as dead.
	watchSlack = 15 * time.Second
)

// Backoff between attempts after a watch's query failed for a transient
// reason (the agent unreachable, no leader), and how many failures in a
// row end the watch: about 10s of trying.
const (
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = 2 * time.Second
	watchRetries  = 10
)

// watcher is one Watch: blocking List queries on the prefix, each from
// the index of the previous answer.
type watcher struct {
	s      *Store
	prefix string
	out    chan core.Snapshot
	last   core.Snapshot // the last snapshot offered
	index  uint64        // the WaitIndex of the next query; 0 reads at once
}

// Watch implements core.Store. The first snapshot, read by a consistent
// List, is in the channel when Watch returns. Then blocking queries on the
// prefix (consistent, each waiting for an index past the previous
// answer's) deliver every content that differs from the last one
// delivered, with Consul's index of the prefix as revision: the latest
// change under it, deletions included (Consul answers with the index of
// the tombstone a deletion leaves). When Consul's index goes back (a
// restored or restarted cluster), or after a failed query, the next query
// reads at once. Transient failures are retried, with backoff, up to
// watchRetries in a row; then the watch ends with a last snapshot whose
// Err wraps the failure (core.ErrUnavailable when no agent answers). It
// also ends so, at once, when Consul refuses the client (core.ErrDenied)
// or when the Store is closed (core.ErrClosed); it closes without Err
// when ctx ends. The empty prefix watches every key.
func (s *Store) Watch(ctx context.Context, prefix string) (<-chan core.Snapshot, error) {
	if err := checkPrefix(opWatch, prefix); err != nil {
		return nil, err
	}
	cctx, end, err := s.begin(ctx, opWatch)
	if err != nil {
		return nil, err
	}
	pairs, qm, err := s.list(cctx, prefix, query(cctx))
	end()
	if err != nil {
		return nil, s.convertError(ctx, opWatch, prefix, err)
	}
	w := &watcher{s: s, prefix: prefix, out: make(chan core.Snapshot, 1), index: qm.LastIndex}
	w.last = snapshotOf(pairs, qm.LastIndex)
	w.out <- w.last

	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		stop()
		cancel()
		return nil, fmt.Errorf("consul: watch %q: store closed: %w", prefix, core.ErrClosed)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(w.out)
		defer stop()
		defer cancel()
		w.run(wctx, ctx)
	}()
	return w.out, nil
}

// run follows the prefix until ctx ends or the watch fails for good.
// callerCtx tells the caller's end from the Store's.
func (w *watcher) run(ctx, callerCtx context.Context) {
	retry, failures := watchRetryMin, 0
	for {
		pairs, qm, err := w.query(ctx)
		if ctx.Err() != nil {
			if callerCtx.Err() == nil && w.s.isClosed() {
				w.end(fmt.Errorf("consul: watch %q: store closed: %w", w.prefix, core.ErrClosed))
			}
			return
		}
		if err != nil {
			err = w.s.convertError(ctx, opWatch, w.prefix, err)
			failures++
			if isPermanent(err) || failures >= watchRetries {
				w.end(err)
				return
			}
			w.s.log.Debug("consul: watch query failed; trying again", "prefix", w.prefix, "failures", failures, "err", err)
			w.index = 0 // the cluster may have changed meanwhile: read at once
			if !watchutil.Sleep(ctx, watchutil.Jitter(retry)) {
				continue // ctx ended: handled above
			}
			retry = min(2*retry, watchRetryMax)
			continue
		}
		retry, failures = watchRetryMin, 0
		switch {
		case qm.LastIndex == 0:
			// Consul should never answer 0; waiting on 0 would not block,
			// so pause rather than spin.
			w.index = 0
			watchutil.Sleep(ctx, watchRetryMax)
		case qm.LastIndex < w.index:
			w.index = 0 // Consul's index went back: read at once
		default:
			w.index = qm.LastIndex
		}
		w.apply(snapshotOf(pairs, qm.LastIndex), qm.LastIndex)
	}
}

// query runs one blocking List query from w.index (at once when it is 0),
// bounded so that a dead connection cannot hold it forever.
func (w *watcher) query(ctx context.Context) (api.KVPairs, *api.QueryMeta, error) {
	qctx, cancel := context.WithTimeout(ctx, watchWait+watchWait/16+watchSlack)
	defer cancel()
	q := &api.QueryOptions{RequireConsistent: true, WaitIndex: w.index, WaitTime: watchWait}
	return w.s.list(qctx, w.prefix, q.WithContext(qctx))
}

// apply offers snap if its content differs from the last one offered.
// Its revision is Consul's index of the prefix (exact after a deletion,
// unlike List's 0 for an emptied prefix: the change was seen), kept
// strictly above the last one offered: if Consul forgot the tombstones
// that made the last revision (after its tombstone TTL), the least
// revision that keeps the watch's promises stands in.
func (w *watcher) apply(snap core.Snapshot, lastIndex uint64) {
	if watchutil.SameKVs(snap.KVs, w.last.KVs) {
		return
	}
	snap.Revision = max(snap.Revision, int64(lastIndex))
	if snap.Revision <= w.last.Revision {
		snap.Revision = w.last.Revision + 1
	}
	w.last = snap
	latest.Offer(w.out, snap)
}

// end offers the last snapshot, carrying err; the caller then closes the
// channel.
func (w *watcher) end(err error) {
	latest.Offer(w.out, core.Snapshot{Revision: w.last.Revision, Err: err})
}
