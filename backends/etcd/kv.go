package etcd

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordha/concord/core"
)

// Operation names, as errors show them.
const (
	opGet      = "get"
	opList     = "list"
	opCreate   = "create"
	opCAS      = "compare-and-swap"
	opDelete   = "delete"
	opWatch    = "watch"
	opTxn      = "txn"
	opSession  = "new session"
	opRegister = "register"
	opExpire   = "expire session"
)

func emptyKey(op string) error {
	return fmt.Errorf("etcd: %s: empty key: %w", op, core.ErrInvalidArgument)
}

// toKV turns etcd's record into concord's. Both Version and Revision are
// the ModRevision: etcd's own per-key Version starts again at 1 when a
// key is deleted and created again, while a ModRevision is never reused.
func toKV(kv *mvccpb.KeyValue) core.KV {
	return core.KV{Key: string(kv.Key), Value: kv.Value, Version: kv.ModRevision, Revision: kv.ModRevision}
}

// snapshotOf builds the snapshot of a range read. etcd returns a range
// sorted by key. Its revision is the largest ModRevision among the keys:
// a lower bound of the latest change under the prefix, since a deletion
// leaves no trace in a range; the response header's revision is not used
// because it moves with writes anywhere in the store.
func snapshotOf(kvs []*mvccpb.KeyValue) core.Snapshot {
	snap := core.Snapshot{KVs: make([]core.KV, 0, len(kvs))}
	for _, kv := range kvs {
		snap.KVs = append(snap.KVs, toKV(kv))
		snap.Revision = max(snap.Revision, kv.ModRevision)
	}
	if !slices.IsSortedFunc(snap.KVs, byKey) {
		slices.SortFunc(snap.KVs, byKey)
	}
	return snap
}

func byKey(a, b core.KV) int { return strings.Compare(a.Key, b.Key) }

// Get implements core.Store.
func (s *Store) Get(ctx context.Context, key string) (core.KV, error) {
	if key == "" {
		return core.KV{}, emptyKey(opGet)
	}
	if err := s.usable(ctx, opGet); err != nil {
		return core.KV{}, err
	}
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return core.KV{}, s.convertError(ctx, opGet, key, err)
	}
	if len(resp.Kvs) == 0 {
		return core.KV{}, fmt.Errorf("etcd: get %q: %w", key, core.ErrNotFound)
	}
	return toKV(resp.Kvs[0]), nil
}

// List implements core.Store. Its revision is the largest ModRevision
// among the keys, a lower bound after a deletion (see snapshotOf). The
// empty prefix lists every key.
func (s *Store) List(ctx context.Context, prefix string) (core.Snapshot, error) {
	if err := s.usable(ctx, opList); err != nil {
		return core.Snapshot{}, err
	}
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return core.Snapshot{}, s.convertError(ctx, opList, prefix, err)
	}
	return snapshotOf(resp.Kvs), nil
}

// Create implements core.Store: a Txn that puts key if its CreateRevision
// is 0, that is if it does not exist.
func (s *Store) Create(ctx context.Context, key string, value []byte) (core.KV, error) {
	return s.write(ctx, opCreate, core.Op{Kind: core.OpCreate, Key: key, Value: value}, clientv3.NoLease)
}

// CompareAndSwap implements core.Store: a Txn that puts key if its
// ModRevision is version, and otherwise reads whether it exists, so that
// ErrNotFound and ErrConflict are told apart in one round trip.
func (s *Store) CompareAndSwap(ctx context.Context, key string, value []byte, version int64) (core.KV, error) {
	return s.write(ctx, opCAS, core.Op{Kind: core.OpCAS, Key: key, Value: value, Version: version}, clientv3.NoLease)
}

// DeleteVersion implements core.Deleter: a Txn that deletes key if its
// ModRevision is version, and otherwise counts the key, so that
// ErrNotFound and ErrConflict are told apart in one round trip, as for
// CompareAndSwap. etcd detaches a deleted key from its lease, so a key
// created again under that name does not go with the session.
func (s *Store) DeleteVersion(ctx context.Context, key string, version int64) error {
	if key == "" {
		return emptyKey(opDelete)
	}
	if err := s.usable(ctx, opDelete); err != nil {
		return err
	}
	resp, err := s.cli.Txn(ctx).
		If(modRevisionIs(key, version)).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return s.convertError(ctx, opDelete, key, err)
	}
	if resp.Succeeded {
		return nil
	}
	if !counted(resp.Responses) {
		return fmt.Errorf("etcd: delete %q: %w", key, core.ErrNotFound)
	}
	return fmt.Errorf("etcd: delete %q at version %d: %w", key, version, core.ErrConflict)
}

