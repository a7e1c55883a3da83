// Package zookeeper is the concord store on a ZooKeeper ensemble, through
// github.com/go-zookeeper/zk (tested with ZooKeeper 3.8).
//
// A *Store implements core.Store, core.Expirer and core.Deleter and
// passes backends/storetest against a standalone server with
// ExactListRevision true. It does not implement core.Txner (see below).
//
// # Mapping
//
//   - A key is a znode path: "a/b/c" and "/a/b/c" are both /a/b/c (a
//     leading "/" stays in the keys returned, as the caller wrote it).
//     Keys ZooKeeper cannot hold fail with core.ErrInvalidArgument: an
//     empty segment ("a//b"), a trailing "/", a "." or ".." segment, a
//     character ZooKeeper refuses in paths, or ZooKeeper's own
//     /zookeeper.
//   - The znodes above a key are created on demand as persistent folders
//     with null data, which ZooKeeper keeps apart from an empty value
//     (on disk too): a znode with data is a key, one with null data only
//     a folder, so "a" and "a/b" can both be keys. A folder is never
//     deleted. Values are stored as they are.
//   - Create is one multi: create with null data, then set the value.
//     So a key's znode version starts at 1 and a folder's stays 0, and
//     KV.Version is the znode version (Stat.Version) itself: no
//     compare-and-swap can match a folder. Creating a key where a folder
//     is turns the folder into the key, by a set conditional on version
//     0. KV.Revision is the Mzxid, store-wide and never reused (never
//     the znode version, which starts again when a znode is created
//     again).
//   - CompareAndSwap is a set conditional on the version: zk.ErrNoNode is
//     core.ErrNotFound; zk.ErrBadVersion is core.ErrConflict, unless a
//     read then finds only a folder (core.ErrNotFound). DeleteVersion is
//     a delete conditional on the version, with the same errors; any
//     client may delete a key registered to a session (an ephemeral
//     znode), and the session lives on.
//   - List reads the znodes under the prefix one by one, then checks
//     with Exists calls, sent after every read was answered, that the
//     Czxid, Mzxid and Pzxid of each are as read (a child created or
//     deleted moves its parent's Pzxid); what changed is read and
//     checked again, up to 20 rounds, after which the call fails with
//     core.ErrUnavailable. Its revision is the largest Mzxid of a key
//     and Pzxid of a znode whose children changed since its creation,
//     the base included: the exact revision of the latest change,
//     deletions included. A prefix that does not end in "/" ("a/b")
//     covers the children of /a whose names start with "b"; its
//     revision leaves out /a's Pzxid, which moves with siblings too, so
//     it is a lower bound after a deletion.
//   - Watch reads as List does while setting ZooKeeper's one-shot
//     watches (data and children) on every znode it reads, and reads
//     again, checking the whole tree, when one fires. Each snapshot is
//     one state of the store; revisions are List's (a deletion right
//     below the base of a prefix not ending in "/" uses the base's
//     Pzxid). Watches are set once per znode and Store, and set again
//     only after they fire, so that go-zookeeper's per-call channels do
//     not pile up.
//   - A core.Session is a ZooKeeper session on a connection of its own,
//     opened with the TTL as session timeout. Register creates an
//     ephemeral znode through that connection; a compare-and-swap from
//     any client keeps it bound. Session.Close closes the connection,
//     which asks ZooKeeper to end the session and delete its keys at
//     once. The Store's own connection (another session, which nothing
//     is bound to) serves Get, List, Create, CompareAndSwap and Watch.
//     When that session expires, go-zookeeper opens a new one, which is
//     harmless there: watches are read again and set again on it (a
//     watch ends only with the Store, or when the ACLs refuse it).
//   - With Config.Digest, every connection authenticates with the digest
//     scheme, and every znode the Store creates gets an ACL granting all
//     permissions to that identity and nothing to anyone else. Errors map
//     onto core's in convertError: zk.ErrNoAuth and zk.ErrAuthFailed wrap
//     core.ErrDenied; a lost connection, no server reachable, or a
//     session expired under a call wraps core.ErrUnavailable.
//
// # TLS
//
// With Config.TLS, every connection the Store opens goes over TLS: its
// own, each session's, and the one ExpireSession opens. The endpoints
// must then name the servers' secureClientPort, which ZooKeeper serves
// only with its Netty connection factory (in zoo.cfg: secureClientPort,
// serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory,
// and the ssl.* keys; ssl.clientAuth=need, the default, requires a
// client certificate, Config.TLS.CertFile and KeyFile). A server
// certificate must name the host of the endpoint, unless
// Config.TLS.ServerName gives another name. The handshake is part of
// each connection attempt, which DialTimeout bounds. A session's
// connection is watched above TLS, in plaintext (see Timing), so a
// request is stamped when its write into TLS begins, as it is without
// TLS.
//
// go-zookeeper reports a server it cannot connect to only by failing
// calls with zk.ErrNoServer once it has tried every server. So the Store
// remembers, for each server, why its latest TLS connection failed
// before carrying anything (the server's certificate is not signed by
// the CA, or does not name the host; the server refused the handshake,
// as it does without a client certificate or with one it does not
// trust; the server does not speak TLS) until a connection to it
// carries an answer, and adds that to the error of every call that
// fails with core.ErrUnavailable or ends with its context, and of a
// NewSession that times out. With TLS 1.3 the server refuses a client
// certificate only after the client's side of the handshake, so the
// refusal shows at the connection's first read, and is reported the
// same way.
//
// ZooKeeper 3.8 reads PEM key stores (ssl.keyStore.type=PEM) with the
// key in PKCS#8 ("PRIVATE KEY", not "EC PRIVATE KEY"), and its default
// cipher suites are TLS 1.2 ones: a server limited to TLS 1.3 needs
// ssl.ciphersuites with TLS 1.3 suites too.
//
// # Timing
//
// ZooKeeper grants a session timeout between minSessionTimeout and
// maxSessionTimeout, 2 and 20 ticks (tickTime) unless configured, and
// expires a session when it has heard nothing from the client for that
// long, counted from the last request it received and rounded up to the
// next tick. NewSession fails with core.ErrInvalidArgument when the
// server raises the timeout above the TTL (a TTL below 2 ticks): the
// client could no longer give up first. A timeout lowered by the server
// is followed. go-zookeeper pings every third of the timeout.
//
// The session's connection is wrapped to stamp each request with the
// time its write began, and to match each answer to its request: an
// answer proves that the server received the request, and so restarted
// its clock, no earlier than that stamp. Done fires with
// core.ErrSessionLost when 90% of the negotiated timeout has passed
// since the stamp of the latest request answered (go-zookeeper's own
// connection states would tell only after 2/3 of the timeout of
// silence, too late to count from), or at once when ZooKeeper answers a
// reconnection by saying the session expired, or gives a reconnection
// another session. The connection is then closed, and its dialer
// refuses to connect again: go-zookeeper would otherwise open a new
// session in place of an expired one, silently. A server restart
// shorter than that keeps the session: ZooKeeper restores sessions from
// its log with fresh timeouts, and the client reconnects to it.
//
// # Expirer
//
// ZooKeeper ends a session only for a client that presents its ID and
// password, which go-zookeeper keeps private. The wrapped connection
// reads the password from the connect response, and a registry of the
// process remembers the sessions its Stores opened: ExpireSession
// resumes the session on a connection of its own with them and sends a
// close request, after firing the holder's Done. It works for any
// session opened in this process (a Node ends only its own), and
// answers core.ErrNotFound for any other; a session its holder lost is
// remembered for at least a minute and 20 session timeouts, long enough
// for a Node to end its own session that the server still holds. Session
// IDs are ZooKeeper's, as "0x" and lower-case hexadecimal digits.
//
// # Deviations and limits
//
//   - No core.Txner: ZooKeeper's multi is all or nothing and can check
//     only a znode's data version, while a Txn must fail each op on its
//     own condition against one state, and hold OpList and guards
//     (conditions on other keys, and on a prefix's children) to that
//     state too. Emulating it by reading, then sending only the ops
//     whose conditions held with check ops for the rest, cannot check
//     that a key is still missing or that a prefix gained no child.
//   - Reads are served by the server the connection is on, which may lag
//     the leader (ZooKeeper's sequential consistency): another client's
//     write may show a moment later. Writes are linearized.
//   - List and Watch cost a request per znode (two for one with
//     children, or any non-ephemeral one watched) plus a check per znode
//     per round. Under writes that never pause, List may fail with
//     core.ErrUnavailable after 20 rounds, and a watch retries with
//     backoff until a quiet moment.
//   - A key that has keys below it cannot be registered (ephemeral
//     znodes have no children), nor can a key be created below a
//     registered one, nor can it be deleted (ZooKeeper deletes no znode
//     with children): core.ErrInvalidArgument.
//   - A key deleted and created again starts again at version 1, as its
//     znode does: a version read before the deletion may match the new
//     record (core.KV.Version allows it).
//   - Znodes written by other clients: a znode with data counts as a key
//     even if another client wrote it (its Version may then be 0), and
//     folders created by other clients with empty rather than null data
//     count as keys with empty values.
//   - While no server can be reached, go-zookeeper fails waiting calls
//     with zk.ErrNoServer after trying every server once (core.
//     ErrUnavailable), or they end with their context.
//   - New does not wait for a server, except with Config.Digest:
//     authentication is a request, which must be answered before the
//     Store sends any other. New checks the files of Config.TLS, but
//     not the certificates against a server.
//   - A NewSession whose connections all fail (a TLS handshake refused
//     among others) waits for DialTimeout before it fails: go-zookeeper
//     keeps trying the servers.
//   - Store.Close closes its sessions' connections, which asks ZooKeeper
//     to end them; if it cannot be reached, the sessions expire after
//     their timeout. Either way, Done fires with core.ErrSessionLost.
package zookeeper
