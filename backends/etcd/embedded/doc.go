// Package embedded runs an etcd member inside the concord process, so
// that concord needs no external store: a one-member cluster on loopback
// by default, or a member of a cluster of such processes.
//
// # What it promises
//
//   - Start returns once the member serves clients (for a cluster: once
//     a leader is elected and the member has joined), or fails with an
//     error that names the field to fix: a URL whose port is taken, a
//     DataDir that cannot be written, a cluster whose peers do not answer
//     within StartTimeout. An invalid Config fails Validate before
//     anything starts.
//   - A member restarted on the same DataDir keeps its data and identity.
//     Config returns the configuration a member runs with, every port
//     chosen, so that it can be restarted on the same URLs.
//   - Done is closed whenever the member stops: by Close, or on its own
//     (removed from its cluster, a fatal error, a listener failing); Err
//     says why.
//   - Close ends clients' open calls and watches at once (etcd alone
//     would wait up to its request timeout for each open watch), stops
//     the member, handing leadership over first if it leads, and waits
//     for its listeners, files and goroutines. It is idempotent.
//   - With Config.ClientTLS, the member serves clients over TLS only, on
//     an https ClientURL, and with ClientCertAuth only to clients whose
//     certificate TrustedCAFile verifies; with Config.PeerTLS, the same
//     for the traffic between members, whose URLs are then all https.
//     Without them, URLs are plain http. The scheme must match: Validate
//     says which field to set or which URL to change. An empty ClientURL
//     or PeerURL picks a free loopback port with the right scheme
//     (FreeLoopbackURL gives an http one, FreeLoopbackHTTPSURL an https
//     one), and Endpoints returns the URL with it. Start reads the
//     certificate files before it starts the member, and fails with an
//     error naming the field of one it cannot use.
//   - etcd's own warnings and errors go to Config.Logger through log/slog.
//     Warnings that say nothing about a member inside concord (gRPC and
//     HTTP on one port; the simple tokens of etcd's auth), and the errors
//     etcd logs about its own listeners while it stops, are written at
//     Debug level instead.
//
// # Limits
//
//   - The defaults listen on 127.0.0.1 only, in plaintext. One member
//     serves clients either over TLS or in plaintext, not both.
//   - Config has no switch for etcd's authentication: a client turns it
//     on through etcd's API (users, roles, AuthEnable), and it is kept in
//     the data. etcd's simple tokens, which are not signed, are used.
//   - After Close, a member of a multi-member cluster may keep its peer
//     HTTP connections, and their goroutines, for up to about 10s: etcd's
//     peer listener renews its read deadline on every read, which can
//     undo the one net/http sets to end a pending read.
//   - The member's history is compacted periodically
//     (CompactionRetention, 1h by default); watches of backends/etcd
//     survive compaction by reading their prefix again.
//   - etcd grants no lease shorter than 1.5 ElectionTimeout, rounded up
//     to whole seconds: lower ElectionTimeout to allow shorter sessions.
package embedded
