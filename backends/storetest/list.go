package storetest

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/concordha/concord/core"
)

var listChecks = []namedCheck{
	{"ListSorted", checkListSorted},
	{"ListOnlyUnderPrefix", checkListOnlyUnderPrefix},
	{"ListRevision", checkListRevision},
	{"ListEmptyPrefix", checkListEmptyPrefix},
	{"ListRevisionGrowsOnDeletion", checkListRevisionGrowsOnDeletion},
}

func checkListSorted(c *check) {
	st, other := c.client(), c.client()
	names := []string{"m", "a", "z", "b/1", "b/0", "aa", "a/b", "0"}
	rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	want := map[string]core.KV{}
	for _, n := range names {
		key := c.key("dir/", n)
		want[key] = c.mustCreate(st, key, "value of "+n)
	}
	prefix := c.key("dir/")
	snap := c.mustList(other, prefix)
	if len(snap.KVs) != len(want) {
		c.t.Fatalf("List(%q) = %s, want %d keys", prefix, fmtKeys(snap.KVs), len(want))
	}
	if !slices.IsSortedFunc(snap.KVs, func(a, b core.KV) int {
		switch {
		case a.Key < b.Key:
			return -1
		case a.Key > b.Key:
			return 1
		}
		return 0
	}) {
		c.t.Errorf("List(%q) = %s, want it sorted by key", prefix, fmtKeys(snap.KVs))
	}
	for _, kv := range snap.KVs {
		w, ok := want[kv.Key]
		if !ok {
			c.t.Errorf("List(%q) holds %q, which was never written", prefix, kv.Key)
			continue
		}
		c.sameKV(fmt.Sprintf("List(%q) entry", prefix), kv, w)
	}
}

func checkListOnlyUnderPrefix(c *check) {
	st := c.client()
	inside := []string{c.key("a/x"), c.key("a/y"), c.key("a/z/deep")}
	outside := []string{c.key("ab/x"), c.key("a"), c.key("b/x"), c.key("Z")}
	for _, k := range append(slices.Clone(inside), outside...) {
		c.mustCreate(st, k, "v")
	}
	prefix := c.key("a/")
	snap := c.mustList(st, prefix)
	var got []string
	for _, kv := range snap.KVs {
		got = append(got, kv.Key)
	}
	if !slices.Equal(got, inside) {
		c.t.Fatalf("List(%q) = %q, want exactly %q (not the siblings %q)", prefix, got, inside, outside)
	}
}

func checkListRevision(c *check) {
	st, other := c.client(), c.client()
	prefix := c.key("p/")
	a := c.mustCreate(st, c.key("p/a"), "1")
	b := c.mustCreate(st, c.key("p/b"), "1")
	a = c.mustCAS(st, a.Key, "2", a.Version)
	first := c.mustList(other, prefix)
	if m := maxRevision(first.KVs); first.Revision < m {
		c.t.Errorf("List(%q): Revision %d, below the largest KV Revision %d", prefix, first.Revision, m)
	}
	if first.Revision < max(a.Revision, b.Revision) {
		c.t.Errorf("List(%q): Revision %d, want >= %d, the last write under the prefix", prefix, first.Revision, a.Revision)
	}
	// Writes elsewhere in the store do not change this prefix.
	c.mustCreate(st, c.key("q/other"), "x")
	c.mustCreate(st, c.key("p"), "a sibling, not under p/")
	again := c.mustList(st, prefix)
	if again.Revision > first.Revision {
		c.t.Errorf("List(%q) of an unchanged prefix: Revision %d, then %d; want no greater", prefix, first.Revision, again.Revision)
	}
	if !sameContent(again.KVs, first.KVs) {
		c.t.Errorf("List(%q) of an unchanged prefix: %s, then %s", prefix, fmtKeys(first.KVs), fmtKeys(again.KVs))
	}
	// A change under the prefix gives a strictly greater revision.
	b2 := c.mustCAS(st, b.Key, "2", b.Version)
	after := c.mustList(other, prefix)
	if after.Revision <= again.Revision || after.Revision < b2.Revision {
		c.t.Errorf("List(%q) after CAS of %q (Revision %d): Revision %d, want > %d and >= %d",
			prefix, b.Key, b2.Revision, after.Revision, again.Revision, b2.Revision)
	}
}

func checkListEmptyPrefix(c *check) {
	st := c.client()
	c.mustCreate(st, c.key("full/x"), "v")
	for _, prefix := range []string{c.key("empty/"), c.key("never-written/"), c.key("full/x/")} {
		snap, err := st.List(c.ctx, prefix)
		if err != nil {
			c.t.Fatalf("List(%q) of a prefix with no keys: %v, want an empty snapshot and no error", prefix, err)
		}
		if snap.Err != nil {
			c.t.Errorf("List(%q): Snapshot.Err = %v, want nil", prefix, snap.Err)
		}
		if len(snap.KVs) != 0 {
			c.t.Errorf("List(%q) of a prefix with no keys = %s, want empty", prefix, fmtKeys(snap.KVs))
		}
	}
}

func checkListRevisionGrowsOnDeletion(c *check) {
	holder, observer := c.client(), c.client()
	prefix := c.key("p/")
	c.mustCreate(holder, c.key("p/stays"), "v")
	s := c.session(holder)
	reg := c.mustRegister(s, c.key("p/goes"), "v")
	before := c.mustList(observer, prefix)
	if _, ok := findKey(before.KVs, reg.Key); !ok {
		c.t.Fatalf("List(%q) = %s, want it to hold the registered %q", prefix, fmtKeys(before.KVs), reg.Key)
	}
	if err := s.Close(c.ctx); err != nil {
		c.t.Fatalf("Session.Close: %v", err)
	}
	c.eventually(c.soon(), fmt.Sprintf("%q deleted after its session closed", reg.Key), func() error {
		snap := c.mustList(observer, prefix)
		if _, ok := findKey(snap.KVs, reg.Key); ok {
			return fmt.Errorf("List(%q) = %s", prefix, fmtKeys(snap.KVs))
		}
		if c.f.ExactListRevision && snap.Revision <= before.Revision {
			return fmt.Errorf("List(%q) without %q: Revision %d, want > %d (a deletion is a change)",
				prefix, reg.Key, snap.Revision, before.Revision)
		}
		for _, kv := range snap.KVs {
			if snap.Revision < kv.Revision {
				return fmt.Errorf("List(%q): Revision %d is below key %q's revision %d", prefix, snap.Revision, kv.Key, kv.Revision)
			}
		}
		return nil
	})
}
