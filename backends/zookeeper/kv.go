package zookeeper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/go-zookeeper/zk"

	"github.com/concordha/concord/core"
)

// A znode holds a key when its data is not null. The folders the Store
// creates above keys on demand are persistent znodes with null data
// (which ZooKeeper keeps apart from an empty value, on disk too), so that
// "a" can be a key and the folder of "a/b" at once. Keys are created
// by a multi of a create with null data and a set of the value: in one
// step, a key's znode version is at least 1, while a folder's stays 0.
// Version is then the znode version itself, and no compare-and-swap can
// ever match a folder.

// outcome marks an error that already says what a call's result is (a
// core error with detail), as opposed to one of go-zookeeper's that
// convertError must still interpret.
type outcome struct{ error }

func (o outcome) Unwrap() error { return o.error }

// result returns err as the caller of a Store method gets it.
func (s *Store) result(ctx context.Context, op, key string, err error) error {
	var o outcome
	if errors.As(err, &o) && ctx.Err() == nil {
		return o.error
	}
	return s.convertError(ctx, op, key, err)
}

func fail(format string, args ...any) error { return outcome{fmt.Errorf(format, args...)} }

// kvOf is the record key holds, from the znode's stat. Version is the
// znode's version, Revision its Mzxid: the zxid of the write that made
// this value, store-wide and never reused.
func kvOf(key string, value []byte, st *zk.Stat) core.KV {
	return core.KV{Key: key, Value: value, Version: int64(st.Version), Revision: st.Mzxid}
}

// Get implements core.Store.
func (s *Store) Get(ctx context.Context, key string) (core.KV, error) {
	p, err := znodePath(opGet, key)
	if err != nil {
		return core.KV{}, err
	}
	if err := s.usable(ctx, opGet); err != nil {
		return core.KV{}, err
	}
	kv, err := do(s, ctx, func() (core.KV, error) {
		data, st, err := s.conn.Get(p)
		switch {
		case errors.Is(err, zk.ErrNoNode):
			return core.KV{}, fail("zookeeper: get %q: %w", key, core.ErrNotFound)
		case err != nil:
			return core.KV{}, err
		case data == nil:
			return core.KV{}, fail("zookeeper: get %q: only a folder of other keys: %w", key, core.ErrNotFound)
		}
		return kvOf(key, data, st), nil
	})
	if err != nil {
		return core.KV{}, s.result(ctx, opGet, key, err)
	}
	return kv, nil
}

// Create implements core.Store: a multi that creates the znode and sets
// its value, after creating the folders above it if they are missing.
// A folder that is already there becomes the key by a set conditional
// on its version 0.
func (s *Store) Create(ctx context.Context, key string, value []byte) (core.KV, error) {
	return s.create(ctx, s.conn, opCreate, key, value, 0)
}

// create writes key through conn if it does not exist; flags are
// zk.FlagEphemeral for a key bound to conn's session.
func (s *Store) create(ctx context.Context, conn *zk.Conn, op, key string, value []byte, flags int32) (core.KV, error) {
	p, err := znodePath(op, key)
	if err != nil {
		return core.KV{}, err
	}
	if err := s.usable(ctx, op); err != nil {
		return core.KV{}, err
	}
	// Never null, which would make a folder; and the caller's slice is
	// theirs again as soon as the call returns, even if it is still sent.
	value = append([]byte{}, value...)
	kv, err := do(s, ctx, func() (core.KV, error) { return s.createIn(conn, op, p, key, value, flags) })
	if err != nil {
		return core.KV{}, s.result(ctx, op, key, err)
	}
	return kv, nil
}

func (s *Store) createIn(conn *zk.Conn, op, p, key string, value []byte, flags int32) (core.KV, error) {
	for attempt := 0; ; attempt++ {
		res, err := conn.Multi(
			&zk.CreateRequest{Path: p, Acl: s.acl, Flags: flags},
			&zk.SetDataRequest{Path: p, Data: value, Version: 0},
		)
		switch {
		case err == nil:
			if len(res) != 2 || res[1].Stat == nil {
				return core.KV{}, fmt.Errorf("malformed multi response %+v", res)
			}
			return kvOf(key, bytes.Clone(value), res[1].Stat), nil
		case errors.Is(err, zk.ErrNoNode) && attempt < 3:
			if err := s.makeFolders(conn, op, key, p); err != nil {
				return core.KV{}, err
			}
		case errors.Is(err, zk.ErrNodeExists):
			return s.claimFolder(conn, op, p, key, value, flags)
		case errors.Is(err, zk.ErrNoChildrenForEphemerals):
			return core.KV{}, fail("zookeeper: %s %q: a key above it is bound to a session, and ZooKeeper's ephemeral znodes cannot have children: %w", op, key, core.ErrInvalidArgument)
		default:
			return core.KV{}, err
		}
	}
}

