// Package consul is the concord store on Consul's KV store, sessions and
// transactions, through github.com/hashicorp/consul/api.
//
// A *Store implements core.Store, core.Txner, core.Expirer and
// core.Deleter and passes backends/storetest against a Consul 1.16 agent,
// with and without ACLs (with ExactListRevision false; see List below).
// Keys and values go to Consul untouched, but Consul keys cannot start
// with "/": such keys are refused with core.ErrInvalidArgument (use
// "concord/..." where etcd would use "/concord/..."), as are keys with an
// empty, "." or ".." path segment ("a//b", "a/../b"), which Consul's HTTP
// API redirects to another key.
//
// # How each primitive maps
//
//   - Version and Revision of a record are both its ModifyIndex, the Raft
//     index of the write that produced it: store-wide, increasing, never
//     reused.
//   - Get and List are consistent reads (?consistent). A List or a watch
//     that Consul's ACLs filtered (some keys under the prefix hidden from
//     the token) fails with core.ErrDenied rather than report a partial
//     prefix; but see the limits below for a token that may read none.
//   - Create is a transaction of one "cas" at index 0, which writes only
//     if the key does not exist. CompareAndSwap is a transaction of
//     "check-index" then "set": the failed check says whether the key is
//     missing or at another index (ErrNotFound or ErrConflict) in the same
//     round trip, and the new ModifyIndex comes back with the write. Both
//     keep a registered key's session: Consul's "set" leaves the session
//     of an existing key as it is (its LockIndex goes back to 0, which
//     concord does not use).
//   - DeleteVersion is a transaction of "check-index" then "delete-cas"
//     at the same index: the failed check tells ErrNotFound from
//     ErrConflict in the same round trip (a lone "delete-cas" of a
//     missing key succeeds). A key a session holds is deleted as any
//     other; the session lives on and keeps its other keys.
//   - A session is a Consul session with a TTL and nothing else: no node
//     or service health checks (the empty check lists keep Consul from
//     adding the agent's serfHealth), Behavior "delete", and a lock-delay
//     of Config.LockDelay (1ms by default; see below). Register is a
//     transaction of "check-not-exists" then "lock" with the session, so
//     an existing key is never taken over, locked or not.
//   - A session renews itself every Config.KeepAliveInterval (TTL/3 by
//     default), in a goroutine with a context of its own. Done fires with
//     core.ErrSessionLost once a TTL has passed since the send time of the
//     last successful renewal (or of the creation), or at once when a
//     renewal answers that Consul no longer knows the session, or refuses
//     it. Session.Close destroys the session, which deletes its keys at
//     once. Store.Close only fires Done: Consul expires those sessions.
//   - Watch runs blocking List queries (consistent, ?index= the previous
//     answer's X-Consul-Index), and delivers every content that differs
//     from the last one delivered, the newest only to a consumer that
//     falls behind. When Consul's index goes back (a cluster restored or
//     restarted without its data), and after a failed query, the next
//     query reads at once. Transient failures are retried with backoff,
//     10 in a row at most (about 10s); then the watch ends with Err
//     (core.ErrUnavailable when no agent answers). It ends at once with
//     Err when Consul refuses the client (core.ErrDenied) or the Store is
//     closed (core.ErrClosed).
//   - ExpireSession looks the session up (Consul's destroy succeeds for
//     any ID, known or not: an unknown or ended session is
//     core.ErrNotFound), then destroys it.
//   - Txn: see txn.go. A Consul transaction is all or nothing, so Txn
//     runs the batch, and if Consul rolls it back, runs it again with each
//     op that failed replaced by an assertion of its failure, until a
//     round applies (at most 5; then an error, and nothing was applied).
//     The round that applies is one atomic step against one state, in
//     which each op's conditions decided its outcome, as core.Txner
//     requires. MaxTxnOps is half of Config.MaxTxnOps (64 by default,
//     which every Consul version accepts; 1.16 accepts 128), since a
//     compare-and-swap takes two Consul operations; each guard takes one
//     more.
//   - Errors map onto core's in one function, convertError: an ended
//     context is wrapped as such; an agent that cannot be reached, or
//     answers that it cannot serve (no cluster leader, a failed RPC to the
//     servers), wraps core.ErrUnavailable; Consul refusing the client
//     (HTTP 403: "Permission denied", "ACL not found") wraps
//     core.ErrDenied and is never retried.
//   - With several Config.Endpoints, the Store talks to one agent and
//     moves to the next when it cannot be reached: reads and other
//     requests that may be sent twice go to the next agent at once; a
//     write goes there only when it certainly never left (a failed dial
//     or TLS handshake), since a write sent twice could report its own
//     first success as a conflict. Otherwise the write fails with
//     core.ErrUnavailable, and the next call uses the next agent.
//   - With Config.Token, New checks the token at once (GET
//     /v1/acl/token/self): Consul not knowing it is core.ErrDenied.
//     Without one, New does not talk to Consul. An empty Token lets the
//     Consul client use CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE.
//
// # TTL and lock-delay
//
// Consul refuses session TTLs outside [session_ttl_min, 24h];
// session_ttl_min is 10s unless the servers set it lower. NewSession
// fails with core.ErrInvalidArgument for those, as for a TTL not more
// than twice the renewal interval.
//
// Consul's TTL is only a lower bound: it expires a session twice its TTL
// after it handled the last renewal (and its leader, when it changes,
// gives every session a fresh 2 x TTL). So the client declares the
// session lost at least a TTL before Consul can expire it, but Consul may
// keep the session, and its keys, up to 2 x TTL after the holder stopped
// renewing (a crashed holder's keys outlive it that long), and a Store
// closed without closing its sessions leaves them for as long.
//
// When a session ends, Consul holds each key it had registered for the
// session's lock-delay: "lock" of that key fails meanwhile, and Register
// returns an error that wraps no core error (the caller may retry). The
// Consul API sends no lock-delay when it is 0, and Consul then applies
// its default of 15s, which would keep a node that lost its session out
// of the membership for as long; the Store therefore always sends one,
// 1ms unless Config.LockDelay says otherwise. concord does not need the
// lock-delay for safety: its holders stop acting at Done, before Consul
// can end the session.
//
// # Deviations and limits
//
//   - List's revision is Consul's X-Consul-Index of the prefix. For a
//     prefix with keys, that is the largest of their ModifyIndex and of
//     the tombstones that deletions left under the prefix: the exact
//     revision of the latest change, deletions included, as long as
//     Consul keeps the tombstones (it reaps them after its tombstone TTL,
//     15 minutes by default; then the largest ModifyIndex, a lower
//     bound). For a prefix with no keys, Consul answers with its latest
//     tombstone there, or, when there is none, the index of the whole KV
//     store, which grows with writes elsewhere; List then reports 0, the
//     lower bound the contract allows, so that an unchanged prefix never
//     reads a greater revision. Hence ExactListRevision false. A watch
//     that sees a prefix emptied reports the tombstone's index: exact.
//     An OpList in a Txn reports the largest ModifyIndex (Consul gives a
//     transaction no index).
//   - A watch snapshot's revision is kept strictly above the previous one
//     of the channel: if Consul reaps the tombstones behind the last
//     revision and the prefix then changes without a greater index, the
//     previous revision + 1 stands in.
//   - A watch's blocking query waits 1 minute at most (Consul adds up to
//     1/16 of jitter); a connection that died silently is noticed when
//     its answer is 15s late. After a cluster restart that reset Consul's
//     indexes, a watch whose query was still open sees the new content
//     only when that query times out.
//   - Txn may take several round trips: one more for each time the keys
//     it conditions on change between two of its rounds.
//   - The Consul client reports some failures only as text (a
//     transaction's HTTP errors, and the reasons of a rolled-back
//     transaction's operations); the Store reads those texts as Consul
//     1.16 writes them. A CompareAndSwap whose failure text it cannot
//     read decides between ErrNotFound and ErrConflict by a consistent
//     read within the same call; a Txn returns an error.
//   - A session belongs to the Consul node of the agent that created it.
//     An agent that leaves the cluster gracefully (a client agent
//     stopped with leave_on_terminate, Consul's default for clients)
//     takes its node's sessions with it: the holder's next renewal finds
//     the session gone and Done fires. An agent that dies without leaving
//     does not: the Store's renewals move to another agent (see
//     Config.Endpoints). Point the Store at server agents, or at client
//     agents that do not leave, to avoid it.
//   - Consul answers a List whose keys the token may read none of as it
//     answers an empty prefix (404, without the X-Consul-Results-
//     Filtered-By-ACLs header it sets when it hides only some): the Store
//     then reports an empty snapshot, not core.ErrDenied. Get and every
//     write are refused with core.ErrDenied as they should be.
package consul
