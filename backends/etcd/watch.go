package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordha/concord/backends/internal/latest"
	"github.com/concordha/concord/backends/internal/watchutil"
	"github.com/concordha/concord/core"
)

// Backoff between attempts to re-establish a watch that failed for a
// transient reason (no leader, the server unreachable).
const (
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = 2 * time.Second
)

// errWatchEnded: clientv3 closed a watch channel without saying why.
var errWatchEnded = errors.New("watch channel closed")

// watcher is one Watch: a local copy of the prefix, kept by applying
// etcd's events, from which it offers full snapshots.
type watcher struct {
	s      *Store
	prefix string
	out    chan core.Snapshot
	state  map[string]core.KV
	rev    int64 // revision of the last snapshot offered
	next   int64 // the revision to watch from: every earlier one is applied
}

// Watch implements core.Store. The first snapshot, read by a range, is in
// the channel when Watch returns; its revision is the largest
// ModRevision under the prefix. Then a prefix watch from the range's
// revision + 1, made with WithRequireLeader so that a member cut off
// from its cluster stops it, feeds a local copy; each snapshot that
// follows carries the ModRevision of the latest event it reflects, a
// deletion included. The watch survives compaction (it reads the prefix
// again and watches on from there) and the loss of the connection or of
// the leader (it watches again, with backoff, from the last revision it
// applied). It ends with a last snapshot whose Err wraps core.ErrClosed
// when the Store is closed, or etcd's error when etcd refuses this
// client (authentication, permission); it closes without Err when ctx
// ends. The empty prefix watches every key.
func (s *Store) Watch(ctx context.Context, prefix string) (<-chan core.Snapshot, error) {
	if err := s.usable(ctx, opWatch); err != nil {
		return nil, err
	}
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, s.convertError(ctx, opWatch, prefix, err)
	}
	w := &watcher{s: s, prefix: prefix, out: make(chan core.Snapshot, 1)}
	first := w.reset(resp.Kvs, resp.Header.Revision)
	w.rev = first.Revision
	w.out <- first

	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		stop()
		cancel()
		return nil, fmt.Errorf("etcd: watch %q: store closed: %w", prefix, core.ErrClosed)
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

// reset replaces the local copy with the range kvs read at revision
// header, and returns its snapshot.
func (w *watcher) reset(kvs []*mvccpb.KeyValue, header int64) core.Snapshot {
	w.state = make(map[string]core.KV, len(kvs))
	for _, kv := range kvs {
		w.state[string(kv.Key)] = toKV(kv)
	}
	w.next = header + 1
	return snapshotOf(kvs)
}

// run follows etcd until ctx ends or the watch fails for good. callerCtx
// tells the caller's end from the Store's.
func (w *watcher) run(ctx, callerCtx context.Context) {
	retry := watchRetryMin
	for {
		err := w.follow(ctx, &retry)
		if errors.Is(err, rpctypes.ErrCompacted) && ctx.Err() == nil {
			if err = w.resync(ctx); err == nil {
				continue
			}
		}
		if ctx.Err() != nil {
			if callerCtx.Err() == nil && w.s.isClosed() {
				w.end(fmt.Errorf("etcd: watch %q: store closed: %w", w.prefix, core.ErrClosed))
			}
			return
		}
		if w.s.cli.Ctx().Err() != nil {
			// The caller closed the client under a Store of NewFromClient.
			w.end(fmt.Errorf("etcd: watch %q: client closed: %w", w.prefix, core.ErrClosed))
			return
		}
		if isPermanent(err) || errors.Is(err, rpctypes.ErrFutureRev) {
			// A future revision means the store went back in time
			// (restored from a backup): the caller must start again.
			w.end(w.s.convertError(ctx, opWatch, w.prefix, err))
			return
		}
		w.s.log.Debug("etcd: watch interrupted; watching again", "prefix", w.prefix, "from", w.next, "err", err)
		watchutil.Sleep(ctx, watchutil.Jitter(retry))
		retry = min(2*retry, watchRetryMax)
	}
}

// follow runs one etcd watch from w.next and applies what it delivers,
// until it ends; it returns why.
func (w *watcher) follow(ctx context.Context, retry *time.Duration) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := w.s.cli.Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(w.next))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return etcdError(err)
		}
		if len(resp.Events) == 0 {
			continue // progress notification, or the watch's creation
		}
		*retry = watchRetryMin
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			if ev.Type == mvccpb.DELETE {
				delete(w.state, key)
			} else {
				w.state[key] = toKV(ev.Kv)
			}
			// A deletion's event carries the revision of the deletion.
			w.rev = max(w.rev, ev.Kv.ModRevision)
		}
		w.next = w.rev + 1
		w.offer(w.snapshot(w.rev))
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errWatchEnded
}

// resync reads the prefix again after etcd compacted the revisions the
// watch still needed, retrying transient failures. If the content
// changed meanwhile, it offers it with a revision strictly greater than
// the last one offered and at least its largest ModRevision: the exact
// revision of a deletion it did not see is lost with the history, and
// this is the least one that keeps the watch's promises.
func (w *watcher) resync(ctx context.Context) error {
	retry := watchRetryMin
	for {
		resp, err := w.s.cli.Get(ctx, w.prefix, clientv3.WithPrefix())
		if err == nil {
			w.s.log.Debug("etcd: watch: history compacted; read the prefix again", "prefix", w.prefix, "revision", resp.Header.Revision)
			before := w.snapshot(w.rev)
			fresh := w.reset(resp.Kvs, resp.Header.Revision)
			if !watchutil.SameKVs(before.KVs, fresh.KVs) {
				w.rev = max(fresh.Revision, w.rev+1)
				w.offer(w.snapshot(w.rev))
			}
			return nil
		}
		if ctx.Err() != nil || isPermanent(err) {
			return err
		}
		w.s.log.Debug("etcd: watch: read after compaction failed; retrying", "prefix", w.prefix, "err", err)
		if !watchutil.Sleep(ctx, watchutil.Jitter(retry)) {
			return ctx.Err()
		}
		retry = min(2*retry, watchRetryMax)
	}
}

// snapshot returns the local copy, sorted by key, at revision rev.
func (w *watcher) snapshot(rev int64) core.Snapshot {
	kvs := make([]core.KV, 0, len(w.state))
	for _, kv := range w.state {
		kvs = append(kvs, kv)
	}
	slices.SortFunc(kvs, byKey)
	return core.Snapshot{Revision: rev, KVs: kvs}
}

// end offers the last snapshot, carrying err; the caller then closes the
// channel.
func (w *watcher) end(err error) {
	w.offer(core.Snapshot{Revision: w.rev, Err: err})
}

// offer puts snap in the channel, replacing the undelivered one if any.
func (w *watcher) offer(snap core.Snapshot) { latest.Offer(w.out, snap) }