// makeFolders creates the missing folders above p, from the top.
func (s *Store) makeFolders(conn *zk.Conn, op, key, p string) error {
	for _, dir := range ancestors(p) {
		_, err := conn.Create(dir, nil, 0, s.acl)
		switch {
		case err == nil, errors.Is(err, zk.ErrNodeExists):
		case errors.Is(err, zk.ErrNoChildrenForEphemerals):
			return fail("zookeeper: %s %q: key %q above it is bound to a session, and ZooKeeper's ephemeral znodes cannot have children: %w", op, key, dir, core.ErrInvalidArgument)
		default:
			return err
		}
	}
	return nil
}

// claimFolder handles a create whose znode exists: it is the key if it
// holds a value; if it is a folder, a set from its version 0 makes it the
// key, unless another create got there first.
func (s *Store) claimFolder(conn *zk.Conn, op, p, key string, value []byte, flags int32) (core.KV, error) {
	exists := fail("zookeeper: %s %q: %w", op, key, core.ErrExists)
	data, st, err := conn.Get(p)
	switch {
	case errors.Is(err, zk.ErrNoNode):
		return core.KV{}, exists // it existed when the create failed
	case err != nil:
		return core.KV{}, err
	case data != nil:
		return core.KV{}, exists
	case flags&zk.FlagEphemeral != 0:
		return core.KV{}, fail("zookeeper: %s %q: other keys are below it, and ZooKeeper cannot bind a znode with children to a session: %w", op, key, core.ErrInvalidArgument)
	}
	st, err = conn.Set(p, value, st.Version)
	switch {
	case errors.Is(err, zk.ErrBadVersion), errors.Is(err, zk.ErrNoNode):
		return core.KV{}, exists
	case err != nil:
		return core.KV{}, err
	}
	return kvOf(key, bytes.Clone(value), st), nil
}

// CompareAndSwap implements core.Store: a set conditional on the znode
// version. When it fails on the version, a read tells a folder (the key
// does not exist) from a key with another version.
func (s *Store) CompareAndSwap(ctx context.Context, key string, value []byte, version int64) (core.KV, error) {
	p, err := znodePath(opCAS, key)
	if err != nil {
		return core.KV{}, err
	}
	if err := s.usable(ctx, opCAS); err != nil {
		return core.KV{}, err
	}
	value = append([]byte{}, value...)
	kv, err := do(s, ctx, func() (core.KV, error) {
		if version >= 1 && version <= math.MaxInt32 {
			st, err := s.conn.Set(p, value, int32(version))
			switch {
			case err == nil:
				return kvOf(key, bytes.Clone(value), st), nil
			case errors.Is(err, zk.ErrNoNode):
				return core.KV{}, fail("zookeeper: compare-and-swap %q: %w", key, core.ErrNotFound)
			case !errors.Is(err, zk.ErrBadVersion):
				return core.KV{}, err
			}
		}
		return core.KV{}, s.versionMissed(opCAS, p, key, version)
	})
	if err != nil {
		return core.KV{}, s.result(ctx, opCAS, key, err)
	}
	return kv, nil
}

// versionMissed returns the error of op on key (znode p) conditional on
// a version that the znode did not have: no key holds that version now
// (no key ever holds one out of range), but is there a key at all? A
// folder is not one.
func (s *Store) versionMissed(op, p, key string, version int64) error {
	data, _, err := s.conn.Get(p)
	switch {
	case errors.Is(err, zk.ErrNoNode):
		return fail("zookeeper: %s %q: %w", op, key, core.ErrNotFound)
	case err != nil:
		return err
	case data == nil:
		return fail("zookeeper: %s %q: only a folder of other keys: %w", op, key, core.ErrNotFound)
	}
	return fail("zookeeper: %s %q at version %d: %w", op, key, version, core.ErrConflict)
}

// DeleteVersion implements core.Deleter: a delete conditional on the
// znode version, which no folder can match (see above); when it fails on
// the version, a read tells a folder or nothing (ErrNotFound) from a key
// with another version (ErrConflict), as for CompareAndSwap. Any client
// may delete a key registered to a session, which lives on. ZooKeeper
// deletes no znode with children, so a key with keys below it is refused
// with core.ErrInvalidArgument. The folders above the key stay.
func (s *Store) DeleteVersion(ctx context.Context, key string, version int64) error {
	p, err := znodePath(opDelete, key)
	if err != nil {
		return err
	}
	if err := s.usable(ctx, opDelete); err != nil {
		return err
	}
	_, err = do(s, ctx, func() (struct{}, error) {
		if version >= 1 && version <= math.MaxInt32 {
			err := s.conn.Delete(p, int32(version))
			switch {
			case err == nil:
				return struct{}{}, nil
			case errors.Is(err, zk.ErrNoNode):
				return struct{}{}, fail("zookeeper: delete %q: %w", key, core.ErrNotFound)
			case errors.Is(err, zk.ErrNotEmpty):
				return struct{}{}, fail("zookeeper: delete %q: other keys are below it, and ZooKeeper deletes no znode with children: delete them first: %w", key, core.ErrInvalidArgument)
			case !errors.Is(err, zk.ErrBadVersion):
				return struct{}{}, err
			}
		}
		return struct{}{}, s.versionMissed(opDelete, p, key, version)
	})
	if err != nil {
		return s.result(ctx, opDelete, key, err)
	}
	return nil
}
