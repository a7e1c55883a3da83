package consul

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

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

// checkKey refuses keys Consul cannot hold as given: the empty key, a key
// with a leading "/", which Consul's HTTP API would read as the key
// without it, and a key whose path is not clean (see checkPrefix).
func checkKey(op, key string) error {
	if key == "" {
		return fmt.Errorf("consul: %s: empty key: %w", op, core.ErrInvalidArgument)
	}
	return checkPrefix(op, key)
}

// checkPrefix is checkKey for a prefix, which may be empty (every key).
// Keys are part of the URL of Consul's KV API, whose HTTP server
// redirects a path with an empty, "." or ".." segment to its cleaned
// form: such a key could be written (a transaction carries it in its
// body) but never read back.
func checkPrefix(op, prefix string) error {
	if strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("consul: %s %q: Consul keys cannot start with \"/\": drop the leading \"/\" (%q): %w",
			op, prefix, strings.TrimLeft(prefix, "/"), core.ErrInvalidArgument)
	}
	full := "/" + prefix
	clean := path.Clean(full)
	if strings.HasSuffix(full, "/") && clean != "/" {
		clean += "/"
	}
	if clean != full {
		return fmt.Errorf("consul: %s %q: Consul's HTTP API cannot address a key with an empty, \".\" or \"..\" path segment: %w",
			op, prefix, core.ErrInvalidArgument)
	}
	return nil
}

// toKV turns Consul's record into concord's. Both Version and Revision
// are the ModifyIndex: the Raft index of the write that produced this
// value, store-wide and never reused.
func toKV(p *api.KVPair) core.KV {
	return core.KV{Key: p.Key, Value: p.Value, Version: int64(p.ModifyIndex), Revision: int64(p.ModifyIndex)}
}

// snapshotOf builds the snapshot of a prefix read whose X-Consul-Index is
// lastIndex (0 when unknown). For a prefix with keys, Consul's index is
// the largest of their ModifyIndex and of the tombstones left under the
// prefix by deletions: the revision of the latest change. For a prefix
// with no keys, it is the latest deletion's if Consul still keeps a
// tombstone there, but the index of the whole KV store if not, which
// moves with writes elsewhere; the snapshot then reports 0, the lower
// bound the contract allows.
func snapshotOf(pairs api.KVPairs, lastIndex uint64) core.Snapshot {
	snap := core.Snapshot{KVs: make([]core.KV, 0, len(pairs))}
	for _, p := range pairs {
		snap.KVs = append(snap.KVs, toKV(p))
		snap.Revision = max(snap.Revision, int64(p.ModifyIndex))
	}
	if len(snap.KVs) > 0 {
		snap.Revision = max(snap.Revision, int64(lastIndex))
	}
	if !slices.IsSortedFunc(snap.KVs, byKey) {
		slices.SortFunc(snap.KVs, byKey)
	}
	return snap
}

func byKey(a, b core.KV) int { return strings.Compare(a.Key, b.Key) }

// Get implements core.Store, with a consistent read.
func (s *Store) Get(ctx context.Context, key string) (core.KV, error) {
	if err := checkKey(opGet, key); err != nil {
		return core.KV{}, err
	}
	cctx, end, err := s.begin(ctx, opGet)
	if err != nil {
		return core.KV{}, err
	}
	defer end()
	pair, err := s.get(cctx, key)
	if err != nil {
		return core.KV{}, s.convertError(ctx, opGet, key, err)
	}
	if pair == nil {
		return core.KV{}, fmt.Errorf("consul: get %q: %w", key, core.ErrNotFound)
	}
	return toKV(pair), nil
}

// get reads key consistently; nil if it does not exist.
func (s *Store) get(ctx context.Context, key string) (*api.KVPair, error) {
	var pair *api.KVPair
	err := s.call(ctx, true, func(c *api.Client) error {
		var err error
		pair, _, err = c.KV().Get(key, query(ctx))
		return err
	})
	return pair, err
}

