package etcd

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordha/concord/core"
)

// A Txn is one etcd transaction with no conditions of its own, whose
// success branch holds, in the order of ops, a plain range for each read
// and a nested transaction for each write (see writeParts). etcd decides
// the branch of every nested transaction from the state before the
// outer one (compareToPath in server/etcdserver/txn evaluates the whole
// tree against one read view before anything is applied), so each op's
// condition and guards see the state before the Txn, and each op
// succeeds or fails alone. The ranges do run after earlier puts of the
// same Txn, but the rules of core.Txner keep them off every key the Txn
// writes: no read of a written key, no guard's own range (guards are
// only compares), and a failed write ranges only its own key, which no
// other op writes.
//
// etcd checks --max-txn-ops at every level of the tree, charging a
// nested transaction against what the outer one leaves: an outer
// transaction of n ops leaves max-n for the conditions of each nested
// one. A write's nested transaction has one condition plus one per
// guard, so MaxTxnOps keeps txnReserve ops of the server's limit for
// them.
const (
	// maxGuards is how many guards an op of a full-size Txn may have;
	// smaller batches allow more.
	maxGuards = 7
	// txnReserve is the part of the server's limit kept for the
	// conditions of one nested transaction.
	txnReserve = 1 + maxGuards
)

// MaxTxnOps implements core.Txner: the server's limit (Config.MaxTxnOps)
// less txnReserve, so that a batch of that many ops, each with up to 7
// guards, fits.
func (s *Store) MaxTxnOps() int { return s.cfg.MaxTxnOps - txnReserve }

// Txn implements core.Txner: all ops in one etcd transaction, which etcd
// applies atomically at one revision. Every write of a Txn therefore
// gets the same Revision (and Version). Guards on reads are ignored.
// Besides the rules of core.Txner, a batch fails with
// core.ErrInvalidArgument if an op has so many guards that its
// conditions and the batch exceed the server's limit together (see
// txnReserve).
func (s *Store) Txn(ctx context.Context, ops []core.Op) ([]core.OpResult, error) {
	if err := s.validateTxn(ops); err != nil {
		return nil, err
	}
	if err := s.usable(ctx, opTxn); err != nil {
		return nil, err
	}
	if len(ops) == 0 {
		return []core.OpResult{}, nil
	}
	then := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		switch o.Kind {
		case core.OpGet:
			then[i] = clientv3.OpGet(o.Key)
		case core.OpList:
			then[i] = clientv3.OpGet(o.Key, clientv3.WithPrefix())
		default:
			cmps, put, check := writeParts(o, clientv3.NoLease)
			then[i] = clientv3.OpTxn(cmps, put, check)
		}
	}
	resp, err := s.cli.Txn(ctx).Then(then...).Commit()
	if err != nil {
		return nil, s.convertError(ctx, opTxn, fmt.Sprintf("%d ops, first %q", len(ops), ops[0].Key), err)
	}
	if len(resp.Responses) != len(ops) {
		return nil, fmt.Errorf("etcd: txn of %d ops: %d responses", len(ops), len(resp.Responses))
	}
	results := make([]core.OpResult, len(ops))
	for i, o := range ops {
		r := resp.Responses[i]
		switch o.Kind {
		case core.OpGet:
			rr := r.GetResponseRange()
			if rr == nil || len(rr.Kvs) == 0 {
				results[i].Err = fmt.Errorf("etcd: txn get %q: %w", o.Key, core.ErrNotFound)
				continue
			}
			results[i].KV = toKV(rr.Kvs[0])
		case core.OpList:
			if rr := r.GetResponseRange(); rr != nil {
				results[i].List = snapshotOf(rr.Kvs)
			} else {
				results[i].List = core.Snapshot{KVs: []core.KV{}}
			}
		default:
			tr := r.GetResponseTxn()
			if tr == nil {
				results[i].Err = fmt.Errorf("etcd: txn op %d on %q: no response", i, o.Key)
				continue
			}
			results[i].KV, results[i].Err = writeResult(o, tr.Succeeded, resp.Header.Revision, tr.Responses)
		}
	}
	return results, nil
}

// validateTxn checks the rules that make a batch run or fail as a whole:
// core.CheckTxn's, the op limit, and etcd's count of nested conditions.
func (s *Store) validateTxn(ops []core.Op) error {
	if limit := s.MaxTxnOps(); len(ops) > limit {
		return fmt.Errorf("etcd: txn of %d ops, more than MaxTxnOps %d: %w", len(ops), limit, core.ErrInvalidArgument)
	}
	if err := core.CheckTxn(ops); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	for i, o := range ops {
		if o.Kind != core.OpCreate && o.Kind != core.OpCAS {
			continue
		}
		if need := len(ops) + 1 + len(o.Guards); need > s.cfg.MaxTxnOps {
			return fmt.Errorf("etcd: txn op %d on %q has %d guards: with %d ops that makes %d of the server's %d (MaxTxnOps); use fewer guards or smaller batches: %w",
				i, o.Key, len(o.Guards), len(ops), need, s.cfg.MaxTxnOps, core.ErrInvalidArgument)
		}
	}
	return nil
}
