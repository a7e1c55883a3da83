package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/go-zookeeper/zk"

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
	opSession  = "new session"
	opRegister = "register"
	opClose    = "close session"
	opExpire   = "expire session"
)

var (
	// errStoreClosed: a call was made on a closed Store.
	errStoreClosed = fmt.Errorf("store closed: %w", core.ErrClosed)
	// errRefused: the dialer of a lost session's connection refuses to
	// connect again, so that go-zookeeper cannot open a new session in
	// its place.
	errRefused = errors.New("the session has ended: its connection is not reused")
)

// convertError maps an error of go-zookeeper onto the errors of core, for
// the operation op on key (which may be empty). It is the one place where
// ZooKeeper's errors are interpreted:
//
//   - if ctx has ended, the error wraps ctx.Err(): the caller gave up, and
//     the operation may or may not have taken effect;
//   - if the Store is closed, core.ErrClosed;
//   - ZooKeeper refusing this client (zk.ErrNoAuth: the ACL of a znode
//     does not let it; zk.ErrAuthFailed) wraps core.ErrDenied;
//   - a connection lost, no server reachable, or a session moved or
//     expired under the call wraps core.ErrUnavailable;
//   - a path, ACL or flag ZooKeeper refuses, and a key below a key bound
//     to a session (ZooKeeper's ephemeral znodes have no children), wrap
//     core.ErrInvalidArgument;
//   - zk.ErrNoNode, zk.ErrNodeExists and zk.ErrBadVersion wrap
//     core.ErrNotFound, core.ErrExists and core.ErrConflict, where the
//     caller has not already told what they mean for its operation;
//   - anything else is returned wrapped as it is.
//
// With Config.TLS, when ZooKeeper cannot be reached (or ctx ended first)
// and the TLS connections to some servers fail (a certificate one side
// does not trust, a server that is not TLS), the error says why as well:
// go-zookeeper reports only that it could not connect.
//
// The original error stays in the message and in the chain.
func (s *Store) convertError(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	what := "zookeeper: " + op
	if key != "" {
		what = fmt.Sprintf("zookeeper: %s %q", op, key)
	}
	if ctx != nil && ctx.Err() != nil {
		if !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fmt.Errorf("%s: %w", what, s.withConnErrors(err))
	}
	if errors.Is(err, core.ErrClosed) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if s.isClosed() {
		return fmt.Errorf("%s: %w (%w)", what, errStoreClosed, err)
	}
	if kind := classify(err); kind != nil {
		if kind == core.ErrUnavailable {
			err = s.withConnErrors(err)
		}
		return fmt.Errorf("%s: %w (%w)", what, kind, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// classify returns the core error that err is a case of, or nil.
func classify(err error) error {
	switch {
	case errors.Is(err, zk.ErrNoAuth), errors.Is(err, zk.ErrAuthFailed):
		return core.ErrDenied
	case errors.Is(err, zk.ErrConnectionClosed),
		errors.Is(err, zk.ErrNoServer),
		errors.Is(err, zk.ErrClosing),
		errors.Is(err, zk.ErrSessionExpired),
		errors.Is(err, zk.ErrSessionMoved),
		errors.Is(err, errRefused),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		isNetError(err):
		return core.ErrUnavailable
	case errors.Is(err, zk.ErrInvalidPath),
		errors.Is(err, zk.ErrBadArguments),
		errors.Is(err, zk.ErrInvalidACL),
		errors.Is(err, zk.ErrInvalidFlags),
		errors.Is(err, zk.ErrNoChildrenForEphemerals):
		return core.ErrInvalidArgument
	case errors.Is(err, zk.ErrNoNode):
		return core.ErrNotFound
	case errors.Is(err, zk.ErrNodeExists):
		return core.ErrExists
	case errors.Is(err, zk.ErrBadVersion):
		return core.ErrConflict
	}
	return nil
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}

// isPermanent tells whether retrying err cannot help: the Store is
// closed, or ZooKeeper refuses this client.
func isPermanent(err error) bool {
	return errors.Is(err, core.ErrClosed) || errors.Is(err, core.ErrDenied)
}
