package memory

import (
	"fmt"
	"time"

	"github.com/concordha/concord/core"
)

// The methods in this file are the synchronous face of the server, for
// deterministic simulations. Each runs to completion under the server's
// lock: no latency, no hang, no goroutine, time read only from the Clock.
// Each honours Close, isolation and faults in the name of client, with the
// same operation names as the Client methods.

// Do runs one op in the name of client, with the semantics of the Client
// method of its kind (Get, List, Create, CompareAndSwap), except that
// OpCreate and OpCAS also honour Op.Guards (a failed guard: ErrConflict).
// An unknown kind or an empty key gives ErrInvalidArgument.
func (s *Server) Do(client string, op core.Op) core.OpResult {
	if err := validateOp(op); err != nil {
		return core.OpResult{Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admitLocked(client, opName(op.Kind), []string{op.Key}); err != nil {
		return core.OpResult{Err: err}
	}
	return s.applyLocked(client, op)
}

// Txn runs a batch in the name of client, as Client.Txn does.
func (s *Server) Txn(client string, ops []core.Op) ([]core.OpResult, error) {
	if err := validateTxn(ops, s.maxTxnOps); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admitLocked(client, opTxn, txnKeys(ops)); err != nil {
		return nil, err
	}
	return s.txnLocked(client, ops), nil
}

// DeleteVersion deletes key in the name of client if its version is
// version, as Client.DeleteVersion does.
// Errors: ErrInvalidArgument for an empty key; ErrNotFound if the key
// does not exist; ErrConflict if it has another version.
func (s *Server) DeleteVersion(client, key string, version int64) error {
	if key == "" {
		return emptyKey(opDelete)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admitLocked(client, opDelete, []string{key}); err != nil {
		return err
	}
	return s.deleteVersionLocked(client, key, version)
}

// Grant opens a session with deadline Clock.Now()+ttl and returns its id.
// Nothing keeps it alive: call KeepAlive.
// Errors: ErrInvalidArgument if ttl <= 0.
func (s *Server) Grant(client string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("memory: session TTL %v: %w", ttl, core.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admitLocked(client, opSession, nil); err != nil {
		return "", err
	}
	l, err := s.grantLocked(client, ttl)
	if err != nil {
		return "", err
	}
	return l.id, nil
}

// KeepAlive moves the session's deadline to Clock.Now()+TTL.
// Errors: ErrNotFound if the session has ended or its deadline has passed.
func (s *Server) KeepAlive(client, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admitLocked(client, opKeepAlive, nil); err != nil {
		return err
	}
	return s.keepAliveLocked(id)
}

// Register creates key bound to the session: it is deleted when the
// session ends.
// Errors: ErrInvalidArgument for an empty key; ErrSessionLost if the
// session has ended or its deadline has passed; ErrExists if the key
// exists.
func (s *Server) Register(client, sessionID, key string, value []byte) (core.KV, error) {
	if key == "" {
		return core.KV{}, fmt.Errorf("memory: register: empty key: %w", core.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admitLocked(client, opRegister, []string{key}); err != nil {
		return core.KV{}, err
	}
	return s.registerLocked(client, sessionID, key, value)
}

// Revoke ends the session now and deletes its keys.
// Errors: ErrNotFound if no session has that id.
func (s *Server) Revoke(client, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admitLocked(client, opRevoke, nil); err != nil {
		return err
	}
	return s.revokeLocked(client, id)
}
