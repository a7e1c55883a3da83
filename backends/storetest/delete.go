package storetest

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

var deleteChecks = []namedCheck{
	{"DeleteRightVersion", checkDeleteRightVersion},
	{"DeleteStaleVersion", checkDeleteStaleVersion},
	{"DeleteMissingKey", checkDeleteMissingKey},
	{"DeleteThenCreate", checkDeleteThenCreate},
	{"DeleteRegisteredKey", checkDeleteRegisteredKey},
	{"DeleteRacesCAS", checkDeleteRacesCAS},
}

// deleter returns a new client and its Deleter, or skips the check.
func (c *check) deleter() (core.Store, core.Deleter) {
	c.t.Helper()
	st := c.client()
	d, ok := st.(core.Deleter)
	if !ok {
		c.t.Skip("the store does not implement core.Deleter")
	}
	return st, d
}

func (c *check) mustDelete(d core.Deleter, key string, version int64) {
	c.t.Helper()
	if err := d.DeleteVersion(c.ctx, key, version); err != nil {
		c.t.Fatalf("DeleteVersion(%q, version %d): %v", key, version, err)
	}
}

// wantMissing fails unless key is gone as seen from st.
func (c *check) wantMissing(st core.Store, key, what string) {
	c.t.Helper()
	if kv, err := st.Get(c.ctx, key); !errors.Is(err, core.ErrNotFound) {
		c.t.Errorf("Get(%q) %s = %s, %v; want ErrNotFound", key, what, fmtKV(kv), err)
	}
}

// checkDeleteRightVersion: a delete at the current version removes the
// key for every client, by Get, List and Watch, and leaves its siblings.
func checkDeleteRightVersion(c *check) {
	st, d := c.deleter()
	observer := c.client()
	prefix := c.key("d/")
	first := c.mustCreate(st, c.key("d/k"), "v1")
	kv := c.mustCAS(st, first.Key, "v2", first.Version)
	sibling := c.mustCreate(st, c.key("d/sibling"), "stays")
	w := c.watch(observer, prefix)
	seen := w.until(c.soon(), fmt.Sprintf("%q before the delete", kv.Key), equals(core.Snapshot{KVs: []core.KV{kv, sibling}}))
	before := c.mustList(observer, prefix)

	c.mustDelete(d, kv.Key, kv.Version)
	c.wantMissing(st, kv.Key, "after DeleteVersion, same client")
	c.wantMissing(observer, kv.Key, "after DeleteVersion, second client")
	after := c.mustList(observer, prefix)
	if !sameContent(after.KVs, []core.KV{sibling}) {
		c.t.Errorf("List(%q) after DeleteVersion(%q) = %s, want only %s", prefix, kv.Key, fmtKeys(after.KVs), fmtKV(sibling))
	}
	if c.f.ExactListRevision && after.Revision <= before.Revision {
		c.t.Errorf("List(%q) after DeleteVersion: Revision %d, want > %d (a deletion is a change)", prefix, after.Revision, before.Revision)
	}
	gone := w.until(c.soon(), fmt.Sprintf("%q deleted by DeleteVersion", kv.Key), equals(core.Snapshot{KVs: []core.KV{sibling}}))
	if gone.Revision <= seen.Revision {
		c.t.Errorf("Watch(%q): deletion of %q came with Revision %d, want > %d", prefix, kv.Key, gone.Revision, seen.Revision)
	}
	c.sameKV(fmt.Sprintf("Get(%q), a sibling of the deleted key", sibling.Key), c.mustGet(observer, sibling.Key), sibling)
}

