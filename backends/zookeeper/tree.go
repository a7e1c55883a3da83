package zookeeper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/go-zookeeper/zk"

	"github.com/concordha/concord/core"
)

// ZooKeeper has no read of many znodes at one zxid. A tree reads the
// znodes under a prefix one by one and then checks, by a second round of
// Exists calls sent after every read has been answered, that none of
// them changed: the Czxid, Mzxid and Pzxid of a znode only ever grow,
// and a child created or deleted moves its parent's Pzxid. When every
// stat is as read, the whole tree was as read at the moment between the
// last read's answer and the first check: one state of the store. What
// changed is read again, and checked again, up to maxRounds times.

// maxRounds bounds the read-and-check rounds of one consistent read.
const maxRounds = 20

// maxInFlight bounds the requests a tree has outstanding at once.
const maxInFlight = 32

// errUnsettled: the prefix changed between every read and its check.
var errUnsettled = fmt.Errorf("the prefix changed during each of %d consistent reads: %w", maxRounds, core.ErrUnavailable)

// entry is what the last read of one znode found.
type entry struct {
	stat     zk.Stat  // with its data (for the base: with its children)
	cstat    zk.Stat  // with its children, when listed
	listed   bool     // children holds the children as of cstat
	data     []byte   // nil for a folder
	children []string // names of the children under the prefix, when listed
}

// tree is the part of the znode tree under one prefix, as last read.
type tree struct {
	f     folder
	conn  *zk.Conn
	arms  *armed // set watches as it reads; nil for a plain List
	base  *entry // nil while the base znode does not exist
	nodes map[string]*entry
}

func newTree(f folder, conn *zk.Conn, arms *armed) *tree {
	return &tree{f: f, conn: conn, arms: arms, nodes: make(map[string]*entry)}
}

// sync reads the tree until a check finds it unchanged, starting with
// the znodes in dirty (all of it for a new tree: its base). With watches,
// a znode whose watch is not set counts as changed, so that sync also
// sets every watch the tree needs.
func (t *tree) sync(ctx context.Context, dirty []string) error {
	for round := 1; ; round++ {
		if err := t.fetch(ctx, dirty); err != nil {
			return err
		}
		var err error
		if dirty, err = t.check(ctx); err != nil {
			return err
		}
		if len(dirty) == 0 {
			return nil
		}
		if round == maxRounds {
			return errUnsettled
		}
	}
}

// read is what reading one znode returned.
type read struct {
	gone bool
	e    *entry
	err  error
}

// fetch reads the znodes in paths, then, level by level, the children
// they have that the tree does not hold yet.
func (t *tree) fetch(ctx context.Context, paths []string) error {
	for len(paths) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		reads := make([]read, len(paths))
		parallel(len(paths), func(i int) { reads[i] = t.read(paths[i]) })
		var next []string
		for i, r := range reads {
			if r.err != nil {
				return r.err
			}
			next = append(next, t.apply(paths[i], r)...)
		}
		paths = next
	}
	return nil
}

// read reads one znode: the base's children, or another znode's data and
// (if it has any, or if watching) its children.
func (t *tree) read(p string) read {
	if p == t.f.base {
		names, st, err := t.children(p)
		if errors.Is(err, zk.ErrNoNode) {
			// Watch for its creation.
			if err := t.exists(p); err != nil {
				return read{err: err}
			}
			return read{gone: true}
		}
		if err != nil {
			return read{err: err}
		}
		e := &entry{stat: *st, cstat: *st, listed: true}
		for _, n := range names {
			if t.f.accepts(n) {
				e.children = append(e.children, n)
			}
		}
		return read{e: e}
	}
	data, st, err := t.get(p)
	if errors.Is(err, zk.ErrNoNode) {
		return read{gone: true}
	}
	if err != nil {
		return read{err: err}
	}
	e := &entry{stat: *st, data: data}
	if st.NumChildren > 0 || t.needsChildWatch(st) {
		names, cst, err := t.children(p)
		if errors.Is(err, zk.ErrNoNode) {
			return read{gone: true}
		}
		if err != nil {
			return read{err: err}
		}
		e.cstat, e.listed, e.children = *cst, true, names
	}
	return read{e: e}
}

