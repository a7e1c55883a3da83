package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/concordha/concord/core"
)

var watchChecks = []namedCheck{
	{"WatchFirstSnapshot", checkWatchFirstSnapshot},
	{"WatchConvergesAfterBurst", checkWatchConvergesAfterBurst},
	{"WatchRepeatedWrites", checkWatchRepeatedWrites},
	{"WatchClosesOnCancel", checkWatchClosesOnCancel},
	{"WatchSeesDeletion", checkWatchSeesDeletion},
	{"WatchOnlyUnderPrefix", checkWatchOnlyUnderPrefix},
}

// stream is a watch the check reads. Every snapshot it receives is held to
// the contract: revisions never decrease, a change of content comes with a
// strictly greater revision, Err is set only on a last snapshot that has
// no KVs, and the channel never holds a backlog.
type stream struct {
	c      *check
	prefix string
	ch     <-chan core.Snapshot
	cancel context.CancelFunc
	last   *core.Snapshot
	n      int // snapshots received
}

// watch starts a watch of prefix on st, cancelled when the check ends.
func (c *check) watch(st core.Store, prefix string) *stream {
	c.t.Helper()
	ctx, cancel := context.WithCancel(c.ctx)
	c.t.Cleanup(cancel)
	ch, err := st.Watch(ctx, prefix)
	if err != nil {
		cancel()
		c.t.Fatalf("Watch(%q): %v", prefix, err)
	}
	if ch == nil {
		cancel()
		c.t.Fatalf("Watch(%q) returned a nil channel and no error", prefix)
	}
	if cap(ch) > 1 {
		c.t.Errorf("Watch(%q): channel capacity %d; it must hold at most one undelivered snapshot", prefix, cap(ch))
	}
	return &stream{c: c, prefix: prefix, ch: ch, cancel: cancel}
}

// recv returns the next snapshot, or ok false if the channel closed. It
// fails the check if nothing arrives within timeout.
func (w *stream) recv(timeout time.Duration) (snap core.Snapshot, ok bool) {
	w.c.t.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case snap, ok = <-w.ch:
	case <-t.C:
		w.c.t.Fatalf("Watch(%q): nothing received for %v after %d snapshots", w.prefix, timeout, w.n)
	}
	if !ok {
		return snap, false
	}
	w.n++
	w.vet(snap)
	return snap, true
}

// vet holds one received snapshot to the contract.
func (w *stream) vet(snap core.Snapshot) {
	w.c.t.Helper()
	if snap.Err != nil && len(snap.KVs) > 0 {
		w.c.t.Errorf("Watch(%q): a snapshot with Err %v carries KVs %s, want none", w.prefix, snap.Err, fmtKeys(snap.KVs))
	}
	if snap.Err == nil {
		if m := maxRevision(snap.KVs); snap.Revision < m {
			w.c.t.Errorf("Watch(%q): snapshot Revision %d below its largest KV Revision %d", w.prefix, snap.Revision, m)
		}
		for i := 1; i < len(snap.KVs); i++ {
			if snap.KVs[i-1].Key >= snap.KVs[i].Key {
				w.c.t.Errorf("Watch(%q): snapshot not sorted: %q before %q", w.prefix, snap.KVs[i-1].Key, snap.KVs[i].Key)
			}
		}
		for _, kv := range snap.KVs {
			if len(kv.Key) < len(w.prefix) || kv.Key[:len(w.prefix)] != w.prefix {
				w.c.t.Errorf("Watch(%q): snapshot holds %q, not under the prefix", w.prefix, kv.Key)
			}
		}
	}
	if w.last != nil {
		if snap.Revision < w.last.Revision {
			w.c.t.Errorf("Watch(%q): Revision went down from %d to %d", w.prefix, w.last.Revision, snap.Revision)
		}
		if snap.Err == nil && !sameContent(snap.KVs, w.last.KVs) && snap.Revision <= w.last.Revision {
			w.c.t.Errorf("Watch(%q): content changed from %s to %s but Revision stayed %d (want strictly greater)",
				w.prefix, fmtKeys(w.last.KVs), fmtKeys(snap.KVs), snap.Revision)
		}
	}
	if snap.Err != nil {
		// It must be the last one: the channel closes right after.
		t := time.NewTimer(w.c.soon())
		defer t.Stop()
		select {
		case extra, ok := <-w.ch:
			if ok {
				w.c.t.Errorf("Watch(%q): snapshot (Revision %d, Err %v) after the one carrying Err %v; want the channel closed",
					w.prefix, extra.Revision, extra.Err, snap.Err)
			}
		case <-t.C:
			w.c.t.Errorf("Watch(%q): channel still open %v after a snapshot carrying Err %v", w.prefix, w.c.soon(), snap.Err)
		}
	}
	s := snap
	w.last = &s
}