// List implements core.Store, with a consistent read. The revision is
// Consul's index of the prefix, the latest change under it, deletions
// included, for a prefix with keys, and 0 for one without (see
// snapshotOf). The empty prefix lists every key.
// Errors: core.ErrDenied if Consul's ACLs hid some keys under the prefix.
func (s *Store) List(ctx context.Context, prefix string) (core.Snapshot, error) {
	if err := checkPrefix(opList, prefix); err != nil {
		return core.Snapshot{}, err
	}
	cctx, end, err := s.begin(ctx, opList)
	if err != nil {
		return core.Snapshot{}, err
	}
	defer end()
	pairs, qm, err := s.list(cctx, prefix, query(cctx))
	if err != nil {
		return core.Snapshot{}, s.convertError(ctx, opList, prefix, err)
	}
	return snapshotOf(pairs, qm.LastIndex), nil
}

// list reads the keys under prefix with options q, and refuses an answer
// that Consul's ACLs filtered: it would not be the prefix's content.
func (s *Store) list(ctx context.Context, prefix string, q *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error) {
	var (
		pairs api.KVPairs
		qm    *api.QueryMeta
	)
	err := s.call(ctx, true, func(c *api.Client) error {
		var err error
		pairs, qm, err = c.KV().List(prefix, q)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	if qm.ResultsFilteredByACLs {
		return nil, nil, fmt.Errorf("the ACL token may not read some keys under the prefix: %w", core.ErrDenied)
	}
	return pairs, qm, nil
}

// Create implements core.Store: a transaction of one "cas" with index 0,
// which writes only if the key does not exist.
func (s *Store) Create(ctx context.Context, key string, value []byte) (core.KV, error) {
	if err := checkKey(opCreate, key); err != nil {
		return core.KV{}, err
	}
	cctx, end, err := s.begin(ctx, opCreate)
	if err != nil {
		return core.KV{}, err
	}
	defer end()
	ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: key, Value: value, Index: 0}}}
	resp, failed, err := s.txn(cctx, ops, false)
	switch {
	case err != nil:
		return core.KV{}, s.convertError(ctx, opCreate, key, err)
	case failed:
		// A cas with index 0 fails only when the key exists.
		return core.KV{}, fmt.Errorf("consul: create %q: %w", key, core.ErrExists)
	}
	return written(key, value, resp.Results, 0)
}

// CompareAndSwap implements core.Store: a transaction of "check-index"
// then "set", whose failed check says whether the key is missing or at
// another index. A "set" keeps the key's session, so a registered key
// stays bound to it. A version that no record can have (0 or less) is
// answered by a read, and writes nothing.
func (s *Store) CompareAndSwap(ctx context.Context, key string, value []byte, version int64) (core.KV, error) {
	if err := checkKey(opCAS, key); err != nil {
		return core.KV{}, err
	}
	cctx, end, err := s.begin(ctx, opCAS)
	if err != nil {
		return core.KV{}, err
	}
	defer end()
	if version <= 0 {
		return core.KV{}, s.condFailed(ctx, cctx, opCAS, key, version, state{})
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: uint64(version)}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: value}},
	}
	resp, failed, err := s.txn(cctx, ops, false)
	switch {
	case err != nil:
		return core.KV{}, s.convertError(ctx, opCAS, key, err)
	case failed:
		return core.KV{}, s.condFailed(ctx, cctx, opCAS, key, version, firstCheck(resp.Errors, key))
	}
	return written(key, value, resp.Results, 1)
}

// DeleteVersion implements core.Deleter: a transaction of "check-index"
// then "delete-cas" at the same index. The check is what tells a missing
// key (ErrNotFound) from one at another index (ErrConflict) in the same
// round trip: a lone "delete-cas" of a missing key succeeds. Consul
// deletes a key held by a session as any other, and the session keeps
// its other keys. A version that no record can have (0 or less) is
// answered by a read, and deletes nothing.
func (s *Store) DeleteVersion(ctx context.Context, key string, version int64) error {
	if err := checkKey(opDelete, key); err != nil {
		return err
	}
	cctx, end, err := s.begin(ctx, opDelete)
	if err != nil {
		return err
	}
	defer end()
	if version <= 0 {
		return s.condFailed(ctx, cctx, opDelete, key, version, state{})
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: uint64(version)}},
		{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: uint64(version)}},
	}
	resp, failed, err := s.txn(cctx, ops, false)
	switch {
	case err != nil:
		return s.convertError(ctx, opDelete, key, err)
	case failed:
		return s.condFailed(ctx, cctx, opDelete, key, version, firstCheck(resp.Errors, key))
	}
	return nil
}