// checkDeleteStaleVersion: a delete at any version but the current one
// fails with ErrConflict and writes nothing.
func checkDeleteStaleVersion(c *check) {
	st, d := c.deleter()
	observer := c.client()
	first := c.mustCreate(st, c.key("k"), "v1")
	current := c.mustCAS(st, first.Key, "v2", first.Version)
	for _, version := range []int64{first.Version, 0, -1} {
		if version == current.Version {
			continue
		}
		err := d.DeleteVersion(c.ctx, current.Key, version)
		if !errors.Is(err, core.ErrConflict) {
			c.t.Errorf("DeleteVersion(%q) with version %d (current %d): err = %v, want ErrConflict", current.Key, version, current.Version, err)
		}
	}
	c.sameKV(fmt.Sprintf("Get(%q) after refused deletes", current.Key), c.mustGet(observer, current.Key), current)
	if snap := c.mustList(observer, c.root); snap.Revision != current.Revision {
		c.t.Errorf("List(%q) after refused deletes: Revision = %d, want %d (a refused delete writes nothing)",
			c.root, snap.Revision, current.Revision)
	}
	// The version read still works.
	c.mustDelete(d, current.Key, current.Version)
	c.wantMissing(observer, current.Key, "after DeleteVersion at the current version")
}

// checkDeleteMissingKey: a key never written, one already deleted, and a
// name that only has keys below it are all ErrNotFound, at any version.
func checkDeleteMissingKey(c *check) {
	st, d := c.deleter()
	deleted := c.mustCreate(st, c.key("deleted"), "v")
	c.mustDelete(d, deleted.Key, deleted.Version)
	below := c.mustCreate(st, c.key("dir/below"), "v")
	for _, key := range []string{c.key("never"), deleted.Key, c.key("dir")} {
		for _, version := range []int64{deleted.Version, 0, 1, 2} {
			err := d.DeleteVersion(c.ctx, key, version)
			if !errors.Is(err, core.ErrNotFound) {
				c.t.Errorf("DeleteVersion(%q, version %d) of a missing key: err = %v, want ErrNotFound", key, version, err)
			}
		}
	}
	c.wantMissing(st, c.key("never"), "after deletes of a missing key")
	c.sameKV(fmt.Sprintf("Get(%q), below a name deleted while missing", below.Key), c.mustGet(st, below.Key), below)
}

// checkDeleteThenCreate: a deleted key can be created again, and a
// compare-and-swap at the deleted record's version then fails. The old
// version is the third of its key, so that no backend can give it to the
// new record, which the contract lets a backend do (see core.KV.Version).
func checkDeleteThenCreate(c *check) {
	st, d := c.deleter()
	other := c.client()
	key := c.key("k")
	kv := c.mustCreate(st, key, "v1")
	kv = c.mustCAS(st, key, "v2", kv.Version)
	old := c.mustCAS(st, key, "v3", kv.Version)
	c.mustDelete(d, key, old.Version)
	again := c.mustCreate(other, key, "again")
	c.wantKV("Create after DeleteVersion", again, key, "again")
	if again.Revision <= old.Revision {
		c.t.Errorf("Create(%q) after DeleteVersion: Revision %d, want > %d of the deleted record", key, again.Revision, old.Revision)
	}
	if again.Version == old.Version {
		// Allowed, though no backend known to the suite does it.
		c.t.Logf("Create(%q) after DeleteVersion reused Version %d: the stale writes below are not checked", key, again.Version)
	} else {
		if _, err := st.CompareAndSwap(c.ctx, key, []byte("stale"), old.Version); !errors.Is(err, core.ErrConflict) {
			c.t.Errorf("CompareAndSwap(%q) at version %d of the deleted record: err = %v, want ErrConflict", key, old.Version, err)
		}
		if err := d.DeleteVersion(c.ctx, key, old.Version); !errors.Is(err, core.ErrConflict) {
			c.t.Errorf("DeleteVersion(%q) at version %d of the deleted record: err = %v, want ErrConflict", key, old.Version, err)
		}
	}
	c.sameKV(fmt.Sprintf("Get(%q) after stale writes", key), c.mustGet(st, key), again)
	c.wantKV("CompareAndSwap of the created record", c.mustCAS(st, key, "next", again.Version), key, "next")
}