// until reads snapshots until cond accepts one, and returns it; the last
// snapshot already received counts, since a watch that has converged
// sends nothing more. It fails the check if timeout passes first, or the
// watch ends.
func (w *stream) until(timeout time.Duration, what string, cond func(core.Snapshot) error) core.Snapshot {
	w.c.t.Helper()
	deadline := time.Now().Add(timeout)
	lastErr := errors.New("no snapshot received")
	if w.last != nil && w.last.Err == nil {
		if lastErr = cond(*w.last); lastErr == nil {
			return *w.last
		}
	}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			w.c.t.Fatalf("Watch(%q): %s: not seen after %v: %v", w.prefix, what, timeout, lastErr)
		}
		t := time.NewTimer(left)
		var (
			snap core.Snapshot
			ok   bool
		)
		select {
		case snap, ok = <-w.ch:
		case <-t.C:
			w.c.t.Fatalf("Watch(%q): %s: not seen after %v: %v", w.prefix, what, timeout, lastErr)
		}
		t.Stop()
		if !ok {
			w.c.t.Fatalf("Watch(%q): %s: channel closed first; last error: %v", w.prefix, what, lastErr)
		}
		w.n++
		w.vet(snap)
		if snap.Err != nil {
			w.c.t.Fatalf("Watch(%q): %s: watch ended with Err %v", w.prefix, what, snap.Err)
		}
		if lastErr = cond(snap); lastErr == nil {
			return snap
		}
	}
}

// equals is a condition for until: the snapshot holds exactly want.
func equals(want core.Snapshot) func(core.Snapshot) error {
	return func(got core.Snapshot) error {
		if !sameContent(got.KVs, want.KVs) {
			return fmt.Errorf("snapshot %s (Revision %d), want %s (Revision %d)",
				fmtKeys(got.KVs), got.Revision, fmtKeys(want.KVs), want.Revision)
		}
		return nil
	}
}

func checkWatchFirstSnapshot(c *check) {
	st, other := c.client(), c.client()
	prefix := c.key("w/")
	c.mustCreate(st, c.key("w/a"), "1")
	b := c.mustCreate(st, c.key("w/b"), "1")
	c.mustCAS(st, b.Key, "2", b.Version)
	c.mustCreate(st, c.key("wx"), "outside")
	listed := c.mustList(other, prefix)
	w := c.watch(other, prefix)
	first, ok := w.recv(c.soon())
	if !ok {
		c.t.Fatalf("Watch(%q): channel closed before the first snapshot", prefix)
	}
	if first.Err != nil {
		c.t.Fatalf("Watch(%q): first snapshot carries Err %v", prefix, first.Err)
	}
	if !sameContent(first.KVs, listed.KVs) {
		c.t.Fatalf("Watch(%q): first snapshot %s, want the current content %s", prefix, fmtKeys(first.KVs), fmtKeys(listed.KVs))
	}
	if first.Revision > listed.Revision {
		c.t.Errorf("Watch(%q): first snapshot Revision %d, greater than %d listed just before on an unchanged prefix",
			prefix, first.Revision, listed.Revision)
	}
	// An empty prefix starts with an empty snapshot.
	ew := c.watch(other, c.key("empty/"))
	if snap, ok := ew.recv(c.soon()); !ok || len(snap.KVs) != 0 || snap.Err != nil {
		c.t.Errorf("Watch(%q) of an empty prefix: first snapshot %s (Err %v, open %v), want empty", c.key("empty/"), fmtKeys(snap.KVs), snap.Err, ok)
	}
}

// checkWatchConvergesAfterBurst writes many keys while the consumer does
// not read: the consumer must then get the final content, not a backlog.
func checkWatchConvergesAfterBurst(c *check) {
	writer, watcher := c.client(), c.client()
	prefix := c.key("burst/")
	w := c.watch(watcher, prefix)
	if _, ok := w.recv(c.soon()); !ok {
		c.t.Fatalf("Watch(%q): closed before the first snapshot", prefix)
	}
	const keys, rounds, perRound = 20, 4, 50
	current := map[string]core.KV{}
	for r := range rounds {
		for i := range perRound {
			key := c.key("burst/", strconv.Itoa(rand.IntN(keys)))
			value := strconv.Itoa(r*perRound + i)
			if kv, ok := current[key]; ok {
				current[key] = c.mustCAS(writer, key, value, kv.Version)
			} else {
				current[key] = c.mustCreate(writer, key, value)
			}
		}
		c.mustCreate(writer, c.key("burst-sibling-", strconv.Itoa(r)), "outside")
		// Let a snapshot wait unread in the channel, so that the next
		// round's snapshots must replace it rather than queue behind it.
		c.eventually(c.soon(), fmt.Sprintf("Watch(%q): a snapshot waiting after round %d", prefix, r), func() error {
			if len(w.ch) == 0 {
				return errors.New("channel empty")
			}
			return nil
		})
	}
	// Stay behind a while, so that a backend that keeps the oldest
	// undelivered snapshot instead of the newest has caught up and shows it.
	// The channel must keep holding a snapshot all that time.
	c.consistently(min(c.ttl/5, 200*time.Millisecond), fmt.Sprintf("Watch(%q): a snapshot waiting", prefix), func() error {
		if len(w.ch) == 0 {
			return errors.New("channel empty while the consumer was not reading")
		}
		return nil
	})
	final := c.mustList(writer, prefix)
	if len(final.KVs) != len(current) {
		c.t.Fatalf("List(%q) = %s, want %d keys", prefix, fmtKeys(final.KVs), len(current))
	}
	got := w.until(c.soon(), "the content after a burst of writes", equals(final))
	if got.Revision < final.Revision {
		c.t.Errorf("Watch(%q): converged snapshot Revision %d, below %d listed for the same content", prefix, got.Revision, final.Revision)
	}
}