// counted reads the count of the else branch of a conditional write: does
// its key exist?
func counted(responses []*pb.ResponseOp) bool {
	return len(responses) == 1 && responses[0].GetResponseRange() != nil && responses[0].GetResponseRange().Count > 0
}

// write runs one write op as a Txn of its own, bound to lease unless it
// is NoLease.
func (s *Store) write(ctx context.Context, op string, o core.Op, lease clientv3.LeaseID) (core.KV, error) {
	if o.Key == "" {
		return core.KV{}, emptyKey(op)
	}
	if err := s.usable(ctx, op); err != nil {
		return core.KV{}, err
	}
	cmps, then, els := writeParts(o, lease)
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return core.KV{}, s.convertError(ctx, op, o.Key, err)
	}
	return writeResult(o, resp.Succeeded, resp.Header.Revision, resp.Responses)
}

// writeParts builds the etcd transaction of one write op: its own
// condition and its guards as compares on ModRevision, the put when they
// hold, and otherwise a count of the key, which tells which condition
// failed (see writeResult). A compare-and-swap keeps the key's lease, so
// a registered key stays bound to its session.
func writeParts(o core.Op, lease clientv3.LeaseID) (cmps []clientv3.Cmp, then, els []clientv3.Op) {
	cmps = make([]clientv3.Cmp, 0, 1+len(o.Guards))
	switch o.Kind {
	case core.OpCreate:
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(o.Key), "=", 0))
	default:
		cmps = append(cmps, modRevisionIs(o.Key, o.Version))
	}
	for _, g := range o.Guards {
		cmps = append(cmps, modRevisionIs(g.Key, g.Revision))
	}
	var opts []clientv3.OpOption
	switch {
	case lease != clientv3.NoLease:
		opts = append(opts, clientv3.WithLease(lease))
	case o.Kind == core.OpCAS:
		// A put without a lease would detach a registered key from its
		// session, and the key would outlive it. The put runs only if
		// the key exists, which IgnoreLease requires.
		opts = append(opts, clientv3.WithIgnoreLease())
	}
	then = []clientv3.Op{clientv3.OpPut(o.Key, string(o.Value), opts...)}
	els = []clientv3.Op{clientv3.OpGet(o.Key, clientv3.WithCountOnly())}
	return cmps, then, els
}

// modRevisionIs holds if key exists with ModRevision v. A missing key
// compares as ModRevision 0, so a version that no existing key can have
// gets a compare that never holds.
func modRevisionIs(key string, v int64) clientv3.Cmp {
	if v <= 0 {
		return clientv3.Compare(clientv3.ModRevision(key), "<", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(key), "=", v)
}

// writeResult reads the outcome of a write op's transaction. rev is the
// revision of the Txn, which is the ModRevision of what it put. When the
// conditions failed, the count of the key says which: the op's own
// condition (ErrExists for a create of an existing key, ErrNotFound for a
// compare-and-swap of a missing one), or else a version or a guard
// (ErrConflict).
func writeResult(o core.Op, succeeded bool, rev int64, responses []*pb.ResponseOp) (core.KV, error) {
	if succeeded {
		return core.KV{Key: o.Key, Value: bytes.Clone(o.Value), Version: rev, Revision: rev}, nil
	}
	exists := counted(responses)
	switch {
	case o.Kind == core.OpCreate && exists:
		return core.KV{}, fmt.Errorf("etcd: create %q: %w", o.Key, core.ErrExists)
	case o.Kind == core.OpCreate:
		return core.KV{}, fmt.Errorf("etcd: create %q: a guard does not hold: %w", o.Key, core.ErrConflict)
	case !exists:
		return core.KV{}, fmt.Errorf("etcd: compare-and-swap %q: %w", o.Key, core.ErrNotFound)
	case len(o.Guards) > 0:
		return core.KV{}, fmt.Errorf("etcd: compare-and-swap %q at version %d: the version or a guard does not hold: %w", o.Key, o.Version, core.ErrConflict)
	default:
		return core.KV{}, fmt.Errorf("etcd: compare-and-swap %q at version %d: %w", o.Key, o.Version, core.ErrConflict)
	}
}
