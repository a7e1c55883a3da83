package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"

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
//   - etcd refusing this client (authentication failed, permission
//     denied) wraps core.ErrDenied, with rpctypes.ErrAuthFailed or
//     rpctypes.ErrPermissionDenied in the chain as well (though most such
//     errors carry gRPC's InvalidArgument code, the request is well
//     formed): retrying it cannot help;
//   - anything else is returned wrapped as it is.
//
// When ctx has ended and the TLS connections to some members fail (a
// certificate one side does not trust), the error says why as well:
// clientv3 waits for a connection until the context ends and would
// report only that.
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
		if !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		if cerr := s.conns.Err(); cerr != nil {
			err = fmt.Errorf("%w: %w", err, noConnection(cerr))
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if s.isClosed() {
		return fmt.Errorf("%s: %w (%w)", what, core.ErrClosed, err)
	}
	err = etcdError(err)
	if kind := classify(err); kind != nil {
		return fmt.Errorf("%s: %w (%w)", what, kind, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// etcdError is rpctypes.Error, which turns a gRPC status from etcd into
// its etcd error, except that it also reads a status flattened to text.
// etcd gives the reason it cancels a watch (permission denied, an
// invalid token, ...) as the whole text of the status, "rpc error: code =
// PermissionDenied desc = etcdserver: permission denied", which clientv3
// returns as a plain error and rpctypes.Error, which looks up only the
// desc, leaves as it is: errors.Is would then never find
// rpctypes.ErrPermissionDenied, and a watch refused for good would be
// tried again forever.
func etcdError(err error) error {
	err = rpctypes.Error(err)
	var ee rpctypes.EtcdError
	if err == nil || errors.As(err, &ee) {
		return err
	}
	if _, ok := status.FromError(err); ok {
		return err // a real status etcd does not know
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "rpc error: code = ") {
		return err
	}
	if _, desc, ok := strings.Cut(msg, " desc = "); ok {
		if known := rpctypes.Error(errors.New(desc)); errors.As(known, &ee) {
			return ee
		}
	}
	return err
}

// noConnection explains a call that ended with its context by why the
// TLS connections to etcd fail (see connErrors).
func noConnection(cerr error) error {
	return fmt.Errorf("no working connection: %w", cerr)
}

// classify returns the core error that err is a case of, or nil.
func classify(err error) error {
	switch {
	case isRefusal(err):
		// Most of these carry gRPC's InvalidArgument code, but the
		// request is fine: etcd refuses this client.
		return core.ErrDenied
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
	return errors.Is(err, core.ErrClosed) || isRefusal(err)
}

// isRefusal tells whether etcd refused this client: its credentials, or
// its permission for the keys.
func isRefusal(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) ||
		errors.Is(err, rpctypes.ErrAuthFailed) ||
		errors.Is(err, rpctypes.ErrUserEmpty) ||
		errors.Is(err, rpctypes.ErrAuthOldRevision)
}
