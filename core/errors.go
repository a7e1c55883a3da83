package core

import "errors"

// Errors a Store or Session returns. Backends map their clients' errors
// onto these, and callers test them with errors.Is.
var (
	// ErrNotFound: the key (or session) does not exist.
	ErrNotFound = errors.New("concord: not found")
	// ErrExists: a create found the key already there.
	ErrExists = errors.New("concord: key exists")
	// ErrConflict: a compare-and-swap found another version, or a Txn
	// guard did not hold.
	ErrConflict = errors.New("concord: version conflict")
	// ErrSessionLost: the session ended without being closed: it expired,
	// was expired by force, or the client could no longer prove it alive.
	ErrSessionLost = errors.New("concord: session lost")
	// ErrSessionClosed: the session was closed by its holder.
	ErrSessionClosed = errors.New("concord: session closed")
	// ErrUnavailable: the store could not be reached or did not answer.
	// The operation may be retried; a write may or may not have applied.
	ErrUnavailable = errors.New("concord: store unavailable")
	// ErrInvalidArgument: the request is malformed or out of the
	// backend's range (an empty key, a TTL it cannot honour, a Txn too
	// large).
	ErrInvalidArgument = errors.New("concord: invalid argument")
	// ErrClosed: the client or node has been closed.
	ErrClosed = errors.New("concord: closed")
	// ErrDenied: the store refused this client: authentication failed, or
	// it lacks permission for the key. Retrying cannot help until the
	// client's credentials or the store's users and roles change.
	ErrDenied = errors.New("concord: denied by the store")
)

// Errors of the election and the Node API.
var (
	// ErrNotPrimary: the call needs this node to be the service's primary
	// with a valid session, and it is not.
	ErrNotPrimary = errors.New("concord: not the primary")
	// ErrUnknownService: the node does not provide the named service.
	ErrUnknownService = errors.New("concord: unknown service")
	// ErrBadRecord: a record in the store could not be decoded. The error
	// names the key; the election treats the record as stale and
	// overwrites it by compare-and-swap.
	ErrBadRecord = errors.New("concord: bad record")
)
