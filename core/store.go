package core

import (
	"context"
	"time"
)

// This file is the contract between the election and a consensus store.
// A backend implements Store and Session; Txner, Expirer and Deleter are
// optional and discovered with a type assertion. Every backend must pass
// backends/storetest, which checks each sentence written here.

// KV is one record as the store holds it.
type KV struct {
	// Key is the full key, including the backend's root prefix as the
	// caller gave it.
	Key string
	// Value is the record's body. The store never interprets it.
	Value []byte
	// Version identifies this value of this key for CompareAndSwap. It is
	// non-zero for an existing key and changes on every write to the key.
	// Its size means nothing across keys; only equality matters. A key
	// deleted and created again may reuse versions (ZooKeeper does), which
	// is why the election never deletes a key that it compare-and-swaps;
	// only the replica manager deletes, and only the records of nodes and
	// services long gone (see Deleter).
	Version int64
	// Revision is the store-wide revision of the write that produced this
	// value: every later write anywhere in the store gets a strictly
	// greater revision. Revisions are what fencing tokens and epochs are
	// made of.
	Revision int64
}

// Snapshot is the full content of a key prefix at one point of the
// store's history.
type Snapshot struct {
	// Revision is the store revision of the latest change (creation,
	// update or deletion of a key under the prefix) that the snapshot
	// reflects. A backend that cannot learn the revision of a deletion it
	// did not watch happen may report a lower bound instead, but never less
	// than the largest Revision among KVs. Reading an unchanged prefix again
	// never yields a greater Revision, and a snapshot whose content differs
	// from an earlier one of the same watch has a strictly greater Revision.
	Revision int64
	// KVs are the keys under the prefix, sorted by key.
	KVs []KV
	// Err is set only on the last snapshot a watch delivers before its
	// channel closes for a reason other than the caller's context. Such a
	// snapshot carries no KVs.
	Err error
}

// Store is the contract a consensus store must meet. All methods are safe
// for concurrent use. Every method that talks to the store honours ctx:
// when ctx ends first it returns an error wrapping ctx.Err(), and the
// operation may or may not have taken effect.
//
// Any error not named in a method's doc is a transport or server error:
// the caller may retry. Backends wrap such errors with ErrUnavailable when
// they know the store could not be reached, and wrap ErrDenied when the
// store refuses the client's credentials or permissions, which no retry
// mends.
type Store interface {
	// Get returns the current value of key.
	// Errors: ErrNotFound if the key does not exist.
	Get(ctx context.Context, key string) (KV, error)

	// List returns every key under prefix as one consistent snapshot
	// (Snapshot.Err is always nil here). A prefix with no keys under it
	// yields a snapshot with no KVs, not an error. After a deletion, List
	// may report the lower bound that Snapshot.Revision allows; watches
	// may not (see Watch).
	List(ctx context.Context, prefix string) (Snapshot, error)

	// Create writes key only if it does not exist, and returns the record
	// as written.
	// Errors: ErrExists if the key exists (its current value is not
	// returned; call Get).
	Create(ctx context.Context, key string, value []byte) (KV, error)

	// CompareAndSwap replaces the value of key only if its current Version
	// equals version, and returns the record as written.
	// Errors: ErrNotFound if the key does not exist; ErrConflict if it
	// exists with another version. Neither writes anything.
	CompareAndSwap(ctx context.Context, key string, value []byte, version int64) (KV, error)

	// Watch streams snapshots of prefix. The first snapshot is the current
	// content. Later ones follow changes; a backend may skip or repeat
	// intermediate states, but once changes stop, the last snapshot
	// delivered equals the store's content. Snapshot revisions never
	// decrease along one channel. The channel is closed once ctx ends;
	// if the watch fails for another reason, the last snapshot carries Err
	// and then the channel closes, and the caller should watch again.
	// A consumer that falls behind gets the newest snapshot, never a
	// backlog: the channel holds at most one undelivered snapshot.
	Watch(ctx context.Context, prefix string) (<-chan Snapshot, error)

	// NewSession opens a session with the given TTL. The returned session
	// is alive; it keeps itself alive until it is closed or lost.
	// Errors: ErrInvalidArgument if opts are out of the backend's range.
	NewSession(ctx context.Context, opts SessionOptions) (Session, error)

	// Close releases the client. Sessions opened from it are lost, and
	// watches end. Close is idempotent.
	Close() error
}

// SessionOptions configure a session.
type SessionOptions struct {
	// TTL is how long the store keeps the session without hearing from
	// the client. The client declares the session lost strictly before the
	// store can expire it.
	TTL time.Duration
}

// Session is a liveness lease held by one client. Keys registered under
// it are deleted by the store when the session ends, whether it is
// closed, expires, or is expired by force; a key stays registered when
// its value is changed by CompareAndSwap or a Txn.
type Session interface {
	// ID is the store's identifier of the session, unique for the store's
	// lifetime. It is stable and never reused.
	ID() string

	// Register creates key bound to this session and returns it as
	// written. The key disappears when the session ends.
	// Errors: ErrExists if the key exists, whoever owns it;
	// ErrSessionLost if the session has already ended.
	Register(ctx context.Context, key string, value []byte) (KV, error)

	// Done is closed once the session is lost or closed. It never
	// un-fires. A backend closes it no later than the moment the store
	// could expire the session: the client's deadline is always earlier
	// than the server's. After Done, the holder must assume that its
	// registered keys are gone or about to go.
	Done() <-chan struct{}

	// Err tells why Done fired: ErrSessionLost or ErrSessionClosed (both
	// possibly wrapped with detail). It returns nil while Done is open.
	Err() error

	// Close ends the session at once (its keys are deleted promptly) and
	// fires Done with ErrSessionClosed. It is idempotent. If the store
	// cannot be reached, the session still counts as closed locally, and
	// Close returns the error; the store will expire it after its TTL.
	Close(ctx context.Context) error
}

