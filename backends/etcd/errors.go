package etcd

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/concordha/concord/core"
)

// convertError maps an error of clientv3 onto the errors of core, for the
// operation op on key (which may be empty). It is the one place where
// etcd's errors are interpreted:
//
//   - if ctx has ended, the error wraps ctx.Err(): the caller gave up, and
//     the operation may or may not have taken effect;
//   - if the Store is closed, core.ErrClosed;
//   - a store that cannot be reached or cannot serve right now (gRPC
//     Unavailable, no leader, a leader change, a server timeout or
//     stop) wraps core.ErrUnavailable;
//   - a request etcd refuses as malformed or too large wraps
//     core.ErrInvalidArgument;
//   - a lease etcd does not know wraps core.ErrNotFound (sessions turn it
//     into core.ErrSessionLost);
//   - anything else is returned wrapped as it is.
//
// The original error stays in the message and in the chain, so callers
// can still test for etcd's own errors.
func (s *Store) convertError(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	what := "etcd: " + op
	if key != "" {
		what = fmt.Sprintf("etcd: %s %q", op, key)
	}
	if ctx != nil && ctx.Err() != nil {
		if errors.Is(err, ctx.Err()) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return fmt.Errorf("%s: %w (%w)", what, ctx.Err(), err)
	}
	if s.isClosed() {
		return fmt.Errorf("%s: %w (%w)", what, core.ErrClosed, err)
	}
	err = rpctypes.Error(err)
	if kind := classify(err); kind != nil {
		return fmt.Errorf("%s: %w (%w)", what, kind, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// classify returns the core error that err is a case of, or nil.
func classify(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return core.ErrNotFound
	case errors.Is(err, rpctypes.ErrEmptyKey),
		errors.Is(err, rpctypes.ErrTooManyOps),
		errors.Is(err, rpctypes.ErrDuplicateKey),
		errors.Is(err, rpctypes.ErrRequestTooLarge),
		errors.Is(err, rpctypes.ErrLeaseTTLTooLarge):
		return core.ErrInvalidArgument
	case errors.Is(err, rpctypes.ErrNoLeader),
		errors.Is(err, rpctypes.ErrNotLeader),
		errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrStopped),
		errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost),
		errors.Is(err, rpctypes.ErrTimeoutWaitAppliedIndex),
		errors.Is(err, rpctypes.ErrUnhealthy),
		errors.Is(err, rpctypes.ErrTooManyRequests),
		errors.Is(err, rpctypes.ErrNotCapable),
		errors.Is(err, clientv3.ErrNoAvailableEndpoints):
		return core.ErrUnavailable
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return byCode(ee.Code())
	}
	if st, ok := status.FromError(err); ok {
		return byCode(st.Code())
	}
	return nil
}

// byCode classifies the gRPC codes that mean the server was not reached
// or could not answer.
func byCode(c codes.Code) error {
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded:
		return core.ErrUnavailable
	case codes.InvalidArgument:
		return core.ErrInvalidArgument
	}
	return nil
}

// isPermanent tells whether retrying err cannot help: the Store is closed,
// or etcd refuses this client (authentication or permission).
func isPermanent(err error) bool {
	return errors.Is(err, core.ErrClosed) ||
		errors.Is(err, rpctypes.ErrPermissionDenied) ||
		errors.Is(err, rpctypes.ErrAuthFailed) ||
		errors.Is(err, rpctypes.ErrUserEmpty) ||
		errors.Is(err, rpctypes.ErrAuthOldRevision)
}