// needsChildWatch: with watches, every znode but an ephemeral one (which
// cannot have children) needs one on its children.
func (t *tree) needsChildWatch(st *zk.Stat) bool {
	return t.arms != nil && st.EphemeralOwner == 0
}

// apply records the read of p and returns the children to read next: the
// listed ones the tree does not hold yet.
func (t *tree) apply(p string, r read) []string {
	old := t.entry(p)
	if r.gone {
		t.drop(p)
		return nil
	}
	e := r.e
	// Children that are gone take their subtrees with them.
	if old != nil {
		for _, n := range old.children {
			if !slices.Contains(e.children, n) {
				t.drop(t.childOf(p, n))
			}
		}
	}
	if p == t.f.base {
		t.base = e
	} else {
		t.nodes[p] = e
	}
	var next []string
	for _, n := range e.children {
		c := t.childOf(p, n)
		if _, ok := t.nodes[c]; !ok {
			next = append(next, c)
		}
	}
	return next
}

func (t *tree) entry(p string) *entry {
	if p == t.f.base {
		return t.base
	}
	return t.nodes[p]
}

func (t *tree) childOf(p, name string) string {
	if p == "/" {
		return "/" + name
	}
	return p + "/" + name
}

// drop forgets p and everything below it.
func (t *tree) drop(p string) {
	e := t.entry(p)
	if e == nil {
		return
	}
	if p == t.f.base {
		t.base = nil
	} else {
		delete(t.nodes, p)
	}
	for _, n := range e.children {
		t.drop(t.childOf(p, n))
	}
}

// check asks for the stat of every znode the tree holds, and of the
// base, and returns those that changed since they were read (or whose
// watches are not all set).
func (t *tree) check(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	paths := make([]string, 0, len(t.nodes)+1)
	paths = append(paths, t.f.base)
	for p := range t.nodes {
		paths = append(paths, p)
	}
	type stat struct {
		ok  bool
		st  zk.Stat
		err error
	}
	stats := make([]stat, len(paths))
	parallel(len(paths), func(i int) {
		ok, st, err := t.conn.Exists(paths[i])
		if err == nil {
			stats[i] = stat{ok: ok, st: *st}
		} else {
			stats[i] = stat{err: err}
		}
	})
	var dirty []string
	// A fetch cut short by an error may have left listed children
	// unread.
	for _, p := range paths {
		if e := t.entry(p); e != nil {
			for _, n := range e.children {
				if c := t.childOf(p, n); t.nodes[c] == nil {
					dirty = append(dirty, c)
				}
			}
		}
	}
	for i, p := range paths {
		if stats[i].err != nil {
			return nil, stats[i].err
		}
		e := t.entry(p)
		switch {
		case e == nil && !stats[i].ok:
			if t.arms != nil && !t.arms.isArmed(p, kindExist) && !t.arms.isArmed(p, kindData) {
				dirty = append(dirty, p)
			}
		case e == nil || !stats[i].ok,
			stats[i].st != e.stat,
			e.listed && stats[i].st != e.cstat,
			t.arms != nil && !t.watched(p, e):
			dirty = append(dirty, p)
		}
	}
	return dirty, nil
}

// watched tells whether every watch p needs is set.
func (t *tree) watched(p string, e *entry) bool {
	if p == t.f.base {
		return t.arms.isArmed(p, kindChild)
	}
	if !t.arms.isArmed(p, kindData) {
		return false
	}
	return !t.needsChildWatch(&e.stat) || t.arms.isArmed(p, kindChild)
}

// get reads p's data, setting a data watch if watching and none is set.
func (t *tree) get(p string) ([]byte, *zk.Stat, error) {
	if t.arms == nil || !t.arms.begin(p, kindData) {
		return t.conn.Get(p)
	}
	data, st, _, err := t.conn.GetW(p)
	t.arms.end(p, kindData, err == nil)
	return data, st, err
}

