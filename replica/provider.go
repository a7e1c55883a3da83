// Package replica runs the services that concord keeps highly available:
// it drives each service's provider through its role changes (start as a
// spare, promote to primary, demote), sends checkpoints from the primary
// to the secondaries, promotes spares after a full state transfer,
// restarts a failing service locally and resigns it when restarts do not
// help, and keeps dependent services with their dependencies.
package replica

import (
	"context"
	"errors"
	"io"

	"github.com/concordha/concord/core"
)

// ErrNotRunning is wrapped by a Provider's Monitor when the service is
// cleanly stopped (OCF_NOT_RUNNING), as opposed to failed.
var ErrNotRunning = errors.New("service not running")

// Info tells a provider action where the service stands.
type Info struct {
	// Service is the service's name, Node this node's ID.
	Service string
	Node    string
	// Role is this node's role for the service when the action runs (for
	// Promote: RolePrimary; for Demote: the role it goes to).
	Role core.Role
	// Primary is the node the primary record names ("" if none).
	Primary string
	// Epoch and Token are the current primary's election epoch and fencing
	// token (0 if none).
	Epoch int64
	Token int64
	// Seq is the checkpoint's sequence number, for Checkpoint and Restore.
	Seq int64
}

// Provider is a service as concord drives it. Every call is bounded by
// ctx, whose deadline is the action's timeout. Calls for one service never
// overlap.
type Provider interface {
	// Start starts the service as a spare: running, not serving clients.
	Start(ctx context.Context, in Info) error
	// Stop stops the service. Stopping a stopped service succeeds.
	Stop(ctx context.Context, in Info) error
	// Promote makes the running service the primary.
	Promote(ctx context.Context, in Info) error
	// Demote makes the primary a secondary or spare again (in.Role).
	Demote(ctx context.Context, in Info) error
	// Monitor checks the service's health: nil if healthy, an error
	// wrapping ErrNotRunning if it is stopped, another error if it failed.
	Monitor(ctx context.Context, in Info) error
	// Checkpoint writes the service's whole state to w.
	Checkpoint(ctx context.Context, in Info, w io.Writer) error
	// Restore replaces the service's state with the one read from r, as
	// written by the primary's Checkpoint.
	Restore(ctx context.Context, in Info, r io.Reader) error
}