// checkWatchRepeatedWrites rewrites one key many times while the consumer
// reads at its own pace; the watch must end on the last value.
func checkWatchRepeatedWrites(c *check) {
	writer, watcher := c.client(), c.client()
	prefix := c.key("r/")
	key := c.key("r/k")
	kv := c.mustCreate(writer, key, "0")
	w := c.watch(watcher, prefix)
	for i := 1; i <= 100; i++ {
		kv = c.mustCAS(writer, key, strconv.Itoa(i), kv.Version)
		if i%10 == 0 {
			// Take whatever is there now, without waiting for it.
			select {
			case snap, ok := <-w.ch:
				if !ok {
					c.t.Fatalf("Watch(%q): closed during the writes", prefix)
				}
				w.n++
				w.vet(snap)
			default:
			}
		}
	}
	w.until(c.soon(), fmt.Sprintf("%q = %q", key, kv.Value), equals(core.Snapshot{KVs: []core.KV{kv}, Revision: kv.Revision}))
	// Writes stop; nothing newer may follow, and whatever follows must
	// still show the final content.
	select {
	case snap, ok := <-w.ch:
		if ok {
			w.n++
			w.vet(snap)
			if !sameContent(snap.KVs, []core.KV{kv}) {
				c.t.Errorf("Watch(%q): after converging, got %s, want %s", prefix, fmtKeys(snap.KVs), fmtKV(kv))
			}
		}
	default:
	}
}

func checkWatchClosesOnCancel(c *check) {
	st := c.client()
	prefix := c.key("c/")
	c.mustCreate(st, c.key("c/a"), "1")
	w := c.watch(st, prefix)
	if _, ok := w.recv(c.soon()); !ok {
		c.t.Fatalf("Watch(%q): closed before the first snapshot", prefix)
	}
	c.mustCreate(st, c.key("c/b"), "1") // leave a change possibly undelivered
	w.cancel()
	deadline := time.Now().Add(c.soon())
	for {
		left := time.Until(deadline)
		if left <= 0 {
			c.t.Fatalf("Watch(%q): channel still open %v after its context was cancelled", prefix, c.soon())
		}
		t := time.NewTimer(left)
		select {
		case snap, ok := <-w.ch:
			t.Stop()
			if !ok {
				// The store stays usable after a watch ends.
				c.mustGet(st, c.key("c/a"))
				return
			}
			if snap.Err != nil {
				c.t.Errorf("Watch(%q): snapshot with Err %v after cancel; Err is only for ends not caused by the context", prefix, snap.Err)
			}
		case <-t.C:
		}
	}
}

// checkWatchSeesDeletion watches from one client while another client's
// session ends; the deletion must show.
func checkWatchSeesDeletion(c *check) {
	holder, watcher := c.client(), c.client()
	prefix := c.key("d/")
	s := c.session(holder)
	reg := c.mustRegister(s, c.key("d/owned"), "mine")
	c.mustCreate(holder, c.key("d/plain"), "stays")
	w := c.watch(watcher, prefix)
	seen := w.until(c.soon(), "the registered key", func(snap core.Snapshot) error {
		if _, ok := findKey(snap.KVs, reg.Key); !ok {
			return fmt.Errorf("snapshot %s lacks %q", fmtKeys(snap.KVs), reg.Key)
		}
		return nil
	})
	if err := s.Close(c.ctx); err != nil {
		c.t.Fatalf("Session.Close: %v", err)
	}
	gone := w.until(c.soon(), fmt.Sprintf("%q deleted after Session.Close", reg.Key), func(snap core.Snapshot) error {
		if _, ok := findKey(snap.KVs, reg.Key); ok {
			return fmt.Errorf("snapshot %s still holds %q", fmtKeys(snap.KVs), reg.Key)
		}
		return nil
	})
	if _, ok := findKey(gone.KVs, c.key("d/plain")); !ok {
		c.t.Errorf("Watch(%q) after the session closed: %s, want %q kept (it was not registered)", prefix, fmtKeys(gone.KVs), c.key("d/plain"))
	}
	if gone.Revision <= seen.Revision {
		c.t.Errorf("Watch(%q): deletion of %q came with Revision %d, want > %d", prefix, reg.Key, gone.Revision, seen.Revision)
	}
}

// checkWatchOnlyUnderPrefix: writes outside the prefix never show.
func checkWatchOnlyUnderPrefix(c *check) {
	st := c.client()
	prefix := c.key("a/")
	w := c.watch(st, prefix)
	c.mustCreate(st, c.key("ab/x"), "sibling")
	c.mustCreate(st, c.key("a"), "parent")
	in := c.mustCreate(st, c.key("a/x"), "inside")
	w.until(c.soon(), "only the key under the prefix", equals(core.Snapshot{KVs: []core.KV{in}}))
}