// children lists p's children, setting a child watch if watching and
// none is set.
func (t *tree) children(p string) ([]string, *zk.Stat, error) {
	if t.arms == nil || !t.arms.begin(p, kindChild) {
		return t.conn.Children(p)
	}
	names, st, _, err := t.conn.ChildrenW(p)
	t.arms.end(p, kindChild, err == nil)
	return names, st, err
}

// exists sets a watch on the creation of p (which did not exist a moment
// ago), if watching and none is set.
func (t *tree) exists(p string) error {
	if t.arms == nil {
		return nil
	}
	be, bd := t.arms.begin(p, kindExist), t.arms.begin(p, kindData)
	if !be || !bd {
		// One of them is set: the creation is watched, or p exists.
		if be {
			t.arms.end(p, kindExist, false)
		}
		if bd {
			t.arms.end(p, kindData, false)
		}
		return nil
	}
	ok, _, _, err := t.conn.ExistsW(p)
	// ExistsW sets a data watch on a znode that exists, and a creation
	// watch on one that does not.
	t.arms.end(p, kindExist, err == nil && !ok)
	t.arms.end(p, kindData, err == nil && ok)
	return err
}

// snapshot returns the keys the tree holds, sorted, with the revision of
// the latest change under the prefix: the largest Mzxid of a key (its
// creation or last write) and Pzxid of a znode whose children changed
// since it was created (a creation or deletion below it). For a prefix
// that does not end in "/", the base's Pzxid also moves with siblings
// outside the prefix, and is left out: the revision is then a lower
// bound after a deletion.
func (t *tree) snapshot() core.Snapshot {
	snap := core.Snapshot{KVs: make([]core.KV, 0, len(t.nodes))}
	for p, e := range t.nodes {
		if e.data != nil {
			snap.KVs = append(snap.KVs, kvOf(t.f.key(p), bytes.Clone(e.data), &e.stat))
			snap.Revision = max(snap.Revision, e.stat.Mzxid)
		}
		if e.stat.Pzxid != e.stat.Czxid {
			snap.Revision = max(snap.Revision, e.stat.Pzxid)
		}
	}
	if t.base != nil && t.f.match == "" && t.base.stat.Pzxid != t.base.stat.Czxid {
		snap.Revision = max(snap.Revision, t.base.stat.Pzxid)
	}
	slices.SortFunc(snap.KVs, func(a, b core.KV) int { return strings.Compare(a.Key, b.Key) })
	return snap
}

// basePzxid is the zxid of the latest creation or deletion of a child of
// the base, 0 if it does not exist.
func (t *tree) basePzxid() int64 {
	if t.base == nil {
		return 0
	}
	return t.base.stat.Pzxid
}

// parallel calls f(0) ... f(n-1), at most maxInFlight at a time, and
// waits for them.
func parallel(n int, f func(i int)) {
	if n == 1 {
		f(0)
		return
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxInFlight)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(i)
		}()
	}
	wg.Wait()
}

// List implements core.Store: one consistent read of the prefix (see
// tree). Its revision is exact, deletions included, for a prefix ending
// in "/" (or empty); for another prefix, a lower bound after a deletion.
// The empty prefix lists every key, leaving out ZooKeeper's own
// /zookeeper.
func (s *Store) List(ctx context.Context, prefix string) (core.Snapshot, error) {
	f, err := parsePrefix(opList, prefix)
	if err != nil {
		return core.Snapshot{}, err
	}
	if err := s.usable(ctx, opList); err != nil {
		return core.Snapshot{}, err
	}
	snap, err := do(s, ctx, func() (core.Snapshot, error) {
		t := newTree(f, s.conn, nil)
		if err := t.sync(ctx, []string{f.base}); err != nil {
			return core.Snapshot{}, err
		}
		return t.snapshot(), nil
	})
	if err != nil {
		return core.Snapshot{}, s.convertError(ctx, opList, prefix, err)
	}
	return snap, nil
}