// SessionDeadline is an optional capability of a Session: it tells how
// long the session is certain to last, so that its holder can prove to
// others that it cannot be expired before a given time.
type SessionDeadline interface {
	// Deadline returns the session's current client-side deadline, the
	// moment at which Done fires unless a renewal succeeds first. The
	// store cannot expire the session before it: the backend computes it
	// from the send time of the latest renewal (or of the creation) that
	// the store confirmed, minus a margin, so that it is always earlier
	// than the store's own expiry. Only an explicit end is not covered:
	// Close, or ExpireSession, ends the session at once, whatever the
	// deadline.
	//
	// While Done is open, Deadline only moves forward: each successful
	// renewal pushes it later. It may already have passed while Done is
	// still open, for as long as the backend's timer takes to fire; the
	// store still cannot expire the session before it. Once Done has
	// fired, Deadline returns a time no later than the moment Done
	// fired, and never changes again, so a caller that reads Deadline
	// after Done sees no time in the future.
	//
	// The time is read on the clock the backend uses for its timers: the
	// real clock, except for a backend under a manual clock (the memory
	// backend's Options.Clock). Deadline is safe for concurrent use and
	// does not talk to the store.
	Deadline() time.Time
}

// Txner is an optional capability: several operations in one round trip.
//
// Txn applies ops as one atomic step of the store, against one state:
// no other write is ordered between them. Each op's own condition decides
// whether that op applies; a failed condition fails that op alone, with
// the error its single-op method would return, and the others proceed.
// Results come back in the order of ops. Reads see the state before the
// Txn. No two ops may write the same key, and no op may read a key that
// another op of the same Txn writes (for OpList: a key under its prefix);
// such a batch fails as a whole with ErrInvalidArgument. Txn itself returns
// an error only when the batch as a whole did not run (then nothing was
// applied), for example ErrInvalidArgument when it holds more ops than
// MaxTxnOps or breaks the rule above.
type Txner interface {
	Txn(ctx context.Context, ops []Op) ([]OpResult, error)
	// MaxTxnOps is the largest number of ops one Txn accepts.
	MaxTxnOps() int
}

// Expirer is an optional capability: end a session from outside, as if
// its TTL had passed. Tests and operators use it, and so does a Node
// whose lost session the store still holds (say, across a store restart
// that renewed every lease): it ends that session, its own, and rejoins
// at once instead of a TTL later. A Node never ends another's session.
type Expirer interface {
	// ExpireSession ends the session with the given ID at the store. Its
	// registered keys are deleted and its holder sees ErrSessionLost.
	// Errors: ErrNotFound if no live session has that ID.
	ExpireSession(ctx context.Context, sessionID string) error
}

// Deleter is an optional capability: delete a key only if it still holds
// the version read. The replica manager uses it to remove the records of
// departed nodes and services. A key created again after a deletion may
// get a version it had before (see KV.Version), and a version read before
// the deletion would then match the new record: delete only records that
// no one is creating again under the same key.
type Deleter interface {
	// DeleteVersion deletes key only if its current Version equals version.
	// Errors: ErrNotFound if the key does not exist; ErrConflict if it
	// exists with another version. Neither deletes anything. Deleting a key
	// registered to a session is allowed: the session stays alive, and the
	// key no longer belongs to it (a key created again under that name is
	// not deleted when the session ends). Watches and List show the
	// deletion as they show one caused by a session ending.
	DeleteVersion(ctx context.Context, key string, version int64) error
}

// OpKind names an operation inside a Txn.
type OpKind uint8

const (
	// OpGet reads one key, as Store.Get.
	OpGet OpKind = iota + 1
	// OpList reads a prefix, as Store.List; the result is in OpResult.List.
	OpList
	// OpCreate is Store.Create.
	OpCreate
	// OpCAS is Store.CompareAndSwap against Op.Version.
	OpCAS
)

// Op is one operation in a Txn.
type Op struct {
	Kind    OpKind
	Key     string // the key, or the prefix for OpList
	Value   []byte // for OpCreate and OpCAS
	Version int64  // for OpCAS
	// Guards are extra conditions for a write (OpCreate, OpCAS): the op
	// applies only if each guard key exists with the guard's revision in
	// the state before the Txn. A failed guard fails the op with
	// ErrConflict; when both the op's own condition and a guard fail, the
	// op's own error is returned.
	Guards []Guard
}

// Guard is a condition on another key inside a Txn op: the key exists and
// its current Revision is the guard's. Revisions, unlike versions, never
// repeat, even for a key deleted and created again (a member record in a
// new session), so a guard taken on one incarnation of a key never holds
// for a later one.
type Guard struct {
	Key      string
	Revision int64
}

// OpResult is the outcome of one Op of a Txn.
type OpResult struct {
	KV   KV       // the record read or written (OpGet, OpCreate, OpCAS)
	List Snapshot // for OpList
	Err  error    // as the single-op method would return it
}