// firstCheck is what the failed "check-index" that opens a transaction
// said of key; unknown if it did not fail or said nothing readable.
func firstCheck(errs api.TxnErrors, key string) state {
	for _, e := range errs {
		if e.OpIndex == 0 {
			return parseState(e.What, key)
		}
	}
	return state{}
}

// condFailed returns the error of op (a compare-and-swap or a delete) of
// key at version that did not apply, given what the transaction said of
// the key. If it said nothing that can be read, a consistent read
// decides: op failed, and the key is found missing, or present at
// another version, within the call.
func (s *Store) condFailed(ctx, cctx context.Context, op, key string, version int64, st state) error {
	if !st.known {
		pair, err := s.get(cctx, key)
		if err != nil {
			return s.convertError(ctx, op, key, err)
		}
		st = state{known: true, exists: pair != nil}
		if pair != nil {
			st.index = pair.ModifyIndex
		}
	}
	if !st.exists {
		return fmt.Errorf("consul: %s %q: %w", op, key, core.ErrNotFound)
	}
	return fmt.Errorf("consul: %s %q at version %d (current %d): %w", op, key, version, st.index, core.ErrConflict)
}

// written is the record a transaction wrote to key, from the result at
// index i: Consul returns the written entry without its value.
func written(key string, value []byte, results api.TxnResults, i int) (core.KV, error) {
	if i >= len(results) || results[i].KV == nil || results[i].KV.Key != key {
		return core.KV{}, fmt.Errorf("consul: write %q: unexpected transaction results", key)
	}
	idx := int64(results[i].KV.ModifyIndex)
	return core.KV{Key: key, Value: bytes.Clone(value), Version: idx, Revision: idx}, nil
}

// txn runs ops as one Consul transaction. A transaction that Consul
// rolled back returns failed true, with resp.Errors saying which
// operations failed and why, unless one of them says the client is
// refused: that is an error wrapping core.ErrDenied. A read-only
// transaction is a consistent read.
func (s *Store) txn(ctx context.Context, ops api.TxnOps, readOnly bool) (resp *api.TxnResponse, failed bool, err error) {
	var ok bool
	err = s.call(ctx, readOnly, func(c *api.Client) error {
		q := (&api.QueryOptions{}).WithContext(ctx)
		if readOnly {
			q = query(ctx)
		}
		var err error
		ok, resp, _, err = c.Txn().Txn(ops, q)
		return err
	})
	if err != nil {
		return nil, false, err
	}
	if resp == nil {
		return nil, false, fmt.Errorf("transaction: no response")
	}
	if ok {
		return resp, false, nil
	}
	for _, e := range resp.Errors {
		if isDenied(e.What) {
			return nil, false, fmt.Errorf("transaction operation %d: %s: %w", e.OpIndex, e.What, core.ErrDenied)
		}
	}
	if len(resp.Errors) == 0 {
		return nil, false, fmt.Errorf("transaction rolled back without errors")
	}
	return resp, true, nil
}

// state is what a failed check of a transaction says of its key.
type state struct {
	known  bool   // the text was understood
	exists bool   // the key exists
	index  uint64 // its ModifyIndex, if it exists and the text gave it (0: unknown)
}

// currentIndex matches the end of a failed "check-index": "failed index
// check for key "k", current modify index 7 != 5".
var currentIndex = regexp.MustCompile(`current modify index (\d+) != \d+$`)

// parseState reads the error text of a failed check on key: of
// "check-index" (the key does not exist, or exists at another index), of
// "check-not-exists" (it exists), of "get" (it does not exist), or of a
// "cas" at index 0 (it exists). The key itself, quoted in the text, is cut
// out first so that its own words cannot mislead.
func parseState(what, key string) state {
	msg := strings.ReplaceAll(what, strconv.Quote(key), `""`)
	if m := currentIndex.FindStringSubmatch(msg); m != nil {
		if n, err := strconv.ParseUint(m[1], 10, 64); err == nil {
			return state{known: true, exists: true, index: n}
		}
	}
	switch {
	case strings.Contains(msg, "doesn't exist"):
		return state{known: true}
	case strings.HasSuffix(msg, `key "" exists`), strings.HasSuffix(msg, "index is stale"):
		return state{known: true, exists: true}
	}
	return state{}
}