// checkDeleteRegisteredKey: a key registered to a session can be deleted
// by another client; the session stays alive and keeps its other keys,
// and a key created again under the deleted name is not the session's:
// it outlives the session.
func checkDeleteRegisteredKey(c *check) {
	holder, deleter := c.client(), c.client()
	d, ok := deleter.(core.Deleter)
	if !ok {
		c.t.Skip("the store does not implement core.Deleter")
	}
	observer := c.client()
	s := c.session(holder)
	reg := c.mustRegister(s, c.key("reg"), "mine")
	kept := c.mustRegister(s, c.key("kept"), "mine too")
	c.mustDelete(d, reg.Key, reg.Version)
	c.wantMissing(observer, reg.Key, "after DeleteVersion of a registered key")
	c.consistently(min(c.ttl, time.Second), fmt.Sprintf("session %q alive after DeleteVersion of its key", s.ID()), func() error {
		if isClosed(s.Done()) {
			return fmt.Errorf("session %q done: %v", s.ID(), s.Err())
		}
		return nil
	})
	c.sameKV(fmt.Sprintf("Get(%q), the session's other key", kept.Key), c.mustGet(observer, kept.Key), kept)
	c.wantKV("Register after DeleteVersion of a registered key", c.mustRegister(s, c.key("later"), "v"), c.key("later"), "v")

	plain := c.mustCreate(observer, reg.Key, "plain")
	if err := s.Close(c.ctx); err != nil {
		c.t.Fatalf("Session.Close: %v", err)
	}
	c.eventually(c.expiry(), "the session's keys deleted after Session.Close", func() error {
		for _, k := range []string{kept.Key, c.key("later")} {
			if got, err := observer.Get(c.ctx, k); !errors.Is(err, core.ErrNotFound) {
				return fmt.Errorf("Get(%q) = %s, %v; want ErrNotFound", k, fmtKV(got), err)
			}
		}
		return nil
	})
	c.sameKV(fmt.Sprintf("Get(%q), created again after its registered record was deleted, once the session ended", plain.Key),
		c.mustGet(observer, plain.Key), plain)
}

// checkDeleteRacesCAS: a compare-and-swap and a delete at the same version,
// from two clients at once: exactly one wins, and the other fails as if
// it came second.
func checkDeleteRacesCAS(c *check) {
	const rounds = 8
	st, d := c.deleter()
	writer := c.client()
	wins := map[string]int{}
	for i := range rounds {
		key := c.key(fmt.Sprintf("k%d", i))
		kv := c.mustCreate(st, key, "v1")
		var (
			wg             sync.WaitGroup
			start          = make(chan struct{})
			casKV          core.KV
			casErr, delErr error
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			casKV, casErr = writer.CompareAndSwap(c.ctx, key, []byte("v2"), kv.Version)
		}()
		go func() {
			defer wg.Done()
			<-start
			delErr = d.DeleteVersion(c.ctx, key, kv.Version)
		}()
		close(start)
		wg.Wait()
		switch {
		case casErr == nil && delErr == nil:
			c.t.Fatalf("round %d: both CompareAndSwap and DeleteVersion of %q at version %d succeeded", i, key, kv.Version)
		case casErr == nil:
			wins["cas"]++
			if !errors.Is(delErr, core.ErrConflict) {
				c.t.Errorf("round %d: DeleteVersion(%q) after a CAS won: err = %v, want ErrConflict", i, key, delErr)
			}
			c.sameKV(fmt.Sprintf("round %d: Get(%q) after the CAS won", i, key), c.mustGet(st, key), casKV)
		case delErr == nil:
			wins["delete"]++
			if !errors.Is(casErr, core.ErrNotFound) {
				c.t.Errorf("round %d: CompareAndSwap(%q) after a delete won: err = %v, want ErrNotFound", i, key, casErr)
			}
			c.wantMissing(st, key, fmt.Sprintf("in round %d, after the delete won", i))
		default:
			c.t.Fatalf("round %d: neither won: CompareAndSwap(%q): %v; DeleteVersion: %v", i, key, casErr, delErr)
		}
	}
	c.t.Logf("winners over %d rounds: %v", rounds, wins)
}
