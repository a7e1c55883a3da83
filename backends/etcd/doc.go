// Package etcd is the concord store on an etcd v3 cluster, through
// go.etcd.io/etcd/client/v3.
//
// A *Store implements core.Store, core.Txner, core.Expirer and
// core.Deleter and passes backends/storetest against one member and
// against a cluster of three (with ExactListRevision false). Keys and
// values go to etcd untouched: no prefix is added and nothing is encoded.
//
// # What it promises
//
//   - Version and Revision of a record are both its etcd ModRevision.
//     etcd's own per-key Version starts again at 1 when a key is deleted
//     and created again; a ModRevision is never reused, so a
//     compare-and-swap can never match a stale record.
//   - Create is a Txn "if CreateRevision = 0 then put". CompareAndSwap is
//     "if ModRevision = version then put, else count the key", which
//     tells ErrNotFound from ErrConflict in the same round trip.
//     DeleteVersion is "if ModRevision = version then delete, else count
//     the key", likewise; etcd detaches a deleted key from its lease.
//   - A Txn is one etcd transaction of nested ones (see txn.go): one
//     atomic step, every condition and guard judged against the state
//     before it. All its writes get the same revision.
//   - Watch applies etcd's events to a local copy and delivers full
//     snapshots whose revision is the ModRevision of the latest event, a
//     deletion included. It survives compaction, reconnection and the
//     loss of a leader without the caller watching again, and ends with
//     Err only when the Store or its client is closed, etcd refuses the
//     client, or etcd's revision went back (a restore from a backup).
//   - A session is one lease, renewed by KeepAliveOnce every
//     Config.KeepAliveInterval (TTL/3 by default) on a context of its
//     own. Done fires with core.ErrSessionLost when (send time of the last
//     successful renewal, or of the grant) + 90% of the TTL passes, or as
//     soon as etcd says the lease is gone. etcd counts its TTL from when
//     it handled that renewal, so the client always gives up first.
//   - Errors map onto core's in one function, convertError: an ended
//     context is wrapped as such, an unreachable or leaderless cluster as
//     core.ErrUnavailable. etcd refusing the client (authentication
//     failed, permission denied) wraps etcd's error (rpctypes.ErrAuthFailed,
//     rpctypes.ErrPermissionDenied) and core.ErrDenied; it is never retried:
//     a call fails at once, a watch ends with it.
//   - With Config.TLS the Store dials https:// endpoints with the CA and
//     the client certificate given; New rejects files it cannot use,
//     naming the field, and TLS with http:// endpoints. https:// endpoints
//     without Config.TLS use TLS verified by the system's roots. A call
//     that ends with its context while the TLS connections fail (a server
//     certificate the CA does not verify, a client certificate the server
//     refuses) says why in its error, as does New with Username.
//   - With Username and Password, New authenticates at once (see below);
//     clientv3 renews the token. Sessions need no permission beyond the
//     keys they register: any user may grant and renew a lease, and
//     revoking one needs write permission on its keys.
//
// # Deviations and limits
//
//   - List reports the largest ModRevision under the prefix: after a
//     deletion, a lower bound of the latest change, as the contract
//     allows (a range keeps no trace of deletions, and the header
//     revision moves with writes anywhere). So does a watch's first
//     snapshot, and the snapshot a watch delivers after reading the
//     prefix again because of compaction (then strictly greater than the
//     previous one, as the contract requires).
//   - etcd leases count whole seconds: a session is granted its TTL
//     rounded up, and etcd grants no lease shorter than 1.5 election
//     timeouts, rounded up (2s with etcd's default of 1s). The client's
//     deadline stays at the TTL asked for; only the keys of a session
//     lost without being closed outlive Done longer.
//   - The client's lead over the server is a tenth of the TTL plus the
//     one-way latency of the last renewal plus what rounding up and
//     etcd's minimum add. Without the tenth, a whole-second TTL on a fast
//     network left a lead of a few milliseconds, which a late timer on a
//     loaded machine could eat.
//   - MaxTxnOps is Config.MaxTxnOps - 8: etcd charges the conditions of a
//     nested transaction against the same --max-txn-ops as the outer
//     ops, so 8 are kept for an op's condition and up to 7 guards. A
//     batch whose op has more guards than the limit leaves fails with
//     core.ErrInvalidArgument. Guards on reads are ignored.
//   - While no member can be reached, calls wait for one until their
//     context ends (clientv3 waits for a connection) and then return an
//     error wrapping the context's, rather than core.ErrUnavailable.
//   - New does not wait for the cluster, except with Username set:
//     clientv3 authenticates at once, so New fails after at most
//     DialTimeout when no member answers.
//   - Store.Close does not revoke its sessions' leases: they are lost and
//     etcd expires them after their TTL. Session.Close revokes at once.
//   - etcd checks a watch's permission only when the watch is made: a
//     watch keeps receiving events after its user loses the permission,
//     until it is made again (after a lost connection, say), when it
//     ends with rpctypes.ErrPermissionDenied.
//   - When a server refuses the client's certificate, TLS 1.3 tells the
//     client only after its handshake; if the server closes the
//     connection before the client reads its alert, the error says only
//     that the server closed the connection right after the handshake.
package etcd
