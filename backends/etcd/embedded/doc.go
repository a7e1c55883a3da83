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
//   - etcd's own warnings and errors go to Config.Logger through log/slog.
//     Warnings that say nothing about a loopback member without auth, and
//     the errors etcd logs about its own listeners while it stops, are
//     written at Debug level instead.
//
// # Limits
//
//   - Client and peer URLs are plain http: no TLS, no authentication. The
//     defaults listen on 127.0.0.1 only.
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
