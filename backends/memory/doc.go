// Package memory is a complete concord store that lives inside one process.
//
// It is a real backend, not only a test double: programs that embed concord
// and demos use it as their store, and a deterministic simulation uses it
// as the consensus store it drives. It keeps everything in memory, so it
// is neither durable (the content is gone when the process ends) nor shared
// between processes: every participant must hold a Client of the same
// Server.
//
// # What it promises
//
// A Server holds the whole state behind one mutex over plain maps. Many
// Clients talk to it; each *Client implements core.Store, core.Txner,
// core.Expirer and core.Deleter and passes backends/storetest. In
// particular:
//
//   - Revisions form one store-wide counter that grows by one for every
//     write: a creation, a compare-and-swap, or a deletion. The writes of
//     one Txn take consecutive revisions, in the order of the ops.
//   - Versions count the writes to one key, starting at 1 when it is
//     created. Keys are deleted when the session they were registered
//     under ends, or by DeleteVersion; a key created again after that
//     starts at version 1. DeleteVersion of a registered key unbinds it
//     from its session, which stays alive.
//   - Snapshot.Revision is exact: the revision of the latest creation,
//     update or deletion under the prefix, or 0 for a prefix that never
//     held a key. The server remembers, for each deleted key, the revision
//     of its last deletion.
//   - Session ids are a counter rendered as a fixed-width string, so they
//     sort in creation order and a seeded simulation replays them exactly.
//   - A session past its server deadline accepts no keep-alive and no
//     registration, even before it has been expired; its keys stay until
//     it is expired (by the reaper, or by ExpireDue under ManualExpiry).
//   - A client-side session declares itself lost at (send time of its last
//     successful keep-alive) + TTL - TTL/10, strictly before the server,
//     which counts TTL from when it handled that keep-alive.
//
// # Faults and simulation
//
// The Server can inject errors per client, operation and key prefix, add
// latency measured on its Clock, hang every client call, and isolate one
// client. Its synchronous methods (Do, Txn, DeleteVersion, Grant,
// KeepAlive, Register, Revoke, ExpireDue) start no goroutines and read
// time only from the Clock, so a simulation that drives them with a
// core.ManualClock replays exactly. OnChange reports every change in
// commit order to a checker.
package memory
