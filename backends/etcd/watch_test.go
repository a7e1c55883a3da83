package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordha/concord/backends/internal/watchutil"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/netfault"
)

// watchStream reads a watch and holds every snapshot to the contract's
// ordering rules.
type watchStream struct {
	t    *testing.T
	ch   <-chan core.Snapshot
	last core.Snapshot
	n    int
}

func startWatch(t *testing.T, st core.Store, prefix string) *watchStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := st.Watch(ctx, prefix)
	if err != nil {
		t.Fatalf("Watch(%q): %v", prefix, err)
	}
	return &watchStream{t: t, ch: ch}
}

// until reads snapshots until cond accepts one.
func (w *watchStream) until(timeout time.Duration, what string, cond func(core.Snapshot) error) core.Snapshot {
	w.t.Helper()
	if w.n > 0 && cond(w.last) == nil {
		return w.last
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	lastErr := errors.New("nothing received")
	for {
		select {
		case snap, ok := <-w.ch:
			if !ok {
				w.t.Fatalf("%s: watch closed (last error %v)", what, lastErr)
			}
			if snap.Err != nil {
				w.t.Fatalf("%s: watch ended with %v", what, snap.Err)
			}
			if w.n > 0 {
				if snap.Revision < w.last.Revision {
					w.t.Fatalf("revision went down from %d to %d", w.last.Revision, snap.Revision)
				}
				if !watchutil.SameKVs(snap.KVs, w.last.KVs) && snap.Revision <= w.last.Revision {
					w.t.Fatalf("content changed at the same revision %d: %v then %v", snap.Revision, w.last.KVs, snap.KVs)
				}
			}
			w.last, w.n = snap, w.n+1
			if lastErr = cond(snap); lastErr == nil {
				return snap
			}
		case <-timer.C:
			w.t.Fatalf("%s: not seen within %v: %v", what, timeout, lastErr)
		}
	}
}

// holds is a condition: the snapshot holds exactly keys, with values.
func holds(want map[string]string) func(core.Snapshot) error {
	return func(s core.Snapshot) error {
		if len(s.KVs) != len(want) {
			return fmt.Errorf("%d keys %v, want %v", len(s.KVs), s.KVs, want)
		}
		for _, kv := range s.KVs {
			if v, ok := want[kv.Key]; !ok || v != string(kv.Value) {
				return fmt.Errorf("snapshot %v, want %v", s.KVs, want)
			}
		}
		return nil
	}
}

// TestWatchSurvivesCompaction cuts a watch off while keys change (one is
// deleted) and the history is compacted past the watch's revision; once
// the link is back, the watch reads the prefix again by itself and
// carries on.
func TestWatchSurvivesCompaction(t *testing.T) {
	srv := startServer(t)
	link, err := netfault.New(hostPort(t, srv.Endpoints()[0]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	watched := openStore(t, []string{"http://" + link.Addr()})
	direct := openStore(t, srv.Endpoints())
	ctx := ctxFor(t, time.Minute)
	const p = "/compaction/"

	a, err := direct.Create(ctx, p+"a", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	sess, err := direct.NewSession(ctx, core.SessionOptions{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Register(ctx, p+"gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, watched, p)
	before := w.until(10*time.Second, "first snapshot", holds(map[string]string{p + "a": "1", p + "gone": "x"}))

	link.Cut()
	if _, err := direct.CompareAndSwap(ctx, p+"a", []byte("2"), a.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Create(ctx, p+"b", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := sess.Close(ctx); err != nil { // deletes p+"gone"
		t.Fatal(err)
	}
	rev := compactAll(t, direct)
	t.Logf("compacted at revision %d; the watch had applied up to %d", rev, before.Revision)
	link.Restore()

	want := map[string]string{p + "a": "2", p + "b": "1"}
	after := w.until(20*time.Second, "the content changed while cut off", holds(want))
	listed, err := direct.List(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision < listed.Revision || after.Revision > rev {
		t.Errorf("snapshot after compaction: Revision %d, want in [%d, %d]", after.Revision, listed.Revision, rev)
	}
	c, err := direct.Create(ctx, p+"c", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	want[p+"c"] = "1"
	last := w.until(10*time.Second, "a change after the compaction", holds(want))
	if last.Revision != c.Revision {
		t.Errorf("snapshot after create: Revision %d, want %d", last.Revision, c.Revision)
	}
}

// compactAll compacts the whole history up to the current revision and
// returns that revision.
func compactAll(t *testing.T, st *Store) int64 {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	resp, err := st.Client().Get(ctx, "compaction-probe")
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Header.Revision
	if _, err := st.Client().Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("Compact(%d): %v", rev, err)
	}
	return rev
}

// TestWatchSurvivesServerRestart stops the only member and starts it
// again on the same data and URLs; the watch delivers the later change
// without being started again, and the Store serves again.
func TestWatchSurvivesServerRestart(t *testing.T) {
	srv := startServer(t)
	cfg := srv.Config()
	st := openStore(t, srv.Endpoints())
	ctx := ctxFor(t, time.Minute)
	const p = "/restart/"
	if _, err := st.Create(ctx, p+"a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, st, p)
	w.until(10*time.Second, "first snapshot", holds(map[string]string{p + "a": "1"}))

	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// While the member is down, calls fail by their context.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := st.Get(short, p+"a")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get while the member is down: %v, want one wrapping context.DeadlineExceeded", err)
	}
	select {
	case snap, ok := <-w.ch:
		t.Fatalf("watch delivered %v (open %v) while the member was down", snap, ok)
	default:
	}

	startMember(t, cfg)
	var b core.KV
	storetest.Eventually(t, 20*time.Second, "Create after the restart", func() error {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		b, err = st.Create(c, p+"b", []byte("1"))
		if errors.Is(err, core.ErrExists) {
			b, err = st.Get(c, p+"b") // an earlier attempt applied
		}
		return err
	})
	snap := w.until(20*time.Second, "the change after the restart", holds(map[string]string{p + "a": "1", p + "b": "1"}))
	if snap.Revision != b.Revision {
		t.Errorf("snapshot after the restart: Revision %d, want %d", snap.Revision, b.Revision)
	}
}

// TestWatchEndsWithErrClosed: closing the Store ends its watches with a
// last snapshot carrying ErrClosed; cancelling the caller's context ends
// one without Err.
func TestWatchEndsWithErrClosed(t *testing.T) {
	srv := startServer(t)
	st := openStore(t, srv.Endpoints())
	ctx, cancel := context.WithCancel(ctxFor(t, time.Minute))
	cancelled, err := st.Watch(ctx, "/w/")
	if err != nil {
		t.Fatal(err)
	}
	closed, err := st.Watch(ctxFor(t, time.Minute), "/w/")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for snap := range cancelled {
		if snap.Err != nil {
			t.Errorf("watch whose context ended: snapshot with Err %v", snap.Err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	var last core.Snapshot
	for snap := range closed {
		last = snap
	}
	if !errors.Is(last.Err, core.ErrClosed) {
		t.Errorf("watch of a closed Store: last snapshot Err %v, want ErrClosed", last.Err)
	}
}
